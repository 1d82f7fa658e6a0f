"""The classifier's bulkhead: a patient whose decision raises is set aside, and nothing else stops.

The worker's decision step (`Classifier._decide_dirty`) needs no broker: the partitions' state is
built here, sends go to a recording producer, and a rule is made to raise for one patient.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import pytest
from structlog.testing import capture_logs

import services.classifier.decisions as decisions
import services.classifier.stream as stream
from services.classifier.dead_letters import DEAD_LETTER_BYTES, quarantine_documents
from services.classifier.history import PatientHistory
from services.classifier.partition import LIVE, offsets
from services.classifier.policy import load_policy
from services.classifier.records import DecisionFailure
from services.classifier.stream import Classifier, PartitionState
from shared import dead_letter
from shared.contract import parse_event
from shared.settings import Settings
from shared.stack import Endpoints
from tests.samples import valid_event

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
POISON = b"pt-poison-000001"
GOOD = b"pt-good-000002"
PARTITION = 3


@dataclass
class Sent:
    topic: str
    value: bytes
    key: bytes | None
    partition: int | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class RecordingProducer:
    sent: list[Sent] = field(default_factory=list)

    async def send(self, topic, value, key=None, partition=None, headers=None):
        self.sent.append(Sent(topic, value, key, partition, headers))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


@dataclass
class Record:
    """What `_admit` reads of an aiokafka ConsumerRecord."""

    key: bytes
    value: bytes
    offset: int
    topic: str = "pain.events.v1"
    partition: int = PARTITION
    headers: tuple = ()
    timestamp: int | None = None


def score(patient: bytes, number: int) -> bytes:
    event = valid_event(
        "pain.score.recorded.v1",
        id=f"e-{number}",
        patient_id=patient.decode(),
        score=6,
        time=f"2026-0{1 + number % 5}-01T00:00:00Z",
    )
    return json.dumps(event).encode()


def admit(classifier: Classifier, record: Record):
    return classifier._admit(classifier.owned[PARTITION], PARTITION, LIVE, record)


def brokerless() -> Endpoints:
    """Endpoints no client is ever started against (the sends go to a RecordingProducer)."""
    return Endpoints(
        bootstrap_servers="localhost:1",
        database_url="postgresql://unused",
        api_keys=[],
        coordinator_tokens=[],
        pseudonym_key=None,
        local=False,
    )


@pytest.fixture
def classifier(monkeypatch) -> Classifier:
    """A worker owning one partition with a poison and a good patient, two events each, both
    dirty; `evaluate` raises OverflowError for the poison patient."""
    worker = Classifier(Settings(), brokerless(), load_policy(), clock=lambda: AS_OF)
    worker.producer = RecordingProducer()
    worker.owned[PARTITION] = PartitionState(next_offset=offsets(0), committed=offsets(0))
    offset = 0
    for patient in (POISON, GOOD):
        for number in range(2):
            assert admit(worker, Record(patient, score(patient, number), offset)) is not None
            offset += 1
    worker.owned[PARTITION].next_offset[LIVE] = offset
    real = decisions.evaluate

    def evaluate(events, policy, as_of):
        events = list(events)
        if events[0].data.patient_id == POISON.decode():
            return datetime(1, 1, 1) - timedelta(days=1)  # raises OverflowError, as a rule might
        return real(events, policy, as_of)

    monkeypatch.setattr(decisions, "evaluate", evaluate)
    return worker


async def dead_letters(worker: Classifier) -> list[Sent]:
    """The dead letters sent so far (once the queued sends ran)."""
    await worker._flush()
    return [sent for sent in worker.producer.sent if sent.topic == worker.dlq_topic]


async def test_a_patient_whose_decision_raises_is_set_aside_and_the_others_are_decided(
    classifier,
):
    with capture_logs() as logs:
        decided = await classifier._decide_dirty()
    await classifier._flush()

    assert [item.key for item in decided] == [GOOD]
    assert classifier.dirty == {}
    assert classifier.owned[PARTITION].quarantined == {POISON}
    registry = classifier.metrics.registry
    assert (
        registry.get_sample_value(
            "painpath_classifier_quarantined_patients_total", {"error": "OverflowError"}
        )
        == 1
    )
    assert registry.get_sample_value("painpath_classifier_patients_in_quarantine") == 1
    assert registry.get_sample_value("painpath_classifier_decided_patients_total") == 1
    [line] = [line for line in logs if line["event"] == "patient_quarantined"]
    assert line == {
        "event": "patient_quarantined",
        "log_level": "error",
        "error": "OverflowError",
        "raised_in": "tests.unit.test_quarantine.evaluate",
        "partition": PARTITION,
        "events": 2,
    }


async def test_the_dead_letter_of_a_patient_set_aside_lists_its_events_and_says_why(classifier):
    await classifier._decide_dirty()

    [sent] = await dead_letters(classifier)
    headers = dict(sent.headers)
    assert sent.key == POISON
    assert headers[dead_letter.KIND] == b"quarantine"
    assert headers[dead_letter.FIELD] == b"(patient)"
    assert headers[dead_letter.REASON] == (
        b"(patient): deciding raised OverflowError in tests.unit.test_quarantine.evaluate;"
        b" set aside until a new event or a new policy"
    )
    assert headers[dead_letter.ORIGINAL_TOPIC] == classifier.events_topic.encode()
    assert headers[dead_letter.ORIGINAL_PARTITION] == str(PARTITION).encode()
    assert headers[dead_letter.ORIGINAL_OFFSET] == b"4"  # the position: its events lie before
    assert datetime.fromisoformat(headers[dead_letter.FAILED_AT].decode()).tzinfo is not None
    document = json.loads(sent.value)
    assert document == {
        "kind": "quarantine",
        "error": "OverflowError",
        "raised_in": "tests.unit.test_quarantine.evaluate",
        "policy": "default-v1",
        "as_of": AS_OF.isoformat(),
        "event_count": 2,
        "part": 1,
        "parts": 1,
        "events": [
            {"source": "urn:hospital:st-olaf:ehr", "id": "e-0"},
            {"source": "urn:hospital:st-olaf:ehr", "id": "e-1"},
        ],
    }
    assert POISON.decode() not in sent.value.decode()  # the key names the patient, not the value
    counted = classifier.metrics.registry.get_sample_value
    assert counted("painpath_classifier_dead_letters_total", {"kind": "quarantine"}) == 1
    # A quarantine is not an input record: the events' outcomes still add up to the records.
    assert counted("painpath_classifier_events_total", {"outcome": "dead_letter"}) == 0


async def test_a_patient_set_aside_does_not_hold_back_its_partitions_offsets(classifier):
    await classifier._decide_dirty()
    classifier.owned[PARTITION].checkpointed = offsets(4)  # as a checkpoint after the pass

    assert classifier._offsets(decided_only=True) == {
        stream.TopicPartition(classifier.events_topic, PARTITION): 4
    }


async def test_time_passing_does_not_retry_a_patient_set_aside(classifier):
    await classifier._decide_dirty()
    classifier._mark_all_dirty()

    assert list(classifier.dirty) == [GOOD]
    await classifier._decide_dirty()
    assert len(await dead_letters(classifier)) == 1  # no dead letter at every re-evaluation


async def test_a_new_event_for_a_patient_set_aside_decides_it_again(classifier):
    await classifier._decide_dirty()
    registry = classifier.metrics.registry

    admit(classifier, Record(POISON, score(POISON, 1), 4))  # a duplicate: still set aside
    assert classifier.owned[PARTITION].quarantined == {POISON}
    admit(classifier, Record(POISON, score(POISON, 2), 5))  # a new event: decided again
    assert classifier.owned[PARTITION].quarantined == set()
    assert registry.get_sample_value("painpath_classifier_patients_in_quarantine") == 0
    assert list(classifier.dirty) == [POISON]

    classifier.owned[PARTITION].next_offset[LIVE] = 6
    await classifier._decide_dirty()  # still raises: set aside again, with all three events
    *_, again = await dead_letters(classifier)
    assert json.loads(again.value)["event_count"] == 3
    assert dict(again.headers)[dead_letter.ORIGINAL_OFFSET] == b"6"
    assert registry.get_sample_value("painpath_classifier_patients_in_quarantine") == 1
    assert (
        registry.get_sample_value(
            "painpath_classifier_quarantined_patients_total", {"error": "OverflowError"}
        )
        == 2
    )


async def test_a_revoked_partition_takes_its_patients_set_aside_along(classifier):
    await classifier._decide_dirty()
    classifier._stopping = True  # no commit: there is no broker here
    await classifier.on_revoked({stream.TopicPartition(classifier.events_topic, PARTITION)})

    assert classifier.quarantined_count() == 0
    registry = classifier.metrics.registry
    assert registry.get_sample_value("painpath_classifier_patients_in_quarantine") == 0


async def test_an_unreadable_history_is_set_aside_too(classifier, monkeypatch):
    """A contract change can make an admitted event unreadable when it is parsed again."""
    history = classifier.owned[PARTITION].patients[GOOD]
    history.forget_parsed()
    history.raw[next(iter(history.raw))] = "{not json"
    classifier._mark_dirty(GOOD, PARTITION, None, None)

    assert await classifier._decide_dirty() == []
    [good] = [sent for sent in await dead_letters(classifier) if sent.key == GOOD]
    assert json.loads(good.value)["error"] == "ContractViolation"


def test_a_long_history_s_dead_letter_comes_in_parts_under_the_size_limit():
    keys = [f"urn:hospital:x\x1fevent-{number:06d}" for number in range(40_000)]
    failure = DecisionFailure("OverflowError", "services.classifier.pain_duration.utc_date")

    documents = quarantine_documents(keys, failure, "default-v1", AS_OF)

    assert len(documents) > 1
    assert all(len(document) <= DEAD_LETTER_BYTES + 1024 for document in documents)
    parsed = [json.loads(document) for document in documents]
    assert [d["part"] for d in parsed] == list(range(1, len(documents) + 1))
    assert {d["parts"] for d in parsed} == {len(documents)}
    ids = [ref["id"] for d in parsed for ref in d["events"]]
    assert ids == [key.split("\x1f")[1] for key in keys]


def test_the_failure_names_the_rule_that_raised_not_the_library_function():
    from services.classifier.pain_duration import utc_date

    beyond = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))
    with pytest.raises(OverflowError) as raised:
        utc_date(beyond)

    failure = DecisionFailure.of(raised.value)
    assert failure == DecisionFailure("OverflowError", "services.classifier.pain_duration.utc_date")


def test_a_history_can_hold_an_event_past_the_contract_s_bounds_and_evaluate_fails_on_it():
    """Why the bulkhead exists: an event the contract once let through (year 1 at +23:59)."""
    good = parse_event(score(GOOD, 1))
    beyond = good.model_copy(
        update={"time": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))}
    )
    history = PatientHistory.keeping_parsed()  # the parsed event, not its stand-in text, decides
    history.admit(beyond, "{}")
    from services.classifier.offline import _decide

    failure = _decide(history, load_policy(), AS_OF)
    assert isinstance(failure, DecisionFailure)
    assert failure.error == "OverflowError"
    assert failure.raised_in.startswith("services.classifier.")
