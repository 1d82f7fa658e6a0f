"""The determination contract, version 1: what the classifier publishes on `pain.determinations.v1`.

One determination per patient, as of an instant, under a policy: the status with the figures and
reasons behind it. The classifier computes it; the coordinator (and anyone else) reads it through
this model only. It is versioned like the events: its name, `pain.determination.v1`, names its
JSON Schema (`docs/contract/schemas/pain.determination.v1.json`) and its topic carries the same
version. Within v1 it may gain optional fields, never rename or drop one, and a reader ignores a
field it does not know; a breaking change is `pain.determination.v2` on a topic of its own.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from shared.contract.events import Classification, DoseUnit, StopReason
from shared.contract.instant import RFC3339

DETERMINATION_TYPE = "pain.determination.v1"

# An instant with its offset, as pydantic writes it (`Z` for UTC); the schema says the offset too.
Moment = Annotated[
    AwareDatetime,
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339.pattern}),
]


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


class AssessmentPart(StrEnum):
    """A part of the clinical assessment that can be missing (POLICY.md section 5)."""

    MEDICATION_HISTORY = "medication_history"
    PHYSICAL_EXAM = "physical_exam"
    NEUROLOGICAL_EXAM = "neurological_exam"
    CLASSIFICATION = "classification"
    DIAGNOSTIC = "diagnostic"


class _Output(BaseModel):
    # A reader ignores what a later v1 adds (optional fields only), as with the events' `data`.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Reason(_Output):
    """Why: a machine-readable `code` and one line a clinician understands."""

    code: str
    text: str


class EventRef(_Output):
    """An event the determination was made from, by its idempotency key."""

    source: str
    id: str


class Trial(_Output):
    """One medication trial as judged under the policy. `drug` is the name it is known by: its
    formulary name, else the name sent, folded (trimmed, lower case, every run of spaces,
    hyphens and underscores one `_`)."""

    trial_id: str
    drug: str
    in_formulary: bool
    drug_class: str | None
    started_at: Moment
    stopped_at: Moment | None
    stop_reason: StopReason | None
    daily_dose: float
    dose_unit: DoseUnit
    minimum_dose: float | Literal["any"] | None
    minimum_dose_unit: DoseUnit | None
    minimum_days: int | None
    adequate_from: Moment | None
    adequate_until: Moment | None
    baseline: float | None
    on_treatment: float | None
    reduction: float | None
    outcome: TrialOutcome


class CombinationTrial(_Output):
    """Two trials of different classes whose adequate periods overlapped long enough."""

    trial_ids: tuple[str, str]
    drugs: tuple[str, str]
    overlap_from: Moment
    overlap_until: Moment
    baseline: float | None
    on_treatment: float | None
    reduction: float | None
    failed: bool


class Determination(_Output):
    """The status of one patient as of `as_of`, with the figures and reasons behind it.

    `determination_id` names the decision, never the clock: the same decision on the same
    evidence has the same id on any day, and new evidence or a decision that time changes has a
    new one. Readers treat it as opaque; the classifier derives it
    (`services/classifier/determination.py`). A published determination read back keeps it.
    """

    patient_id: str
    status: Status
    as_of: Moment
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
    determination_id: str = Field(min_length=1)
