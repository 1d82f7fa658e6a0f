"""Which formulary drugs have failed, and their classes (POLICY.md section 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.classifier.policy import FormularyDrug
from services.classifier.trial_outcome import COUNTED_OUTCOMES, FAILED_OUTCOMES, JudgedTrial
from shared.contract import Reason


@dataclass(frozen=True)
class DrugFailures:
    """The failed formulary drugs and classes (sorted), with one reason per drug judged."""

    drugs: list[str]
    classes: list[str]
    reasons: list[Reason]


def drug_failures(trials: Sequence[JudgedTrial]) -> DrugFailures:
    """A formulary drug has failed when the latest by start (then `trial_id`) of its trials with
    outcome `responded`, `failed` or `intolerant` is `failed` or `intolerant`. `trials` must be in
    that order; trials of drugs not in the formulary never count."""
    latest: dict[str, tuple[JudgedTrial, FormularyDrug]] = {}
    for trial in trials:
        drug = trial.history.drug
        if drug is not None and trial.outcome in COUNTED_OUTCOMES:
            latest[drug.drug] = (trial, drug)
    failed = {
        name: drug for name, (trial, drug) in latest.items() if trial.outcome in FAILED_OUTCOMES
    }
    reasons = [
        Reason(
            code="drug.failed" if name in failed else "drug.not_failed",
            text=f"{name} {'failed' if name in failed else 'has not failed'}: its latest counted "
            f"trial {trial.history.trial_id} was {trial.outcome.value}",
        )
        for name, (trial, _) in sorted(latest.items())
    ]
    return DrugFailures(
        drugs=sorted(failed),
        classes=sorted({drug.drug_class for drug in failed.values()}),
        reasons=reasons,
    )
