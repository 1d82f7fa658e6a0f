"""The batch consumer's loop (a stand-in Kafka consumer) and the reading of records."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from services.coordinator.consumer import MAX_RECORDS, BatchConsumer, Outcome
from services.coordinator.service import _read_determination, _read_event
from shared.contract import Status
from shared.contract.records import Rejection, partition_of, read_record
from shared.progress import Progress
from tests.unit.coordinator.coordinator_samples import determination

TP0, TP1 = TopicPartition("dets", 0), TopicPartition("dets", 1)


def record(
    partition: int, offset: int, value: bytes = b"{}", key: bytes | None = b"k"
) -> ConsumerRecord:
    return ConsumerRecord("dets", partition, offset, 0, 0, key, value, None, 0, 0, [])


class Kafka:
    """Hands out the batches given, then nothing; keeps the commits."""

    def __init__(self, *batches: dict):
        self.batches = list(batches)
        self.commits: list[dict] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict) -> None:
        self.commits.append(offsets)

    def assignment(self):
        return {TP0, TP1}


async def run_until(consumer: BatchConsumer, done) -> None:
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(10):
        while not done():
            await asyncio.sleep(0.01)
    consumer.stop()
    await task


async def test_a_batch_is_applied_in_one_call_in_partition_order_then_committed_per_partition():
    batch = {TP0: [record(0, 5), record(0, 6)], TP1: [record(1, 9)]}
    kafka = Kafka(batch)
    calls: list[list[tuple[int, int]]] = []
    seen: list[Outcome] = []

    async def apply(records):
        calls.append([(r.partition, r.offset) for r in records])
        assert not kafka.commits, "offsets committed before the batch was applied"
        return [Outcome.APPLIED, Outcome.ALREADY_APPLIED, Outcome.UNREADABLE]

    consumer = BatchConsumer("d", kafka, apply, Progress(60), lambda o, s: seen.append(o))
    await run_until(consumer, lambda: kafka.commits)

    assert calls == [[(0, 5), (0, 6), (1, 9)]]
    assert kafka.commits == [{TP0: 7, TP1: 10}]
    assert seen == [Outcome.APPLIED, Outcome.ALREADY_APPLIED, Outcome.UNREADABLE]


async def test_a_database_outage_retries_the_whole_batch_with_backoff_and_commits_once():
    kafka = Kafka({TP0: [record(0, 0), record(0, 1)]})
    attempts = []

    async def apply(records):
        attempts.append(len(records))
        if len(attempts) < 3:
            raise asyncpg.CannotConnectNowError("starting up")
        return [Outcome.APPLIED] * len(records)

    consumer = BatchConsumer("d", kafka, apply, Progress(60))
    await run_until(consumer, lambda: kafka.commits)

    assert attempts == [2, 2, 2]
    assert consumer.retries == 2 and consumer.database_ok
    assert kafka.commits == [{TP0: 2}]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError("cannot release the connection"),  # the pool lost it
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ],
    ids=["pool-release", "admin-shutdown"],
)
async def test_what_asyncpg_raises_when_postgresql_stops_is_waited_out_as_an_outage(error):
    """The timeline consumer died for good on a PostgreSQL stop (issue 13, item 2): asyncpg
    raised InternalClientError releasing a connection to the pool."""
    kafka = Kafka({TP0: [record(0, 0)]})
    attempts = []

    async def apply(records):
        attempts.append(len(records))
        if len(attempts) < 2:
            raise error
        return [Outcome.APPLIED]

    consumer = BatchConsumer("events", kafka, apply, Progress(60))
    await run_until(consumer, lambda: kafka.commits)

    assert attempts == [1, 1] and consumer.retries == 1 and consumer.database_ok
    assert kafka.commits == [{TP0: 1}]


async def test_a_commit_the_broker_refuses_is_logged_and_the_loop_goes_on():
    kafka = Kafka({TP0: [record(0, 0)]}, {TP0: [record(0, 1)]})
    refused = []

    async def commit(offsets):
        if not refused:
            refused.append(offsets)
            raise CommitFailedError("rebalanced")
        kafka.commits.append(offsets)

    kafka.commit = commit

    async def apply(records):
        return [Outcome.APPLIED] * len(records)

    consumer = BatchConsumer("d", kafka, apply, Progress(60))
    await run_until(consumer, lambda: kafka.commits)

    assert refused == [{TP0: 1}] and kafka.commits == [{TP0: 2}]


async def test_a_stop_during_an_outage_commits_nothing_of_the_batch_not_applied():
    kafka = Kafka({TP0: [record(0, 0)]})
    failing = asyncio.Event()

    async def apply(records):
        failing.set()
        raise OSError("connection refused")

    consumer = BatchConsumer("d", kafka, apply, Progress(60))
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(failing.wait(), 5)
    consumer.stop()
    await asyncio.wait_for(task, 5)

    assert kafka.commits == [] and not consumer.database_ok


def test_a_determination_is_read_with_what_identifies_it():
    found = determination(Status.RESPONDING)

    read = _read_determination(record(0, 3, found.model_dump_json().encode()))

    assert read is not None
    model, received = read
    assert model == found
    assert received.key == (found.patient_id, found.determination_id, found.as_of)
    assert (received.partition, received.offset) == (0, 3)
    assert json.loads(received.body)["determination_id"] == found.determination_id


def test_unreadable_determinations_are_none():
    valid = json.loads(determination(Status.RESPONDING).model_dump_json())
    for value in (
        b"{not json",
        b"[1, 2]",
        json.dumps({"patient_id": "x"}).encode(),
        json.dumps(valid | {"status": "bogus"}).encode(),
        json.dumps(valid | {"as_of": "yesterday"}).encode(),
        b"[" * 100_000,
    ):
        assert _read_determination(record(0, 1, value)) is None


def test_an_event_is_read_with_its_idempotency_key_and_its_text_as_received():
    text = json.dumps(
        {
            "specversion": "1.0",
            "id": "ev-1",
            "source": "urn:hospital:st-olaf:ehr",
            "type": "pain.score.recorded.v1",
            "time": "2026-01-01T09:00:00Z",
            "data": {"patient_id": "pt-unit-01", "score": 4},
        },
        indent=1,
    )

    read = _read_event(record(0, 0, text.encode(), b"pt-unit-01"), None)

    assert read is not None and read.key == ("pt-unit-01", "urn:hospital:st-olaf:ehr", "ev-1")
    assert read.body == text and read.patient_id == "pt-unit-01"
    assert _read_event(record(0, 1, b'{"id": 1}', b"pt-unit-01"), None) is None


def test_the_timeline_refuses_exactly_what_the_classifier_refuses():
    """Missing key, wrong key, wrong partition, too large: refused by the one reading of a
    record both services use (`shared.contract.records.read_record`)."""
    patient = b"pt-unit-02"
    event = {
        "specversion": "1.0",
        "id": "ev-2",
        "source": "urn:hospital:st-olaf:ehr",
        "type": "pain.score.recorded.v1",
        "time": "2026-01-01T09:00:00Z",
        "data": {"patient_id": patient.decode(), "score": 4},
    }
    value = json.dumps(event).encode()
    home = partition_of(patient, 12)
    large = json.dumps(event | {"padding": "x" * 600 * 1024}).encode()
    cases = {
        "missing key": record(home, 0, value, None),
        "wrong key": record(home, 0, value, b"pt-unit-03"),
        "wrong partition": record((home + 1) % 12, 0, value, patient),
        "600 KiB": record(home, 0, large, patient),
    }
    for name, refused in cases.items():
        classifier = read_record(refused.key, refused.value, refused.partition, 12)
        assert isinstance(classifier, Rejection), name
        assert _read_event(refused, 12) is None, name
    assert _read_event(record(home, 0, value, patient), 12) is not None


class Held(Kafka):
    """Hands out the batches given, each once a test lets it go."""

    def __init__(self, *batches: dict):
        super().__init__(*batches)
        self.go = asyncio.Event()

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        self.asked = max_records
        if self.batches:
            await self.go.wait()
        return await super().getmany(timeout_ms, max_records)


async def test_a_backfill_consumer_starts_no_batch_while_the_live_one_has_a_batch_in_hand():
    live_kafka, backfill_kafka = Kafka({TP0: [record(0, 0)]}), Held({TP1: [record(1, 0)]})
    order: list[str] = []
    live_applying, live_may_finish = asyncio.Event(), asyncio.Event()

    async def apply_live(records):
        live_applying.set()
        await live_may_finish.wait()
        order.append("live")
        return [Outcome.APPLIED]

    async def apply_backfill(records):
        order.append("backfill")
        return [Outcome.APPLIED]

    live = BatchConsumer("determinations", live_kafka, apply_live, Progress(60))
    backfill = BatchConsumer(
        "determinations_backfill",
        backfill_kafka,
        apply_backfill,
        Progress(0),
        max_records=50,
        behind=live,
    )
    tasks = [asyncio.create_task(c.run()) for c in (live, backfill)]
    await asyncio.wait_for(live_applying.wait(), 5)
    assert live.busy
    backfill_kafka.go.set()  # the backfill's records arrive while the live batch is applied
    async with asyncio.timeout(5):
        while not backfill.waiting_behind:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    held = (order[:], backfill.busy, backfill_kafka.commits[:])
    live_may_finish.set()
    async with asyncio.timeout(5):
        while not backfill_kafka.commits:
            await asyncio.sleep(0.01)
    for consumer in (live, backfill):
        consumer.stop()
    await asyncio.gather(*tasks)

    assert held == ([], True, [])
    assert order == ["live", "backfill"]
    assert not live.busy and not backfill.waiting_behind
    assert backfill_kafka.asked == 50


async def test_a_stop_while_waiting_behind_the_live_consumer_applies_and_commits_nothing():
    live_kafka, backfill_kafka = Kafka({TP0: [record(0, 0)]}), Kafka({TP1: [record(1, 0)]})
    live_applying = asyncio.Event()
    applied_backfill = []

    async def apply_live(records):
        live_applying.set()
        await asyncio.Event().wait()  # never finishes

    async def apply_backfill(records):
        applied_backfill.append(records)
        return [Outcome.APPLIED]

    live = BatchConsumer("determinations", live_kafka, apply_live, Progress(60))
    backfill = BatchConsumer("b", backfill_kafka, apply_backfill, Progress(60), behind=live)
    live_task = asyncio.create_task(live.run())
    await asyncio.wait_for(live_applying.wait(), 5)
    backfill_task = asyncio.create_task(backfill.run())
    async with asyncio.timeout(5):
        while not backfill.waiting_behind:
            await asyncio.sleep(0.01)
    backfill.stop()
    await asyncio.wait_for(backfill_task, 5)
    live_task.cancel()
    await asyncio.gather(live_task, return_exceptions=True)

    assert applied_backfill == [] and backfill_kafka.commits == []
    assert not backfill.busy and not backfill.waiting_behind


def test_readiness_says_why_a_consumer_is_not_ready():
    now = [0.0]
    progress = Progress(60, clock=lambda: now[0])
    consumer = BatchConsumer("determinations_backfill", Kafka(), None, progress)
    assert consumer.readiness(0) == "ok"

    now[0] = 61.0
    assert consumer.readiness(0) == "ok"  # nothing waits
    assert consumer.readiness(5) == "failing: 5 records wait, none processed for 61 s"
    consumer.waiting_behind = True  # held back by the live consumer, which is progressing
    assert consumer.readiness(5) == "ok"
    consumer.waiting_behind = False
    consumer.database_ok = False
    assert consumer.readiness(0) == "failing: waiting for the database"

    unassigned = Kafka()
    unassigned.assignment = set
    assert BatchConsumer("d", unassigned, None, Progress(60)).readiness(0) == (
        "failing: no partitions assigned"
    )


async def test_behind_an_active_live_consumer_a_backfill_batch_is_cut_to_its_slice():
    now = [100.0]

    def clock() -> float:
        return now[0]

    applied_sizes: list[int] = []

    async def apply_backfill(records):
        applied_sizes.append(len(records))
        now[0] += 0.01 * len(records)  # 10 ms a record
        return [Outcome.APPLIED] * len(records)

    live = BatchConsumer("determinations", Kafka(), None, Progress(60), clock=clock)
    backfill = BatchConsumer(
        "determinations_backfill",
        Kafka({TP1: [record(1, n) for n in range(50)]}),
        apply_backfill,
        Progress(60),
        max_records=50,
        behind=live,
        slice_seconds=0.05,
        clock=clock,
    )
    assert backfill.batch_size() == 50  # nothing measured yet
    await run_until(backfill, lambda: applied_sizes)
    assert backfill.seconds_per_record == pytest.approx(0.01)
    assert backfill.batch_size() == 50  # the live consumer has fetched nothing

    live.last_records_at = now[0] - 0.5  # live records fetched half a second ago: active
    assert backfill.batch_size() == 5  # 50 ms at 10 ms a record

    backfill._measured(1, 1.0)  # a slow batch (e.g. waiting for the planning lock)
    assert backfill.batch_size() == 1  # one at least

    now[0] += 1.0  # the live consumer quiet for over a second: whole batches again
    assert backfill.batch_size() == 50
    live_alone = BatchConsumer("determinations", Kafka(), None, Progress(60), clock=clock)
    live_alone._measured(1, 1.0)
    assert live_alone.batch_size() == MAX_RECORDS  # a consumer behind nothing is never cut


def test_behind_an_active_live_consumer_a_backfill_batch_is_followed_by_its_share_of_rest():
    now = [100.0]
    live = BatchConsumer("determinations", Kafka(), None, Progress(60), clock=lambda: now[0])

    def behind(share: float) -> BatchConsumer:
        return BatchConsumer(
            "b", Kafka(), None, Progress(60), behind=live, backlog_share=share, clock=lambda: now[0]
        )

    half, quarter, whole = behind(0.5), behind(0.25), behind(1.0)
    assert half.pause_after(0.04) == 0.0  # the live consumer has fetched nothing: no rest
    live.last_records_at = now[0] - 0.5
    assert half.pause_after(0.04) == pytest.approx(0.04)  # as long again
    assert quarter.pause_after(0.04) == pytest.approx(0.12)
    assert whole.pause_after(0.04) == 0.0
    assert BatchConsumer("d", Kafka(), None, Progress(60)).pause_after(1.0) == 0.0
    now[0] += 1.0  # quiet for over a second
    assert half.pause_after(0.04) == 0.0
