"""docs/contract/README.md, the contract as text, says what the models and their schemas do.

The tables are read back and compared with the pydantic models (`shared/contract/events.py`)
and the generated JSON Schemas: field names, required or optional, types, defaults, enum values,
ranges and the limits. Types and ranges come from the schemas, never from the Python type of a
field, so the test does not care whether a number is a float or a Decimal in the models.

The phrases the "allowed values" column may use, each compared with a schema keyword:
"one of `a`, `b`" (enum), "pattern `...`" (pattern), "not empty" (minLength 1), "at most N
characters" (maxLength), "from A to B" (minimum, maximum), "greater than A" (exclusiveMinimum),
"less than B" (exclusiveMaximum), "free form" (nothing). Any other word in that column fails
the test, so that no constraint is documented without being checked.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args

import pytest

from services.gateway.ingest import ITEM_CODES, ItemStatus
from shared import dead_letter
from shared.contract import EVENT_MODELS, parse_event
from shared.contract.events import (
    KEY_MAX_LENGTH,
    MAX_EVENT_BYTES,
    PATIENT_ID_PATTERN,
    SCORE_RANGES,
)
from shared.topics import EVENTS, EVENTS_DLQ
from tests import markdown
from tests.samples import CONTRACT_EXAMPLE

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT_PATH = REPO_ROOT / "docs/contract/README.md"
SCHEMAS_DIR = REPO_ROOT / "docs/contract/schemas"
TEXT = TEXT_PATH.read_text(encoding="utf-8")

NOT_IMPLEMENTED_TYPES = {"pain.function.recorded.v1"}  # contract 1.1, issue 16


# --- reading the text -------------------------------------------------------------------------


def _sections(level: str) -> dict[str, str]:
    return markdown.sections(TEXT, level)


_table = markdown.table


def _name(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"the field column holds one `name`, not {cell!r}"
    return match.group(1)


def _type_tables() -> dict[str, dict[str, dict[str, str]]]:
    """Each event type's `data` table: type -> field -> row."""
    tables = {}
    for heading, body in _sections("###").items():
        match = re.match(r"`(pain\.[a-z_.]+\.v\d+)`", heading)
        if match:
            tables[match.group(1)] = {_name(row["field"]): row for row in _table(body)}
    return tables


TYPE_TABLES = _type_tables()
ENVELOPE_TABLE = {_name(row["field"]): row for row in _table(_sections("##")["Envelope"])}


def _documented_constraints(cell: str) -> dict[str, Any]:
    """The constraints an "allowed values" cell states, as JSON Schema keywords."""
    if cell.startswith("by `instrument`: "):
        return {"score ranges": _documented_score_ranges(cell)}
    constraints: dict[str, Any] = {}
    rest = cell
    if match := re.fullmatch(r"one of ((?:`[^`]+`(?:, )?)+)", rest):
        return {"enum": re.findall(r"`([^`]+)`", match.group(1))}
    if match := re.search(r"pattern `([^`]+)`", rest):
        constraints["pattern"] = f"^{match.group(1)}$"
        rest = rest.replace(match.group(0), "")
    if "not empty" in rest:
        constraints["minLength"] = 1
        rest = rest.replace("not empty", "")
    if match := re.search(r"from (\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2})", rest):
        constraints["date range"] = (date.fromisoformat(match[1]), date.fromisoformat(match[2]))
        rest = rest.replace(match.group(0), "")
    if match := re.search(r"from (-?[0-9.]+) to (-?[0-9.]+)", rest):
        constraints["minimum"], constraints["maximum"] = Decimal(match[1]), Decimal(match[2])
        rest = rest.replace(match.group(0), "")
    if match := re.search(r"greater than (-?[0-9.]+)", rest):
        constraints["exclusiveMinimum"] = Decimal(match[1])
        rest = rest.replace(match.group(0), "")
    if match := re.search(r"less than (-?[0-9.]+)", rest):
        constraints["exclusiveMaximum"] = Decimal(match[1])
        rest = rest.replace(match.group(0), "")
    if match := re.search(r"at most (\d+) characters", rest):
        constraints["maxLength"] = int(match[1])
        rest = rest.replace(match.group(0), "")
    rest = rest.replace("free form", "")
    assert not rest.strip(" ,;."), f"unchecked words in an allowed-values cell: {rest!r}"
    return constraints


