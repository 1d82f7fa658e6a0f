"""Live events during a backlog: their patients are decided at once, the backlog's wait."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition

from services.classifier.partition import LIVE as LIVE_LANE
from services.classifier.partition import offsets
from services.classifier.policy import load_policy
from services.classifier.stream import Classifier, PartitionState
from shared.settings import Settings
from tests.unit.test_quarantine import PARTITION, Record, RecordingProducer, brokerless, score

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
LIVE, BACKLOG = b"pt-live-000001", b"pt-backlog-000002"


@pytest.fixture
def worker() -> Classifier:
    worker = Classifier(Settings(_env_file=None), brokerless(), load_policy(), clock=lambda: AS_OF)
    worker.producer = RecordingProducer()
    worker.owned[PARTITION] = PartitionState(next_offset=offsets(0), committed=offsets(0))
    return worker


def admit(worker: Classifier, key: bytes, number: int, age_s: float):
    stamp = int((time.time() - age_s) * 1000)
    record = Record(key, score(key, number), number, timestamp=stamp)
    return worker._admit(worker.owned[PARTITION], PARTITION, LIVE_LANE, record)


async def test_a_record_read_as_it_is_written_is_live_and_decided_alone(worker):
    admit(worker, BACKLOG, 0, age_s=30)  # read 30 s after it was written: a backlog
    admit(worker, LIVE, 1, age_s=0.05)

    assert worker.live == {LIVE}
    decided = await worker._decide_dirty(only=worker.live)

    assert [item.key for item in decided] == [LIVE]
    assert list(worker.dirty) == [BACKLOG]  # still waiting for the backlog's pass
    assert worker.live == set() and worker.dirty_since is not None


async def test_a_full_pass_takes_the_live_ones_too(worker):
    admit(worker, LIVE, 1, age_s=0)
    admit(worker, BACKLOG, 0, age_s=30)

    decided = await worker._decide_dirty()

    assert {item.key for item in decided} == {LIVE, BACKLOG}
    assert worker.live == set() and worker.dirty == {} and worker.dirty_since is None


def test_zero_seconds_turns_it_off(worker):
    worker._live_ms = 0
    admit(worker, LIVE, 1, age_s=-1)  # a clock a second ahead
    assert worker.live == set()


async def test_a_live_patient_keeps_its_parsed_events_and_a_backlog_one_only_its_texts(worker):
    admit(worker, LIVE, 1, age_s=0)
    admit(worker, BACKLOG, 0, age_s=30)

    await worker._decide_dirty()

    patients = worker.owned[PARTITION].patients
    assert patients[LIVE]._parsed is not None and patients[LIVE] in worker.parsed
    assert patients[BACKLOG]._parsed is None  # parsed again if ever decided again
    assert worker.parsed.events == 1


async def test_a_cached_patient_s_new_event_is_parsed_once_on_admission(worker):
    admit(worker, LIVE, 1, age_s=0)
    await worker._decide_dirty()
    admit(worker, LIVE, 2, age_s=0)

    history = worker.owned[PARTITION].patients[LIVE]
    assert [event.id for event in history._parsed] == [event.id for event in history.events]
    assert len(history._parsed) == 2


async def test_a_pass_is_decided_a_slice_at_a_time_and_ends_with_whom_it_began(worker):
    worker.settings = Settings(_env_file=None, classifier_decision_slice_seconds=1e-9)
    first, second, later = b"pt-slice-000001", b"pt-slice-000002", b"pt-slice-000003"
    admit(worker, first, 0, age_s=30)
    admit(worker, second, 1, age_s=30)

    sliced = [item.key for item in await worker._decide_slice()]  # one patient per slice here
    admit(worker, later, 2, age_s=30)  # marked once the pass began: waits for the next one
    sliced += [item.key for item in await worker._decide_slice()]

    assert sliced == [first, second] and not worker.passing
    assert list(worker.dirty) == [later] and worker.dirty_since is not None
    assert [item.key for item in await worker._decide_slice()] == [later]  # the next pass
    assert worker.dirty == {} and worker.dirty_since is None


async def test_a_backfill_patient_s_determination_goes_to_the_backfill_lane_until_a_live_cause(
    worker,
):
    def admit_to(lane: str, key: bytes, number: int):
        record = Record(key, score(key, number), number, timestamp=int(time.time() * 1000))
        return worker._admit(worker.owned[PARTITION], PARTITION, lane, record)

    admit_to("backfill", BACKLOG, 0)
    admit_to("backfill", BACKLOG, 1)
    assert worker.dirty[BACKLOG].backfill and worker.live == set()  # never live, however recent
    admit_to(LIVE_LANE, BACKLOG, 2)
    admit_to("backfill", BACKLOG, 3)
    assert not worker.dirty[BACKLOG].backfill  # a live cause since its last decision

    [decided] = await worker._decide_dirty()
    assert not decided.backfill
    admit_to("backfill", BACKLOG, 4)
    [decided] = await worker._decide_dirty()
    assert decided.backfill


class Highwaters:
    """What the worker reads of its consumer here: the end each partition's last fetch told."""

    def __init__(self, ends: dict[TopicPartition, int]):
        self.ends = ends

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends.get(tp)


