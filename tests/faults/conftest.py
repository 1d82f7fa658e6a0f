"""Fault tests (`make test-faults`): each scenario injects one fault into the running system and
compares what it ends with against an offline reference over the same accepted input.

Each scenario records its figures (events, lost, duplicated, recovery time ...) with
`report_figures`; they are printed at the end of the run and merged, scenario by scenario, into
`test-artifacts/fault-report.json`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import ARTIFACTS

REPORT = ARTIFACTS / "fault-report.json"
_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: injects a fault (crash, poison, scaling, outage) into the system"
    )


def report_figures(scenario: str, **figures: Any) -> None:
    """Print one scenario's figures and merge them into the fault report."""
    _FIGURES[scenario] = figures
    print(f"\n[fault] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    except ValueError:
        report = {}
    report[scenario] = figures
    REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault report (test-artifacts/fault-report.json)")
    for scenario, figures in _FIGURES.items():
        terminalreporter.write_line(
            f"{scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
        )
