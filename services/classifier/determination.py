"""How the classifier names a decision: the `determination_id` of what it publishes.

The determination itself is a contract (`shared.contract.Determination`); its id is the
classifier's: the sha256 of the canonical JSON of the policy, the patient, the status, the
classification, the failed drugs, classes and combination, the missing assessment parts, each
trial's outcome and the evidence event ids. `as_of` and the figures that move with it alone
(`pain_days`, `current_pain`, the end of an active trial's adequate period, the reason texts) are
left out, so that the daily re-evaluation of an unchanged patient yields the same id, while any
new evidence or any decision that time changes (90 or 365 days reached, a trial reaching its
minimum days) yields a new one. Ids are stored and published: this derivation must not change a
single one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from shared.contract import AssessmentPart, Classification, EventRef, Status, Trial


def determination_id(
    *,
    policy: str,
    patient_id: str,
    status: Status,
    classification: Classification | None,
    failed_drugs: Sequence[str],
    failed_classes: Sequence[str],
    combination_failed: bool,
    missing_assessments: Sequence[AssessmentPart],
    evidence_event_ids: Sequence[EventRef],
    trials: Sequence[Trial],
) -> str:
    """The id of the decision these fields of a determination make."""
    # Built by hand rather than with model_dump(include=...): the same JSON (a unit test
    # compares them), at a fraction of the cost, since every decision computes it.
    decision = {
        "policy": policy,
        "patient_id": patient_id,
        "status": status.value,
        "classification": None if classification is None else classification.value,
        "failed_drugs": list(failed_drugs),
        "failed_classes": list(failed_classes),
        "combination_failed": combination_failed,
        "missing_assessments": [part.value for part in missing_assessments],
        "evidence_event_ids": [{"source": ref.source, "id": ref.id} for ref in evidence_event_ids],
        "trials": [[trial.trial_id, trial.outcome.value] for trial in trials],
    }
    canonical = json.dumps(decision, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