def _documented_score_ranges(cell: str) -> dict[str, tuple[Decimal, Decimal, bool]]:
    """`nrs` a whole number from 0 to 10; `vas` from 0 to 100 -> {"nrs": (0, 10, True), ...}."""
    assert cell.startswith("by `instrument`: ")
    ranges = {}
    for part in cell.removeprefix("by `instrument`: ").split("; "):
        match = re.fullmatch(r"`(\w+)` (a whole number )?from (\S+) to (\S+)", part)
        assert match, f"not `instrument` [a whole number ]from LOW to HIGH: {part!r}"
        ranges[match[1]] = (Decimal(match[3]), Decimal(match[4]), bool(match[2]))
    return ranges


# --- reading the models and the schemas -------------------------------------------------------


def _data_model(event_type: str) -> Any:
    return EVENT_MODELS[event_type].model_fields["data"].annotation


def _fields(model: Any) -> dict[str, Any]:
    """The model's fields by their JSON name (the alias, if it has one)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _data_schema(event_type: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `data` object's schema and the schema's definitions."""
    schema = json.loads((SCHEMAS_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
    definitions = schema["$defs"]
    return definitions[schema["properties"]["data"]["$ref"].split("/")[-1]], definitions


def _variant(prop: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """The one non-null form of a property: `$ref` followed, `null` dropped; a number first."""
    variants = [
        definitions[v["$ref"].split("/")[-1]] | v if "$ref" in v else v
        for v in prop.get("anyOf", [prop])
        if v.get("type") != "null"
    ]
    numbers = [v for v in variants if v.get("type") in ("number", "integer")]
    (variant,) = numbers[:1] or variants  # e.g. a Decimal's number-or-string: the number
    return variant | {key: value for key, value in prop.items() if key not in ("anyOf", "$ref")}


def _type_word(variant: dict[str, Any]) -> str:
    kind = variant.get("type")
    if kind == "integer" or (kind == "number" and variant.get("multipleOf") == 1):
        return "integer-valued number"
    if kind == "string" and variant.get("format") == "date":
        return "date"
    if kind == "array":
        return f"list of {variant['items']['type']}s"
    return kind


def _schema_constraints(variant: dict[str, Any]) -> dict[str, Any]:
    constraints: dict[str, Any] = {}
    if "enum" in variant:
        constraints["enum"] = list(variant["enum"])
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in variant:
            constraints[key] = Decimal(str(variant[key]))
    for key in ("minLength", "maxLength"):
        if key in variant:
            constraints[key] = variant[key]
    if "pattern" in variant and variant.get("format") not in ("date", "date-time"):
        constraints["pattern"] = variant["pattern"]
    return constraints


def _enum_class(annotation: Any) -> type[StrEnum] | None:
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return annotation
    return next(filter(None, map(_enum_class, get_args(annotation))), None)


def _data_rows() -> list[tuple[str, str]]:
    return [(t, f) for t in sorted(EVENT_MODELS) for f in sorted(_fields(_data_model(t)))]


# --- the envelope and the types ---------------------------------------------------------------


def test_every_implemented_type_has_a_table_and_no_other_does() -> None:
    assert set(TYPE_TABLES) == set(EVENT_MODELS)
    assert not NOT_IMPLEMENTED_TYPES & set(EVENT_MODELS), "implemented now: document its table"
    for event_type in NOT_IMPLEMENTED_TYPES:
        (paragraph,) = [p for p in TEXT.split("\n\n") if event_type in p]
        assert "does not implement it yet" in paragraph


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_the_envelope_table_lists_the_envelope_fields(event_type: str) -> None:
    fields = {name: f for name, f in _fields(EVENT_MODELS[event_type]).items()}

    assert set(ENVELOPE_TABLE) == set(fields)
    for name, field in fields.items():
        assert ENVELOPE_TABLE[name]["required"] == ("yes" if field.is_required() else "no"), name


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_the_table_lists_the_data_fields(event_type: str) -> None:
    assert set(TYPE_TABLES[event_type]) == set(_fields(_data_model(event_type)))


@pytest.mark.parametrize(("event_type", "name"), _data_rows())
def test_required_or_optional_and_default(event_type: str, name: str) -> None:
    cell = TYPE_TABLES[event_type][name]["required"]
    schema, _ = _data_schema(event_type)
    default = schema["properties"][name].get("default")

    required = _fields(_data_model(event_type))[name].is_required()
    assert cell.split(" ")[0].strip(",") == ("required" if required else "optional")
    assert (name in schema["required"]) == required
    documented = re.search(r"default `([^`]*)`", cell)
    if default is None:
        assert not documented, "documents a default the field does not have"
    else:
        text = default if isinstance(default, str) else json.dumps(default)
        assert documented and documented[1] == text


@pytest.mark.parametrize(("event_type", "name"), _data_rows())
def test_the_type_is_the_schemas(event_type: str, name: str) -> None:
    schema, definitions = _data_schema(event_type)
    variant = _variant(schema["properties"][name], definitions)

    assert TYPE_TABLES[event_type][name]["type"] == _type_word(variant)


@pytest.mark.parametrize(("event_type", "name"), _data_rows())
def test_enum_values_are_the_models(event_type: str, name: str) -> None:
    documented = _documented_constraints(TYPE_TABLES[event_type][name]["allowed values"])
    enum = _enum_class(_fields(_data_model(event_type))[name].annotation)

    if enum is None:
        assert "enum" not in documented
    else:
        assert documented["enum"] == [member.value for member in enum]


@pytest.mark.parametrize(("event_type", "name"), _data_rows())
def test_ranges_and_patterns_are_the_schemas(event_type: str, name: str) -> None:
    """Every constraint of the schema is documented, and nothing the schema does not have."""
    schema, definitions = _data_schema(event_type)
    documented = _documented_constraints(TYPE_TABLES[event_type][name]["allowed values"])
    # Checked against the constants in their own tests: SCORE_RANGES, DATE_MIN and DATE_MAX.
    documented.pop("score ranges", None)
    documented.pop("date range", None)

    assert documented == _schema_constraints(_variant(schema["properties"][name], definitions))


def test_the_score_ranges_are_score_ranges() -> None:
    cell = TYPE_TABLES["pain.score.recorded.v1"]["score"]["allowed values"]

    assert _documented_constraints(cell)["score ranges"] == {
        instrument.value: (Decimal(str(low)), Decimal(str(high)), whole)
        for instrument, (low, high, whole) in SCORE_RANGES.items()
    }


def test_every_patient_id_is_the_pattern() -> None:
    cells = [table["patient_id"]["allowed values"] for table in TYPE_TABLES.values()]
    mentions = re.findall(r"`(\[[^`\]]+\]\{\d+,\d+\})`", TEXT)
    low, high = re.search(r"\{(\d+),(\d+)\}\$$", PATIENT_ID_PATTERN).groups()

    assert {_documented_constraints(cell)["pattern"] for cell in cells} == {PATIENT_ID_PATTERN}
    assert len(mentions) > len(cells) and {f"^{m}$" for m in mentions} == {PATIENT_ID_PATTERN}
    assert re.search(rf"\b{low} to {high}\s+letters, digits", TEXT)


# --- the rules and the limits -----------------------------------------------------------------


def test_key_lengths_are_key_max_length() -> None:
    schema = json.loads((SCHEMAS_DIR / "pain.score.recorded.v1.json").read_text(encoding="utf-8"))
    limits = {
        row["limit"]: row["value"] for row in _table(_sections("###")["Limits Painpath adds"])
    }

    for name in ("id", "source"):
        assert f"At most {KEY_MAX_LENGTH} characters." in ENVELOPE_TABLE[name]["meaning"]
        assert schema["properties"][name]["maxLength"] == KEY_MAX_LENGTH
    assert limits["length of `id` and of `source`"] == f"at most {KEY_MAX_LENGTH} characters each"


def test_the_event_size_is_max_event_bytes() -> None:
    mentions = re.findall(r"(\d+) KiB", TEXT)

    assert MAX_EVENT_BYTES % 1024 == 0
    assert mentions and set(mentions) == {str(MAX_EVENT_BYTES // 1024)}


def test_the_depth_is_max_depth() -> None:
    from shared.contract.events import MAX_DEPTH

    mentions = re.findall(r"deeper than (\d+) levels", TEXT)

    assert mentions and set(mentions) == {str(MAX_DEPTH)}


def test_the_number_limits_are_the_decoders() -> None:
    from shared.contract.json_text import MAX_DIGITS, number_reason

    limits = {
        row["limit"]: row["value"] for row in _table(_sections("###")["Limits Painpath adds"])
    }

    assert f"at most {MAX_DIGITS} significant digits" in limits["digits of a number"]
    assert "1e-308" in limits["small numbers"] and "1.7976931348623157e308" in limits["numbers"]
    assert number_reason(Decimal("1e-308")) is None and number_reason(Decimal("1e-309"))
    assert number_reason(Decimal("1.7976931348623157e308")) is None
    assert number_reason(Decimal("1.7976931348623158e308"))
    assert number_reason(Decimal("1" * MAX_DIGITS)) is None
    assert number_reason(Decimal("1" * (MAX_DIGITS + 1)))


def test_the_time_bounds_are_time_min_and_time_max() -> None:
    from shared.contract.events import TIME_MAX, TIME_MIN

    mentions = re.findall(r"from (\S+T\S+Z) to (\S+T\S+Z)", TEXT)

    assert len(mentions) == 2, "in the envelope table and in the rules"
    for low, high in mentions:
        assert (datetime.fromisoformat(low), datetime.fromisoformat(high)) == (TIME_MIN, TIME_MAX)


def test_the_date_bounds_are_date_min_and_date_max() -> None:
    from shared.contract.events import DATE_MAX, DATE_MIN

    cell = TYPE_TABLES["pain.condition.recorded.v1"]["onset_date"]["allowed values"]
    mentions = re.findall(r"from (\d{4}-\d{2}-\d{2}) to (\d{4}-\d{2}-\d{2})(?![T\d])", TEXT)

    assert _documented_constraints(cell)["date range"] == (DATE_MIN, DATE_MAX)
    assert len(mentions) == 2, "in the onset_date row and in the rules"
    assert {tuple(map(date.fromisoformat, mention)) for mention in mentions} == {
        (DATE_MIN, DATE_MAX)
    }


def test_where_refused_events_go_is_what_the_services_do() -> None:
    section = _sections("###")["Where refused events go"]
    gateway, kafka, classify = (row["a refused event"] for row in _table(section))

    assert f"status `{ItemStatus.REJECTED}`, code {ITEM_CODES[ItemStatus.REJECTED]}" in gateway
    assert f"{ITEM_CODES[ItemStatus.CONFLICT]} for a conflict" in gateway
    assert f"`{EVENTS.name}`" in section and f"`{EVENTS_DLQ.name}`" in kafka
    assert f"`{dead_letter.REASON}`" in kafka and f"`{dead_letter.FIELD}`" in kafka
    assert "standard error" in classify
    assert (
        f"HTTP {ITEM_CODES[ItemStatus.CONFLICT]}" in _sections("###")["Idempotency and conflicts"]
    )


def test_the_example_is_a_valid_event() -> None:
    (example,) = re.findall(r"```json\n(.*?)```", TEXT, flags=re.DOTALL)

    assert json.loads(example) == CONTRACT_EXAMPLE
    assert parse_event(example).type in EVENT_MODELS


def test_the_machine_readable_documents_it_points_to_exist() -> None:
    assert "`docs/contract/schemas/<type>.json`" in TEXT and "JSON Schema (draft 2020-12)" in TEXT
    assert "`docs/contract/asyncapi.yaml`" in TEXT
    assert (REPO_ROOT / "docs/contract/asyncapi.yaml").is_file()
    assert all((SCHEMAS_DIR / f"{event_type}.json").is_file() for event_type in EVENT_MODELS)
