"""The classifier's two input lanes on the real broker: `pain.events.v1` (live) and
`pain.events.backfill.v1` (bulk loads), one history per patient across both.

Workers run as real `painpath classifier` processes, here on the real clock (no fixed
`CLASSIFIER_AS_OF`): with two determinations topics, the one as of the later instant is a
patient's, and the reference decides each patient at that instant.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections import defaultdict
from datetime import datetime

import pytest
from aiokafka import TopicPartition

from bench.services import as_records, relabel
from services.classifier.offline import expected_from_records
from services.classifier.policy import load_policy
from services.classifier.stream import _check_lanes_together
from shared.topics import DETERMINATIONS, DETERMINATIONS_BACKFILL, EVENTS, EVENTS_BACKFILL
from tests.conftest import read_topic
from tests.integration.test_classifier_stream import (
    Workers,
    feed_lines,
    produce,
    wait_until_consumed,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def clock_workers(settings, endpoints):
    running = Workers(settings, endpoints)
    del running.env["CLASSIFIER_AS_OF"]  # the real clock: as_of orders a patient's decisions
    yield running
    running.stop_all()


def split(records, backfill_patients: set[bytes], mixed_patients: set[bytes]):
    """Records into (live, backfill): a patient's all in one lane, or, for a mixed patient, by
    its event's id (every copy of an id in the same lane, so first-wins keeps its meaning)."""
    live, backfill = [], []
    for key, value in records:
        if key in backfill_patients:
            backfill.append((key, value))
        elif key in mixed_patients:
            try:
                event_id = json.loads(value)["id"]
            except (ValueError, KeyError, TypeError):
                live.append((key, value))
                continue
            digest = hashlib.sha256(str(event_id).encode()).digest()[0]
            (backfill if digest % 2 else live).append((key, value))
        else:
            live.append((key, value))
    return live, backfill


async def determinations(settings, topic, expected: int) -> dict[bytes, list]:
    by_patient = defaultdict(list)
    records = await read_topic(settings, topic, expected=expected, timeout=30)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_patient[record.key].append(record)
    return by_patient


async def test_a_history_split_across_both_lanes_decides_as_one(settings, clock_workers, tmp_path):
    records = as_records(feed_lines(patients=60, seed=31))
    patients = sorted({key for key, _ in records if key is not None})
    backfill_only, mixed = set(patients[:20]), set(patients[20:40])
    live, backfill = split(records, backfill_only, mixed)
    assert live and backfill
    clock_workers.start(tmp_path / "w1")
    clock_workers.wait_ready()

    await produce(settings, backfill, EVENTS_BACKFILL)
    await produce(settings, live, EVENTS)
    await wait_until_consumed(settings, topics=(EVENTS, EVENTS_BACKFILL))

    on_live = await determinations(settings, DETERMINATIONS, 1)
    on_backfill = await determinations(settings, DETERMINATIONS_BACKFILL, 1)
    # Caused by backfill events alone: the backfill lane's topic only; by live ones: the live's.
    assert set(on_backfill) >= backfill_only and not set(on_live) & backfill_only
    assert not set(on_backfill) & (set(patients) - backfill_only - mixed)
    policy = load_policy()
    wrong = []
    for patient in patients:
        published = [json.loads(r.value) for r in on_live[patient] + on_backfill[patient]]
        if not published:
            continue  # every one of its records refused: nothing to decide
        latest = max(published, key=lambda d: datetime.fromisoformat(d["as_of"]))
        own = [(key, value) for key, value in records if key == patient]
        expected, _ = expected_from_records(own, policy, datetime.fromisoformat(latest["as_of"]))
        if expected[patient.decode()].determination_id != latest["determination_id"]:
            wrong.append(patient)
    assert wrong == []
    assert {p for p in mixed if on_live[p] and on_backfill[p]}, "no mixed patient in both topics"


async def test_a_live_event_is_decided_while_a_backfill_waits_behind_it(
    settings, clock_workers, tmp_path
):
    backlog = as_records(feed_lines(patients=700, seed=41))
    live = as_records(relabel(feed_lines(patients=1, seed=42), "live"))
    live_patient = live[0][0]
    assert live_patient not in {key for key, _ in backlog}
    await produce(settings, backlog, EVENTS_BACKFILL)
    port = clock_workers.start(tmp_path / "w1")
    clock_workers.wait_ready()
    while not clock_workers.metric_totals("painpath_classifier_events_total"):
        await asyncio.sleep(0.05)  # the backfill is being read

    await produce(settings, live, EVENTS)
    await read_topic(settings, DETERMINATIONS, expected=1, timeout=60)
    read_by_then = sum(clock_workers.metric_totals("painpath_classifier_events_total").values())
    # Its determination was out before the backlog was read (one lane: it was behind it).
    assert read_by_then < len(backlog) + len(live)
    await wait_until_consumed(settings, topics=(EVENTS, EVENTS_BACKFILL))

    on_live = await determinations(settings, DETERMINATIONS, 1)
    on_backfill = await determinations(settings, DETERMINATIONS_BACKFILL, 600)
    assert set(on_live) == {live_patient}
    first_live = min(record.timestamp for record in on_live[live_patient])
    last_backfill = max(r.timestamp for records in on_backfill.values() for r in records)
    # Decided at once, ahead of the backfill's passes, not after the backlog was read.
    assert first_live < last_backfill
    assert clock_workers.stop(port) in (0, -signal.SIGTERM)


async def test_a_restart_resumes_both_lanes_where_its_checkpoint_left_them(
    settings, clock_workers, tmp_path
):
    records = as_records(feed_lines(patients=80, seed=51))
    patients = sorted({key for key, _ in records if key is not None})
    live, backfill = split(records, set(patients[:30]), set(patients[30:60]))
    port = clock_workers.start(tmp_path / "w1")
    clock_workers.wait_ready()
    await produce(settings, live[: len(live) // 2], EVENTS)
    await produce(settings, backfill[: len(backfill) // 2], EVENTS_BACKFILL)
    await wait_until_consumed(settings, topics=(EVENTS, EVENTS_BACKFILL))
    assert clock_workers.stop(port) in (0, -signal.SIGTERM)  # checkpoints and commits

    clock_workers.start(tmp_path / "w1")  # the same state directory: a restart
    clock_workers.wait_ready()
    await produce(settings, live[len(live) // 2 :], EVENTS)
    await produce(settings, backfill[len(backfill) // 2 :], EVENTS_BACKFILL)
    await wait_until_consumed(settings, topics=(EVENTS, EVENTS_BACKFILL))

    counted = clock_workers.metric_totals("painpath_classifier_events_total")
    # The restarted worker read only what came after its checkpoint, in both lanes.
    assert sum(counted.values()) == len(live) - len(live) // 2 + len(backfill) - len(backfill) // 2
    for topic in (DETERMINATIONS, DETERMINATIONS_BACKFILL):
        for messages in (await determinations(settings, topic, 1)).values():
            ids = [json.loads(m.value)["determination_id"] for m in messages]
            assert all(a != b for a, b in zip(ids, ids[1:], strict=False)), "published twice"


def test_the_lanes_partitions_must_be_assigned_together():
    topics = {"live": "a", "backfill": "b"}
    together = {TopicPartition("a", 0), TopicPartition("b", 0), TopicPartition("a", 3)}
    _check_lanes_together(together | {TopicPartition("b", 3)}, topics)
    with pytest.raises(RuntimeError, match="range assignor"):
        _check_lanes_together(together, topics)
