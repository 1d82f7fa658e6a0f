"""The streaming classifier on the real broker: it must always agree with `painpath classify`.

Workers run as real `painpath classifier` processes in one consumer group, with a fixed
`CLASSIFIER_AS_OF` so that their determinations and the offline ones are made at one instant.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from bench.services import as_records
from painpath.simulate import simulate
from services.classifier.offline import expected_from_records
from services.classifier.policy import load_policy
from services.classifier.stream import GROUP
from shared import dead_letter
from shared.contract import ContractViolation, parse_event
from shared.kafka import group_lag
from shared.ports import free_port
from shared.topics import DETERMINATIONS, EVENTS, EVENTS_DLQ, Topic
from tests.conftest import ARTIFACTS, read_topic, remember_patient_ids

pytestmark = pytest.mark.integration

AS_OF = "2026-06-30T00:00:00+00:00"


def feed_lines(patients: int, seed: int) -> list[str]:
    """The simulated hospital feed as the JSON lines a producer would send."""
    return [
        line if isinstance(line, str) else json.dumps(line) for line in simulate(patients, seed)
    ]


class Workers:
    """`painpath classifier` processes against one test's topics."""

    def __init__(self, settings, endpoints):
        self.settings = settings
        self.env = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "DATABASE_URL": endpoints.database_url,
            "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
            "CLASSIFIER_AS_OF": AS_OF,
            "CLASSIFIER_SESSION_TIMEOUT_SECONDS": "6",
            "LOG_PSEUDONYM_KEY": "test-pseudonym-key",
            "LOG_LEVEL": "INFO",
        }
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self, state_dir, module: str = "painpath", **env: str) -> int:
        """A worker: `python -m <module> classifier` (another module: a test double)."""
        port = free_port()
        log = (ARTIFACTS / f"classifier-{port}.stderr.log").open("w")
        self.processes[port] = subprocess.Popen(
            [sys.executable, "-m", module, "classifier", "--port", str(port)],
            env=self.env | {"PAINPATH_STATE_DIR": str(state_dir)} | env,
            stdout=log,
            stderr=log,
        )
        return port

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for port, process in self.processes.items():
            while True:
                assert process.poll() is None, f"classifier on {port} exited: see test-artifacts"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "a classifier did not become ready"
                time.sleep(0.2)

    def metric_totals(self, name: str) -> dict[str, float]:
        """A Prometheus counter's samples by label set, summed over the running workers."""
        totals: dict[str, float] = defaultdict(float)
        for port in self.processes:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            for sample in text.splitlines():
                if sample.startswith(name + "{"):
                    labels, value = sample[len(name) + 1 :].split("} ")
                    totals[labels] += float(value)
        return totals

    def metric(self, port: int, name: str) -> float | None:
        """One worker's unlabelled sample `name`, or None when it has none."""
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for sample in text.splitlines():
            if sample.startswith(name + " "):
                return float(sample.split(" ")[1])
        return None

    def stop(self, port: int) -> int:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)

    def stop_all(self) -> None:
        for port in list(self.processes):
            self.stop(port)


@pytest.fixture
def workers(settings, endpoints, tmp_path):
    running = Workers(settings, endpoints)
    yield running
    running.stop_all()


