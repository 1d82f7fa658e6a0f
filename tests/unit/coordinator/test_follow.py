"""Which determination a care plan follows: the later `as_of` wins (`service.follow`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from services.coordinator.consumer import Outcome
from services.coordinator.service import follow
from services.coordinator.store import Followed, ReceivedDetermination

AS_OF = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def received(determination_id: str, as_of: datetime) -> ReceivedDetermination:
    return ReceivedDetermination(
        topic="pain.determinations.backfill.v1",
        partition=0,
        offset=0,
        patient_id="pt-follow-unit",
        determination_id=determination_id,
        status="responding",
        as_of=as_of,
        body="{}",
    )


def test_a_patient_without_a_plan_follows_the_first_determination_whatever_its_instant():
    assert follow(None, received("d1", datetime(1900, 1, 1, tzinfo=UTC))) is Outcome.APPLIED


def test_an_earlier_instant_than_the_one_followed_is_superseded_even_with_the_same_decision():
    current = Followed("d2", AS_OF)
    earlier = AS_OF - timedelta(microseconds=1)

    assert follow(current, received("d1", earlier)) is Outcome.SUPERSEDED
    assert follow(current, received("d2", earlier)) is Outcome.SUPERSEDED


def test_a_later_instant_is_followed_and_the_same_decision_later_changes_no_task():
    current = Followed("d1", AS_OF)
    later = AS_OF + timedelta(microseconds=1)

    assert follow(current, received("d2", later)) is Outcome.APPLIED
    assert follow(current, received("d1", later)) is Outcome.ALREADY_APPLIED


def test_at_an_equal_instant_the_one_applied_later_is_followed():
    current = Followed("d1", AS_OF)

    assert follow(current, received("d2", AS_OF)) is Outcome.APPLIED
    assert follow(current, received("d1", AS_OF)) is Outcome.ALREADY_APPLIED


def test_instants_compare_across_offsets():
    current = Followed("d1", AS_OF)  # 09:00Z
    paris = timezone(timedelta(hours=1))

    same_instant = datetime(2026, 3, 2, 10, 0, tzinfo=paris)
    earlier = datetime(2026, 3, 2, 9, 59, tzinfo=paris)  # later by the clock, earlier in time

    assert follow(current, received("d2", same_instant)) is Outcome.APPLIED
    assert follow(current, received("d2", earlier)) is Outcome.SUPERSEDED
