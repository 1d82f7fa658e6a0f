"""The classifier group's readiness as a whole, judged from what the broker said (no broker)."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from services.classifier.stream import GROUP
from shared.consumer_group import (
    CLASSIFIER_GROUP,
    Observation,
    Tracker,
    decode_assignment,
    judge,
)
from shared.topics import EVENTS

ALL = list(range(EVENTS.partitions))


def observation(state="Stable", members=2, assignments=None, committed=None, ends=None):
    return Observation(
        state=state,
        members=members,
        assignments=assignments or {},
        committed=committed or dict.fromkeys(ALL, 10),
        ends=ends or dict.fromkeys(ALL, 10),
    )


def test_the_shared_group_name_is_the_classifiers():
    assert CLASSIFIER_GROUP == GROUP


def test_a_stable_group_caught_up_is_ready():
    status = judge("g", EVENTS, observation(), Tracker(), now=0, stall_seconds=5)

    assert status.ready and status.lag == 0 and status.unowned == status.stalled == []
    assert status.describe() == "g: ready, 2 member(s), 12/12 partitions owned, lag 0"


def test_a_rebalancing_or_empty_group_owns_nothing():
    rebalancing = judge("g", EVENTS, observation("PreparingRebalance"), Tracker(), 0, 5)
    empty = judge("g", EVENTS, observation("Empty", members=0), Tracker(), 0, 5)

    assert not rebalancing.ready and rebalancing.unowned == ALL
    assert "rebalancing" in rebalancing.reasons[0]
    assert not empty.ready and empty.unowned == ALL and empty.reasons == ["no member in the group"]


def test_reported_assignments_name_the_partitions_nobody_holds():
    held = {"a": list(range(6)), "b": [6, 7, 8]}
    status = judge("g", EVENTS, observation(assignments=held), Tracker(), 0, 5)

    assert not status.ready and status.assignments_reported
    assert status.unowned == [9, 10, 11]
    assert status.reasons == ["partitions 9-11 held by no member"]


def test_a_partition_whose_records_wait_without_a_commit_is_stalled_after_the_threshold():
    tracker = Tracker()
    ends = dict.fromkeys(ALL, 10) | {3: 50, 4: 50}
    moving = dict.fromkeys(ALL, 10)
    judge("g", EVENTS, observation(committed=moving, ends=ends), tracker, now=0, stall_seconds=5)
    moving = moving | {4: 30}  # partition 4's owner commits, partition 3's does not
    early = judge("g", EVENTS, observation(committed=moving, ends=ends), tracker, 4, 5)
    late = judge("g", EVENTS, observation(committed=moving, ends=ends), tracker, 6, 5)

    assert early.ready and early.lag == 60
    assert not late.ready and late.stalled == [3] and late.unowned == []
    assert "partitions 3: records wait" in late.reasons[0]


def test_a_partition_with_nothing_waiting_is_never_stalled():
    tracker = Tracker()
    for now in (0, 100, 200):
        status = judge("g", EVENTS, observation(), tracker, now, stall_seconds=5)
    assert status.ready


def test_a_stalled_partition_recovers_once_its_offset_moves():
    tracker = Tracker()
    ends = dict.fromkeys(ALL, 10) | {3: 50}
    judge("g", EVENTS, observation(ends=ends), tracker, 0, 5)
    stalled = judge("g", EVENTS, observation(ends=ends), tracker, 10, 5)
    moved = judge(
        "g",
        EVENTS,
        observation(committed=dict.fromkeys(ALL, 10) | {3: 20}, ends=ends),
        tracker,
        11,
        5,
    )

    assert stalled.stalled == [3] and moved.ready


def test_never_committed_partitions_count_their_whole_log_as_lag():
    status = judge(
        "g",
        EVENTS,
        observation(committed=dict.fromkeys(ALL), ends=dict.fromkeys(ALL, 7)),
        Tracker(),
        0,
        5,
    )
    assert status.lag == 7 * 12


def test_member_assignments_are_read_from_the_consumer_protocol():
    raw = ConsumerProtocolMemberAssignment(0, [("t.pain.events.v1", [5, 1]), ("other", [2])], b"")

    assert decode_assignment(raw.encode(), "t.pain.events.v1") == [1, 5]
    assert decode_assignment(b"", "t.pain.events.v1") == []  # the local broker tells nothing
    assert decode_assignment(b"\x00garbage", "t.pain.events.v1") == []


def test_the_status_as_json_counts_partitions_and_names_no_patient():
    document = judge("g", EVENTS, observation("Empty", members=0), Tracker(), 0, 5).as_dict()

    assert document["unowned_partitions"] == 12 and document["stalled_partitions"] == 0
    assert document["lag_by_partition"]["0"] == 0
    assert set(document) >= {"ready", "lag", "members", "state", "reasons"}
