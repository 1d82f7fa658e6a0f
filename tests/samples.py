"""Valid clinical events to build tests from: one sample per event type, changed by keyword.

    valid_event("pain.score.recorded.v1", score=7, time="2026-03-02T09:30:00Z")

Keywords named like an envelope attribute (`specversion`, `id`, `source`, `type`, `time`,
`datacontenttype`, `data`) change the envelope; every other keyword changes `data`. `MISSING`
removes the field. The result is the decoded JSON value (a dict), ready for `parse_event` or
`json.dumps`.
"""

from __future__ import annotations

import itertools
from typing import Any

PATIENT_ID = "p-1842"
SOURCE = "urn:hospital:st-olaf:ehr"
TIME = "2026-03-02T09:30:00+01:00"

MISSING: Any = object()

ENVELOPE_FIELDS = frozenset(
    {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
)

# The example event of CONTRACT.md, verbatim.
CONTRACT_EXAMPLE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "evt-0001",
    "source": "urn:hospital:st-olaf:ehr",
    "type": "pain.trial.started.v1",
    "time": "2026-03-02T09:30:00+01:00",
    "data": {
        "patient_id": "p-1842",
        "trial_id": "t-7",
        "drug": "gabapentin",
        "daily_dose": 900,
        "dose_unit": "mg",
    },
}

# The required `data` fields of each type (besides `patient_id`), with plausible values.
SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "pain.condition.recorded.v1": {"onset_date": "2025-06-01"},
    "pain.score.recorded.v1": {"score": 7},
    "pain.trial.started.v1": {
        "trial_id": "t-7",
        "drug": "gabapentin",
        "daily_dose": 900,
        "dose_unit": "mg",
    },
    "pain.trial.dose_changed.v1": {"trial_id": "t-7", "daily_dose": 1800, "dose_unit": "mg"},
    "pain.trial.stopped.v1": {"trial_id": "t-7", "reason": "ineffective"},
    "pain.side_effect.reported.v1": {"trial_id": "t-7", "effect": "somnolence", "severity": "mild"},
    "pain.assessment.recorded.v1": {"kind": "physical_exam"},
    "pain.diagnostic.resulted.v1": {"test": "mri", "result": "negative"},
    "pain.event.retracted.v1": {"retracted_id": "evt-0001"},
}

_ids = itertools.count(1)


def valid_event(event_type: str, **overrides: Any) -> dict[str, Any]:
    """A valid event of `event_type` with a fresh `id`, changed by `overrides` (see above)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-sample-{next(_ids)}",
        "source": SOURCE,
        "type": event_type,
        "time": TIME,
        "data": {"patient_id": PATIENT_ID, **SAMPLE_DATA[event_type]},
    }
    for name, value in overrides.items():
        target = event if name in ENVELOPE_FIELDS else event["data"]
        if value is MISSING:
            target.pop(name, None)
        else:
            target[name] = value
    return event
