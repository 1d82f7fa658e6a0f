"""Versioned data files (TOML) read into pydantic models, refused with the field and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def load_data_file(path: Path, model: type[Model], error: type[ValueError], what: str) -> Model:
    """Read a TOML file into `model`, raising `error` that names the file, each bad field and why.

    Shared by every data file (the policy, the care-plan templates, the roster), so all are
    refused alike, e.g. `policy p.toml: formulary[0].class: Field required`.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path}: not valid TOML: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            _problem(tuple(problem["loc"]), problem["msg"])
            for problem in exc.errors(include_url=False, include_input=False)
        )
        raise error(f"{what} {path}: {problems}") from None


def _problem(loc: tuple[int | str, ...], message: str) -> str:
    field = ""
    for part in loc:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    message = message.removeprefix("Value error, ")
    return f"{field}: {message}" if field else message
