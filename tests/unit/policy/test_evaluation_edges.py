"""Evaluation as of T at the contract's edges: times past the microsecond, scores as sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from shared.contract import Status, parse_event

POLICY = load_policy()


def _score(event_id: str, time: str, score: str, instrument: str = "nrs"):
    envelope = f'"specversion": "1.0", "id": "{event_id}", "source": "s", "time": "{time}"'
    data = f'"patient_id": "p", "score": {score}, "instrument": "{instrument}"'
    return parse_event(f'{{{envelope}, "type": "pain.score.recorded.v1", "data": {{{data}}}}}')


def test_an_event_a_tenth_of_a_microsecond_after_t_does_not_count_as_of_t() -> None:
    events = [_score("e-1", "2026-01-10T00:00:00.0000001Z", "6")]
    at_t = evaluate(events, POLICY, datetime(2026, 1, 10, tzinfo=UTC))
    a_microsecond_later = evaluate(
        events, POLICY, datetime(2026, 1, 10, tzinfo=UTC) + timedelta(microseconds=1)
    )

    assert at_t.status is Status.NOT_CHRONIC and at_t.pain_start is None
    assert a_microsecond_later.pain_start is not None
    assert a_microsecond_later.current_pain == 6


def test_events_within_one_microsecond_are_read_in_their_true_order() -> None:
    # The later score (by its eighth digit) is the latest score, whatever the ids say.
    events = [
        _score("a-later", "2025-01-10T00:00:00.00000009Z", "7"),
        _score("b-earlier", "2025-01-10T00:00:00.00000001Z", "3"),
    ]
    determination = evaluate(events, POLICY, datetime(2026, 1, 10, tzinfo=UTC))

    assert determination.current_pain == 7  # no score in the last 30 days: the latest one


def test_a_vas_score_a_hair_below_50_mm_is_below_5() -> None:
    events = [
        parse_event(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "c",
                    "source": "s",
                    "type": "pain.condition.recorded.v1",
                    "time": "2024-01-01T00:00:00Z",
                    "data": {"patient_id": "p", "onset_date": "2024-01-01"},
                }
            )
        ),
        _score("e-1", "2026-01-09T00:00:00Z", "49.99999999999999999999", "vas"),
    ]
    determination = evaluate(events, POLICY, datetime(2026, 1, 10, tzinfo=UTC))

    codes = {reason.code for reason in determination.reasons}
    assert "criteria.current_pain.not_met" in codes
    assert "current pain 4.99/10" in " ".join(reason.text for reason in determination.reasons)
