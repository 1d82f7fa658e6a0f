"""The contracts between Painpath's services and the world, as pydantic models.

- The clinical event contract, version 1 (../shared/CONTRACT.md): `parse_event` is the one way
  in: it validates one CloudEvent (bytes, str or an already decoded JSON value) and returns the
  typed event, or raises `ContractViolation` naming each field and why.
- The determination contract, `pain.determination.v1` (`determinations`): what the classifier
  publishes and the coordinator reads.

Services share these, never each other's code.
"""

from shared.contract.determinations import (
    DETERMINATION_TYPE,
    AssessmentPart,
    CombinationTrial,
    Determination,
    EventRef,
    Reason,
    Status,
    Trial,
    TrialOutcome,
)
from shared.contract.events import (
    EVENT_MODELS,
    MAX_EVENT_BYTES,
    AssessmentKind,
    AssessmentRecorded,
    Classification,
    ConditionRecorded,
    ContractViolation,
    DiagnosticResult,
    DiagnosticResulted,
    DiagnosticTest,
    DoseUnit,
    Event,
    EventRetracted,
    Instrument,
    ScoreRecorded,
    Severity,
    SideEffectReported,
    StopReason,
    TrialDoseChanged,
    TrialStarted,
    TrialStopped,
    Violation,
    content,
    parse_event,
    read_event,
)

__all__ = [
    "DETERMINATION_TYPE",
    "EVENT_MODELS",
    "MAX_EVENT_BYTES",
    "AssessmentKind",
    "AssessmentPart",
    "AssessmentRecorded",
    "Classification",
    "CombinationTrial",
    "ConditionRecorded",
    "ContractViolation",
    "Determination",
    "DiagnosticResult",
    "DiagnosticResulted",
    "DiagnosticTest",
    "DoseUnit",
    "Event",
    "EventRef",
    "EventRetracted",
    "Instrument",
    "Reason",
    "ScoreRecorded",
    "Severity",
    "SideEffectReported",
    "Status",
    "StopReason",
    "Trial",
    "TrialDoseChanged",
    "TrialOutcome",
    "TrialStarted",
    "TrialStopped",
    "Violation",
    "content",
    "parse_event",
    "read_event",
]
