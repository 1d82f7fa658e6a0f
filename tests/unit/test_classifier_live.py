"""Live events during a backlog: their patients are decided at once, the backlog's wait."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

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
