"""The classifier's output: one determination per patient, as of an instant, under a policy."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.classifier.policy import AssessmentPart
from shared.contract import Classification, DoseUnit, StopReason


class Status(StrEnum):
    """The patient's status (POLICY.md section 7)."""

    NOT_CHRONIC = "not_chronic"
    UNDER_TREATMENT = "under_treatment"
    RESPONDING = "responding"
    REFRACTORY_SUSPECTED = "refractory_suspected"
    REFRACTORY_CONFIRMED = "refractory_confirmed"


class TrialOutcome(StrEnum):
    """One trial's outcome as of T (POLICY.md section 3)."""

    INTOLERANT = "intolerant"
    IN_PROGRESS = "in_progress"
    INADEQUATE = "inadequate"
    UNEVALUABLE = "unevaluable"
    RESPONDED = "responded"
    FAILED = "failed"


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reason(_Output):
    """Why: a machine-readable `code` and one line a clinician understands."""

    code: str
    text: str


class EventRef(_Output):
    """An event the determination was made from, by its idempotency key."""

    source: str
    id: str


class Trial(_Output):
    """One medication trial as judged under the policy."""

    trial_id: str
    drug: str
    in_formulary: bool
    drug_class: str | None
    started_at: AwareDatetime
    stopped_at: AwareDatetime | None
    stop_reason: StopReason | None
    daily_dose: float
    dose_unit: DoseUnit
    minimum_dose: float | Literal["any"] | None
    minimum_dose_unit: DoseUnit | None
    minimum_days: int | None
    adequate_from: AwareDatetime | None
    adequate_until: AwareDatetime | None
    baseline: float | None
    on_treatment: float | None
    reduction: float | None
    outcome: TrialOutcome


class CombinationTrial(_Output):
    """Two trials of different classes whose adequate periods overlapped long enough."""

    trial_ids: tuple[str, str]
    drugs: tuple[str, str]
    overlap_from: AwareDatetime
    overlap_until: AwareDatetime
    baseline: float | None
    on_treatment: float | None
    reduction: float | None
    failed: bool


class Determination(_Output):
    """The status of one patient as of `as_of`, with the figures and reasons behind it.

    `determination_id` is derived from the decision, never from the clock: the sha256 of the
    canonical JSON of the policy, the patient, the status, the classification, the failed drugs,
    classes and combination, the missing assessment parts, each trial's outcome and the evidence
    event ids. `as_of` and the figures that move with it alone (`pain_days`, `current_pain`, the
    end of an active trial's adequate period, the reason texts) are left out, so that the daily
    re-evaluation of an unchanged patient yields the same id, while any new evidence or any
    decision that time changes (90 or 365 days reached, a trial reaching its minimum days) yields
    a new one. `rules.evaluate` sets it through `identified()`; a published determination read
    back keeps the id it was published with.
    """

    patient_id: str
    status: Status
    as_of: AwareDatetime
    policy: str
    pain_start: date | None
    pain_days: int | None
    current_pain: float | None
    classification: Classification | None
    failed_drugs: list[str]
    failed_classes: list[str]
    combination_failed: bool
    criteria: str
    criteria_met: bool
    missing_assessments: list[AssessmentPart]
    trials: list[Trial]
    combinations: list[CombinationTrial]
    reasons: list[Reason]
    evidence_event_ids: list[EventRef]
    determination_id: str = ""

    def identified(self) -> Determination:
        """This determination with its `determination_id` derived from its decision."""
        # Built by hand rather than with model_dump(include=...): the same JSON (a unit test
        # compares them), at a fraction of the cost, since every decision computes it.
        decision = {
            "policy": self.policy,
            "patient_id": self.patient_id,
            "status": self.status.value,
            "classification": None if self.classification is None else self.classification.value,
            "failed_drugs": list(self.failed_drugs),
            "failed_classes": list(self.failed_classes),
            "combination_failed": self.combination_failed,
            "missing_assessments": [part.value for part in self.missing_assessments],
            "evidence_event_ids": [
                {"source": ref.source, "id": ref.id} for ref in self.evidence_event_ids
            ],
            "trials": [[trial.trial_id, trial.outcome.value] for trial in self.trials],
        }
        canonical = json.dumps(decision, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self.model_copy(
            update={"determination_id": hashlib.sha256(canonical.encode()).hexdigest()}
        )