async def produce(
    settings, records: list[tuple[bytes | None, bytes]], topic: Topic = EVENTS
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        name = topic.full_name(settings.kafka_topic_prefix)
        for key, value in records:
            await producer.send(name, value=value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until_consumed(
    settings, timeout: float = 240, topics: tuple[Topic, ...] = (EVENTS,)
) -> None:
    """Until the classifier group has committed every offset of its input topics."""
    group = f"{settings.kafka_topic_prefix}{GROUP}"
    deadline = time.monotonic() + timeout
    for topic in topics:
        while behind := await group_lag(settings, settings.kafka_bootstrap_servers, group, topic):
            assert behind > 0, "committed past the end: the end offsets are wrong"
            assert time.monotonic() < deadline, f"{behind} records of {topic.name} not consumed"
            await asyncio.sleep(0.5)


def reference(records: list[tuple[bytes | None, bytes]]) -> tuple[dict[str, dict], int]:
    """Each patient's expected determination (as JSON) and the expected dead letters."""
    expected, dead = expected_from_records(records, load_policy(), datetime.fromisoformat(AS_OF))
    return {p: d.model_dump(mode="json") for p, d in expected.items()}, dead


async def published(settings, expected_patients: int) -> dict[str, list[dict]]:
    records = await read_topic(settings, DETERMINATIONS, expected=expected_patients, timeout=30)
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_patient[record.key.decode()].append(json.loads(record.value))
    return by_patient


def hostile_records(
    rng: random.Random, records: list[tuple[bytes | None, bytes]], count: int
) -> list[tuple[bytes | None, bytes]]:
    """Poison of every kind the DLQ must take, none of which may stop the stream."""
    valid = [value for _, value in records if _valid(value)]
    kinds = []
    for number in range(count):
        event = json.loads(rng.choice(valid))
        key = event["data"]["patient_id"].encode()
        kind = number % 7
        if kind == 0:
            kinds.append((key, rng.randbytes(rng.randint(1, 300))))
        elif kind == 1:
            text = json.dumps(event)
            kinds.append((key, text[: rng.randint(1, len(text) - 1)].encode()))
        elif kind == 2:
            event["data"]["patient_id"] = 12345
            kinds.append((key, json.dumps(event).encode()))
        elif kind == 3:
            event["type"] = "pain.mood.recorded.v1"
            kinds.append((key, json.dumps(event).encode()))
        elif kind == 4:  # a conflicting duplicate: the same (source, id), other content
            event["data"]["unexpected"] = number
            event["time"] = "2020-01-01T00:00:00Z"
            kinds.append((key, json.dumps(event).encode()))
        elif kind == 5:
            kinds.append((b"not-the-patient", json.dumps(event).encode()))
        else:
            kinds.append((key, json.dumps(event).encode() + b" " * 200_000))  # huge but valid
    return kinds


async def test_streaming_agrees_with_classify_for_a_cohort_with_poison_interleaved(
    settings, workers, tmp_path
):
    records = as_records(feed_lines(patients=500, seed=11))
    rng = random.Random(5)
    for record in hostile_records(rng, records, 140):
        records.insert(rng.randrange(len(records)), record)
    expected, dead_letters = reference(records)
    workers.start(tmp_path / "w1")
    workers.start(tmp_path / "w2")
    workers.wait_ready()

    await produce(settings, records)
    await wait_until_consumed(settings)

    got = await published(settings, len(expected))
    assert len(expected) >= 500
    assert set(got) == set(expected)
    assert [p for p in expected if got[p][-1] != expected[p]] == []
    dead = await read_topic(settings, EVENTS_DLQ, expected=dead_letters, timeout=10)
    assert len(dead) == dead_letters >= 120
    for record in dead:
        headers = dict(record.headers)
        assert headers[dead_letter.REASON] and headers[dead_letter.FIELD]
        assert (
            headers[dead_letter.ORIGINAL_TOPIC]
            == EVENTS.full_name(settings.kafka_topic_prefix).encode()
        )

    counted = workers.metric_totals("painpath_classifier_events_total")
    assert counted['outcome="dead_letter"'] == dead_letters
    assert sum(counted.values()) == len(records)

    # Re-delivery of the whole input changes nothing: no second, different message.
    before = sum(len(messages) for messages in got.values())
    await produce(settings, records)
    await wait_until_consumed(settings)
    after = await published(settings, len(expected))
    assert sum(len(messages) for messages in after.values()) == before


async def test_stopping_one_of_two_workers_mid_stream_loses_and_duplicates_nothing(
    settings, workers, tmp_path
):
    records = as_records(feed_lines(patients=200, seed=23))
    expected, _ = reference(records)
    workers.start(tmp_path / "w1")
    leaving = workers.start(tmp_path / "w2")
    workers.wait_ready()

    half = len(records) // 2
    await produce(settings, records[:half])
    assert workers.stop(leaving) in (0, -signal.SIGTERM)
    await produce(settings, records[half:])
    await wait_until_consumed(settings)

    got = await published(settings, len(expected))
    assert {p: messages[-1] for p, messages in got.items()} == expected
    for messages in got.values():
        ids = [message["determination_id"] for message in messages]
        assert all(a != b for a, b in zip(ids, ids[1:], strict=False)), "a determination twice"


async def test_time_passing_alone_changes_a_determination_once(settings, workers, tmp_path):
    """A trial reaching its 28 days turns in_progress into failed with no new event."""
    reaches_minimum_in = timedelta(seconds=15)
    start = datetime.now(UTC) - timedelta(days=28) + reaches_minimum_in
    patient = "pt-stream-clock-01"

    def event(number: int, kind: str, at: datetime, **data) -> dict:
        return {
            "specversion": "1.0",
            "id": f"clock-{number}",
            "source": "urn:hospital:st-olaf:ehr",
            "type": f"pain.{kind}.v1",
            "time": at.isoformat(),
            "data": {"patient_id": patient, **data},
        }

    events = [
        event(1, "condition.recorded", start - timedelta(days=400), onset_date="2024-01-01"),
        event(2, "score.recorded", start - timedelta(days=1), score=8),
        event(
            3,
            "trial.started",
            start,
            trial_id="t1",
            drug="gabapentin",
            daily_dose=1200,
            dose_unit="mg",
        ),
        event(4, "score.recorded", start + timedelta(days=20), score=8),
    ]
    workers.start(tmp_path / "w1", CLASSIFIER_AS_OF="", CLASSIFIER_REEVALUATE_SECONDS="1")
    workers.wait_ready()
    remember_patient_ids(json.dumps(events).encode())

    await produce(settings, [(patient.encode(), json.dumps(e).encode()) for e in events])

    # Events arriving together are decided together: one determination for the events (more if
    # they came in several fetches), then exactly one more as the trial matures.
    def outcomes(records) -> list[list[str]]:
        return [[t["outcome"] for t in json.loads(r.value)["trials"]] for r in records]

    decided = await read_topic(settings, DETERMINATIONS, expected=2, timeout=60)
    deadline = asyncio.get_running_loop().time() + 60
    while outcomes(decided)[-1:] != [["failed"]]:
        assert asyncio.get_running_loop().time() < deadline, outcomes(decided)
        decided = await read_topic(settings, DETERMINATIONS, expected=len(decided) + 1, timeout=5)
    await asyncio.sleep(4)  # several more ticks of the timer
    settled = await read_topic(settings, DETERMINATIONS, expected=len(decided), timeout=5)

    assert outcomes(settled)[-2:] == [["in_progress"], ["failed"]]
    assert len(settled) == len(decided) <= len(events) + 1
    ids = [json.loads(r.value)["determination_id"] for r in settled]
    assert len(set(ids)) == len(ids), "a determination twice"


def _valid(value: str | bytes) -> bool:
    try:
        parse_event(value)
    except ContractViolation:
        return False
    return True


async def test_a_patient_whose_decision_raises_is_set_aside_and_the_worker_goes_on(
    settings, workers, tmp_path
):
    """The bulkhead: the poison patient gets dead letters naming its events, every other patient
    its determination, the offsets advance and the worker stays up and ready; the poison is
    decided again on a new event or a restart, never by the time-passing re-evaluation."""
    from tests.integration.poisoned_classifier import POISON_PREFIX

    poison = f"{POISON_PREFIX}000001"

    def poison_event(number: int) -> tuple[bytes, bytes]:
        event = {
            "specversion": "1.0",
            "id": f"poison-{number}",
            "source": "urn:hospital:st-olaf:ehr",
            "type": "pain.score.recorded.v1",
            "time": f"2026-0{number + 1}-01T00:00:00Z",
            "data": {"patient_id": poison, "score": 7},
        }
        return poison.encode(), json.dumps(event).encode()

    good = as_records(feed_lines(patients=40, seed=37))
    expected, bad = reference(good)
    records = list(good)
    for number, position in enumerate(sorted(random.Random(3).sample(range(len(good)), 3))):
        records.insert(position + number, poison_event(number))
    remember_patient_ids(poison_event(0)[1])
    double = "tests.integration.poisoned_classifier"
    env = {"CLASSIFIER_REEVALUATE_SECONDS": "1"}
    port = workers.start(tmp_path / "w1", module=double, **env)
    workers.wait_ready()

    await produce(settings, records)
    await wait_until_consumed(settings)  # the poison holds back no offset

    got = await published(settings, len(expected))
    assert {p: messages[-1] for p, messages in got.items()} == expected  # none for the poison

    def quarantine_letters(dead) -> list[dict]:
        """The quarantine dead letters (the simulated feed has bad records of its own)."""
        letters = []
        for record in dead:
            headers = dict(record.headers)
            if headers[dead_letter.KIND] != b"quarantine":
                continue
            assert record.key == poison.encode()
            assert headers[dead_letter.FIELD] == b"(patient)"
            assert headers[dead_letter.REASON].startswith(b"(patient): deciding raised Overflow")
            assert headers[dead_letter.ORIGINAL_TOPIC] == workers_topic
            letters.append(json.loads(record.value))
        return letters

    workers_topic = EVENTS.full_name(settings.kafka_topic_prefix).encode()
    dead = quarantine_letters(await read_topic(settings, EVENTS_DLQ, expected=bad + 1))
    # Decided once per pass that found a new event of it: once, or more if its three events
    # came in several fetches; the last names them all.
    assert 1 <= len(dead) <= 3
    assert [ref["id"] for ref in dead[-1]["events"]] == ["poison-0", "poison-1", "poison-2"]
    assert dead[-1]["error"] == "OverflowError"
    assert dead[-1]["raised_in"] == "__main__.evaluate"  # the double's; a rule's in real life
    counted = workers.metric_totals("painpath_classifier_quarantined_patients_total")
    assert counted == {'error="OverflowError"': len(dead)}
    assert workers.metric(port, "painpath_classifier_patients_in_quarantine") == 1
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"]["quarantined_patients"] == 1

    await asyncio.sleep(3.5)  # three re-evaluations of every patient: the poison is left alone
    again = await read_topic(settings, EVENTS_DLQ, expected=bad + len(dead), timeout=3)
    assert len(quarantine_letters(again)) == len(dead)

    await produce(settings, [poison_event(3)])  # a new event: decided again (and set aside)
    await wait_until_consumed(settings)
    dead = quarantine_letters(await read_topic(settings, EVENTS_DLQ, expected=bad + len(dead) + 1))
    assert len(dead[-1]["events"]) == 4

    # A restart (as with a new policy) rebuilds the state and decides every patient again.
    assert workers.stop(port) in (0, -signal.SIGTERM)
    port = workers.start(tmp_path / "w1", module=double, **env)
    workers.wait_ready()
    deadline = time.monotonic() + 30
    while len(after := quarantine_letters(await read_topic(settings, EVENTS_DLQ, 0))) <= len(dead):
        assert time.monotonic() < deadline, "the restored poison patient was not decided again"
        await asyncio.sleep(0.5)
    assert len(after[-1]["events"]) == 4
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    assert all(process.poll() is None for process in workers.processes.values())
    after_restart = await published(settings, len(expected))
    assert {p: messages[-1] for p, messages in after_restart.items()} == expected
    log = (ARTIFACTS / f"classifier-{port}.stderr.log").read_text()
    assert '"patient_quarantined"' in log and poison not in log
