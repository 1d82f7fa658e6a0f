"""The patient's status: the first that applies (POLICY.md section 7)."""

from __future__ import annotations

from collections.abc import Sequence

from services.classifier.assessment import Assessment
from services.classifier.pain_duration import PainDuration
from services.classifier.treatment_criteria import CriteriaJudgement
from services.classifier.trial_outcome import JudgedTrial
from shared.contract import Reason, Status, TrialOutcome


def decide_status(
    duration: PainDuration,
    trials: Sequence[JudgedTrial],
    criteria: CriteriaJudgement,
    assessed: Assessment,
) -> tuple[Status, Reason]:
    """`not_chronic` (not chronic, or no pain start); `responding` (a trial active at T
    responded); `refractory_confirmed` (criteria met, assessment complete);
    `refractory_suspected` (criteria met, assessment incomplete); else `under_treatment`."""
    if not duration.chronic:
        text = f"not chronic: {duration.reason.text}"
        return Status.NOT_CHRONIC, Reason(code="status.not_chronic", text=text)
    responding = [
        trial.history.trial_id
        for trial in trials
        if trial.history.active and trial.outcome is TrialOutcome.RESPONDED
    ]
    if responding:
        text = f"responding to active trial(s) {', '.join(responding)}"
        return Status.RESPONDING, Reason(code="status.responding", text=text)
    if criteria.met and assessed.complete:
        text = (
            f"refractory confirmed: treatment criteria ({criteria.name}) met, assessment complete"
        )
        return Status.REFRACTORY_CONFIRMED, Reason(code="status.refractory_confirmed", text=text)
    if criteria.met:
        missing = ", ".join(part.value for part in assessed.missing)
        text = (
            f"refractory suspected: treatment criteria ({criteria.name}) met, assessment "
            f"incomplete (missing {missing})"
        )
        return Status.REFRACTORY_SUSPECTED, Reason(code="status.refractory_suspected", text=text)
    text = f"under treatment: treatment criteria ({criteria.name}) not met"
    return Status.UNDER_TREATMENT, Reason(code="status.under_treatment", text=text)
