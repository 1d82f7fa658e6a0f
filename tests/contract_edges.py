"""Events at the edges of the contract (CONTRACT.md, README "Edges of the contract"), as JSON text.

One table for every way in: `parse_event`, the gateway, the streaming classifier and `painpath
classify` must all accept the same ones and refuse the others naming the same field.
Each text is written by hand (not `json.dumps`) where the edge is in the text itself: a
repeated name, a number's digits, a time's syntax.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SOURCE = "urn:hospital:st-olaf:ehr"


@dataclass(frozen=True)
class Edge:
    name: str
    text: str  # one event's JSON text
    field: str | None  # the field a refusal names; None when the event is accepted
    reason: str = ""  # a word the refusal's reason has

    @property
    def accepted(self) -> bool:
        return self.field is None


def _score(index: int, *, time: str = '"2026-01-10T10:00:00Z"', data: str = '"score": 5') -> str:
    return (
        f'{{"specversion": "1.0", "id": "edge-{index}", "source": "{SOURCE}",'
        f' "type": "pain.score.recorded.v1", "time": {time},'
        f' "data": {{"patient_id": "edge-p{index}", {data}}}}}'
    )


def _event(index: int, event_type: str, data: str, *, time: str = "2026-01-10T10:00:00Z") -> str:
    return (
        f'{{"specversion": "1.0", "id": "edge-{index}", "source": "{SOURCE}",'
        f' "type": "{event_type}", "time": "{time}",'
        f' "data": {{"patient_id": "edge-p{index}", {data}}}}}'
    )


def _deep(levels: int) -> str:
    """`findings` holding arrays nested so that the event is `levels` deep in all."""
    inner = levels - 3  # the event, `data` and `findings` are three levels
    return "[" * inner + "]" * inner


EDGES: list[Edge] = [
    # 1. Time bounds: in UTC within 1900-01-01T00:00:00Z .. 9999-12-31T00:00:00Z.
    Edge(
        "time-year-1-offset-out-of-range",
        _score(1, time='"0001-01-01T00:00:00+23:59"'),
        "time",
        "1900",
    ),
    Edge("time-at-the-lower-bound", _score(2, time='"1900-01-01T00:00:00Z"'), None),
    Edge(
        "time-just-below-the-lower-bound",
        _score(3, time='"1900-01-01T00:59:59+01:00"'),
        "time",
        "1900",
    ),
    Edge("time-at-the-upper-bound", _score(4, time='"9999-12-31T00:00:00Z"'), None),
    Edge("time-upper-bound-by-offset", _score(5, time='"9999-12-31T01:00:00+01:00"'), None),
    Edge("time-past-the-upper-bound", _score(6, time='"9999-12-31T00:00:01Z"'), "time", "9999"),
    Edge(
        "time-past-the-upper-bound-by-offset",
        _score(7, time='"9999-12-31T00:00:00-00:01"'),
        "time",
        "9999",
    ),
    Edge(
        "onset-date-year-1",
        _event(8, "pain.condition.recorded.v1", '"onset_date": "0001-01-01"'),
        "data.onset_date",
        "1900",
    ),
    Edge(
        "onset-date-at-the-bounds",
        _event(9, "pain.condition.recorded.v1", '"onset_date": "1900-01-01"'),
        None,
    ),
    # 3. null in an optional field is the field left out; in a required one, it is missing.
    Edge(
        "null-intolerable",
        _event(
            10,
            "pain.side_effect.reported.v1",
            '"drug": "gabapentin", "effect": "somnolence", "severity": "severe",'
            ' "intolerable": null',
        ),
        None,
    ),
    Edge("null-instrument", _score(11, data='"score": 5, "instrument": null'), None),
    Edge(
        "null-trial-id-with-a-drug",
        _event(
            12,
            "pain.side_effect.reported.v1",
            '"trial_id": null, "drug": "gabapentin", "effect": "x", "severity": "mild"',
        ),
        None,
    ),
    Edge(
        "null-rxnorm",
        _event(
            13,
            "pain.trial.started.v1",
            '"trial_id": "t-1", "drug": "gabapentin", "rxnorm": null, "daily_dose": 900,'
            ' "dose_unit": "mg"',
        ),
        None,
    ),
    Edge(
        "null-classification-and-findings",
        _event(
            14,
            "pain.assessment.recorded.v1",
            '"kind": "physical_exam", "classification": null, "findings": null',
        ),
        None,
    ),
    Edge(
        "null-relief-percent",
        _event(
            15,
            "pain.diagnostic.resulted.v1",
            '"test": "mri", "result": "negative", "relief_percent": null',
        ),
        None,
    ),
    Edge(
        "null-datacontenttype",
        _score(16).replace('"time":', '"datacontenttype": null, "time":'),
        None,
    ),
    Edge("null-required-score", _score(17, data='"score": null'), "data.score", "required"),
    Edge("null-required-time", _score(18, time="null"), "time", "required"),
    # 4. RFC 3339 syntax: `t` and `z` in either case; no space for `T`.
    Edge("time-lower-case-t-and-z", _score(19, time='"2026-01-10t10:00:00z"'), None),
    Edge("time-with-a-space", _score(20, time='"2026-01-10 10:00:00Z"'), "time", "RFC 3339"),
    Edge("time-without-offset", _score(21, time='"2026-01-10T10:00:00"'), "time", "offset"),
    Edge("time-leap-second", _score(22, time='"2026-12-31T23:59:60Z"'), "time", "RFC 3339"),
    # 5. A repeated member name, at any level.
    Edge("repeated-score", _score(23, data='"score": 2, "score": 9'), "data.score", "repeats"),
    Edge(
        "repeated-time",
        _score(24).replace('"time":', '"time": "2025-01-01T00:00:00Z", "time":'),
        "time",
        "repeats",
    ),
    Edge(
        "repeated-name-in-findings",
        _event(
            25,
            "pain.assessment.recorded.v1",
            '"kind": "physical_exam", "findings": {"a": {"x": 1, "x": 2}}',
        ),
        "data.findings",
        "repeats",
    ),
    Edge(
        "repeated-name-by-escape",
        _score(26, data='"score": 2, "sc\\u006fre": 9'),
        "data.score",
        "repeats",
    ),
    Edge(
        "same-name-in-two-objects-is-no-repeat",
        _event(
            27,
            "pain.assessment.recorded.v1",
            '"kind": "physical_exam", "findings": {"a": {"x": 1}, "b": {"x": 2}}',
        ),
        None,
    ),
    # 8. Sub-microsecond fractions are kept (see the evaluation tests for what they decide).
    Edge(
        "time-with-a-tenth-of-a-microsecond",
        _score(28, time='"2026-01-10T10:00:00.0000001Z"'),
        None,
    ),
    # 9. Nesting: at most 32 levels, the event itself the first.
    Edge(
        "findings-32-levels-deep",
        _event(
            29,
            "pain.assessment.recorded.v1",
            f'"kind": "physical_exam", "findings": {{"a": {_deep(32)}}}',
        ),
        None,
    ),
    Edge(
        "findings-33-levels-deep",
        _event(
            30,
            "pain.assessment.recorded.v1",
            f'"kind": "physical_exam", "findings": {{"a": {_deep(33)}}}',
        ),
        "data.findings",
        "32",
    ),
    Edge(
        "findings-50000-levels-deep",
        _event(
            31,
            "pain.assessment.recorded.v1",
            f'"kind": "physical_exam", "findings": {{"a": {_deep(50_000)}}}',
        ),
        "data.findings",
        "32",
    ),
    Edge(
        "unknown-field-too-deep",
        _score(32, data=f'"score": 5, "ward": {_deep(40)}'),
        "data.ward",
        "32",
    ),
    # 10. Numbers are their decimal text, as sent.
    Edge("nrs-score-1e-400", _score(33, data='"score": 1e-400'), "data.score", ""),
    Edge(
        "nrs-score-5-and-a-little",
        _score(34, data='"score": 5.0000000000000000001'),
        "data.score",
        "whole",
    ),
    Edge(
        "peg-score-10-and-a-little",
        _score(35, data='"score": 10.0000000000000000001, "instrument": "peg"'),
        "data.score",
        "10",
    ),
    Edge("nrs-score-5.000-is-whole", _score(36, data='"score": 5.000'), None),
    Edge("nrs-score-5e0-is-whole", _score(37, data='"score": 5e0'), None),
    Edge(
        "vas-score-with-many-trailing-zeros",
        _score(
            38, data='"score": 49.9500000000000000000000000000000000000000, "instrument": "vas"'
        ),
        None,
    ),
    Edge(
        "dose-1e-400-is-not-0",
        _event(
            39,
            "pain.trial.started.v1",
            '"trial_id": "t-1", "drug": "morphine", "daily_dose": 1e-400, "dose_unit": "mg"',
        ),
        "data.daily_dose",
        "0",
    ),
    Edge(
        "relief-100-and-a-little",
        _event(
            40,
            "pain.diagnostic.resulted.v1",
            '"test": "medial_branch_block", "result": "positive",'
            ' "relief_percent": 100.00000000000000000001',
        ),
        "data.relief_percent",
        "100",
    ),
    Edge("score-overflows", _score(41, data='"score": 1e400'), "data.score", "finite"),
    Edge("score-nan", _score(42, data='"score": NaN'), "data.score", "finite"),
    Edge(
        "too-many-digits",
        _score(43, data='"score": 5.00000000000000000000000000000000000001, "instrument": "vas"'),
        "data.score",
        "digits",
    ),
]


def edge_patient(edge: Edge) -> str:
    """The patient id of an edge's event (`edge-p<index>`), for the tests that look for it."""
    start = edge.text.index('"patient_id": "') + len('"patient_id": "')
    return edge.text[start : edge.text.index('"', start)]


def edge_id(edge: Edge) -> str:
    start = edge.text.index('"id": "') + len('"id": "')
    return edge.text[start : edge.text.index('"', start)]


def good_event(index: int) -> str:
    """An event that is always accepted, to go beside the edges."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"good-{index}",
            "source": SOURCE,
            "type": "pain.score.recorded.v1",
            "time": "2026-01-10T10:00:00Z",
            "data": {"patient_id": f"good-p{index}", "score": 6},
        }
    )