def records(key: bytes, numbers: range, age_s: float) -> list[Record]:
    stamp = int((time.time() - age_s) * 1000)
    return [Record(key, score(key, n), n, timestamp=stamp) for n in numbers]


async def test_a_live_batch_short_of_its_fetch_s_end_waits_for_the_rest_of_it(worker):
    tp = TopicPartition(worker.events_topic, PARTITION)
    worker.consumer = Highwaters({tp: 4})  # the fetch told 4 records; the batch holds 2
    await worker._consume({tp: records(LIVE, range(2), age_s=0)})

    assert worker.live == {LIVE} and worker._live_ready() == set()
    await worker._consume({tp: records(LIVE, range(2, 4), age_s=0)})
    assert worker._live_ready() == {LIVE}

    [decided] = await worker._decide_dirty(only=worker._live_ready())
    assert len(json.loads(decided.value)["evidence_event_ids"]) == 4  # one decision, on all 4
    assert worker.live == set() and worker.dirty == {}


async def test_caught_up_a_partition_with_records_waiting_keeps_its_patients_for_the_delay(
    worker,
):
    # A replay read in several fetches: records 4 s old, the whole lag under CAUGHT_UP_RECORDS.
    other = PARTITION + 1
    worker.owned[other] = PartitionState(next_offset=offsets(0), committed=offsets(0))
    short, whole = (
        TopicPartition(worker.events_topic, PARTITION),
        TopicPartition(worker.events_topic, other),
    )
    worker.consumer = Highwaters({short: 6, whole: 2})
    await worker._consume(
        {short: records(BACKLOG, range(3), age_s=4), whole: records(LIVE, range(2), age_s=4)}
    )

    assert worker.live == set()  # not live: read 4 s after they were written
    assert worker._pass_to_begin() == [LIVE]  # BACKLOG's partition has 3 records waiting
    worker._begin_pass(worker._pass_to_begin())
    assert [item.key for item in await worker._decide_slice()] == [LIVE]
    assert list(worker.dirty) == [BACKLOG] and worker.dirty_since is not None

    worker.dirty_since -= worker.settings.classifier_decision_delay_seconds  # waited the delay
    assert worker._pass_to_begin() == [BACKLOG]  # decided, even on part of its records


async def test_a_batch_that_reaches_its_fetch_s_end_catches_its_partition_up(worker):
    tp = TopicPartition(worker.events_topic, PARTITION)
    worker.consumer = Highwaters({tp: 5})
    await worker._consume({tp: records(BACKLOG, range(3), age_s=30)})
    assert worker._pass_to_begin() == []
    await worker._consume({tp: [Record(BACKLOG, score(BACKLOG, n), n) for n in (3, 4)]})
    assert worker._pass_to_begin() == [BACKLOG]
