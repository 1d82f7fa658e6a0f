"""The clinical event contract, version 1 (../shared/CONTRACT.md), as pydantic models.

`parse_event` is the one way in: it validates one CloudEvent (bytes, str or an already decoded
JSON value) and returns the typed event, or raises `ContractViolation` naming each field and why.
"""

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
    parse_event,
)

__all__ = [
    "EVENT_MODELS",
    "MAX_EVENT_BYTES",
    "AssessmentKind",
    "AssessmentRecorded",
    "Classification",
    "ConditionRecorded",
    "ContractViolation",
    "DiagnosticResult",
    "DiagnosticResulted",
    "DiagnosticTest",
    "DoseUnit",
    "Event",
    "EventRetracted",
    "Instrument",
    "ScoreRecorded",
    "Severity",
    "SideEffectReported",
    "StopReason",
    "TrialDoseChanged",
    "TrialStarted",
    "TrialStopped",
    "Violation",
    "parse_event",
]
