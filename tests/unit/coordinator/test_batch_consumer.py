"""The batch consumer's loop (a stand-in Kafka consumer) and the reading of records."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from services.coordinator.consumer import BatchConsumer, Outcome
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
