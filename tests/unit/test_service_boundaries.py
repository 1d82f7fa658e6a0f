"""Services share contracts, not code: no service imports another service's package.

What one service publishes is a versioned model in `shared/contract/`; what two services need
alike is contract-level code in `shared/`. So no module under `services/<name>/` imports
`services.<other>`, and nothing under `shared/` imports a service at all. The imports are read
from each file's syntax tree (`ast`), every one of them (inside functions too, relative ones
resolved), never from its text: a name in a string or a comment is not an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(path.parent.name for path in (REPO_ROOT / "services").glob("*/__init__.py"))


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, relative imports made absolute."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
            # `from services import classifier` imports the package `services.classifier`.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def services_imported(source: str, module: str, is_package: bool = False) -> set[str]:
    """The services whose package `source` imports: `services.<name>` or below."""
    return {
        name.split(".")[1]
        for name in imported_modules(source, module, is_package)
        if name.startswith("services.") and name.split(".")[1] in SERVICES
    }


def _module(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _python_files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def test_there_are_services_to_check() -> None:
    assert {"classifier", "coordinator", "gateway"} <= set(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_no_other_service(service: str) -> None:
    files = _python_files(f"services/{service}")
    assert files
    crossings = {}
    for path in files:
        module, is_package = _module(path)
        others = services_imported(path.read_text("utf-8"), module, is_package) - {service}
        if others:
            crossings[str(path.relative_to(REPO_ROOT))] = sorted(others)
    assert crossings == {}, "services share contracts (shared/contract/), not code"


def test_shared_code_imports_no_service() -> None:
    crossings = {}
    for path in _python_files("shared"):
        module, is_package = _module(path)
        imported = services_imported(path.read_text("utf-8"), module, is_package)
        if imported:
            crossings[str(path.relative_to(REPO_ROOT))] = sorted(imported)
    assert crossings == {}


# --- the reading itself: it finds what a grep would miss, and nothing a grep would wrongly find --


@pytest.mark.parametrize(
    "source",
    [
        "from services.classifier.determination import determination_id",
        "import services.classifier.policy",
        "import services.classifier.policy as p",
        "from services import classifier",
        "from services import gateway, classifier",
        "def later():\n    from services.classifier import rules\n",
        "from ..classifier.policy import load_policy",
        "from .. import classifier",
    ],
)
def test_an_import_of_another_service_is_found(source: str) -> None:
    found = services_imported(source, "services.coordinator.timeline")

    assert "classifier" in found


@pytest.mark.parametrize(
    "source",
    [
        '"""Not `from services.classifier import rules`: the contract is shared."""',
        "# import services.classifier\nx = 1",
        "NAME = 'services.classifier.policy'",
        "from services.coordinator.store import lock_planning",
        "from . import store",
        "from .templates import PlanTemplates",
        "from shared.contract import Determination",
    ],
)
def test_text_that_is_no_import_of_another_service_is_not_found(source: str) -> None:
    assert services_imported(source, "services.coordinator.timeline") <= {"coordinator"}


def test_a_package_s_relative_import_is_read_from_the_package_itself() -> None:
    # In services/coordinator/__init__.py, `.` is services.coordinator and `..` is services.
    in_package = "services.coordinator"
    assert services_imported("from ..classifier import rules", in_package, True) == {"classifier"}
    assert services_imported("from .classifier import rules", in_package, True) == {"coordinator"}
