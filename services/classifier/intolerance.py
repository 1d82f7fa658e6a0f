"""Whether a trial could not be tolerated (POLICY.md section 3)."""

from __future__ import annotations

from services.classifier.pain_duration import utc_date
from services.classifier.trials import TrialHistory
from shared.contract import Severity, StopReason

INTOLERABLE_SEVERITIES = frozenset({Severity.SEVERE, Severity.LIFE_THREATENING})


def intolerance(trial: TrialHistory) -> str | None:
    """Why the trial was not tolerated, or None: it was stopped for side effects, or a side effect
    attributed to it (see `trials`) was intolerable or `severe` / `life_threatening`."""
    if trial.stop_reason is StopReason.SIDE_EFFECTS:
        return "stopped for side effects"
    for report in trial.side_effects:
        side_effect = report.data
        if side_effect.intolerable or side_effect.severity in INTOLERABLE_SEVERITIES:
            marked = ", marked intolerable" if side_effect.intolerable else ""
            return (
                f"{side_effect.severity.value.replace('_', '-')} {side_effect.effect}{marked} "
                f"on {utc_date(report.time).isoformat()}"
            )
    return None
