"""What the fault scenarios share: running services as processes, feeding them, and the offline
references their results are compared with."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer

from services.classifier.history import Admission, PatientHistory
from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from services.coordinator.care_plan import (
    OPEN_STATES,
    ExistingTask,
    TaskState,
    plan_for,
    reconcile,
)
from services.coordinator.templates import load_templates
from shared.contract import ContractViolation, Determination, parse_event
from shared.contract.records import Rejection, read_record
from shared.ports import free_port
from shared.topics import DETERMINATIONS
from tests.conftest import ARTIFACTS, SENT_PATIENT_IDS
from tests.integration.test_classifier_stream import AS_OF, Workers, as_records, feed_lines

Record = tuple[bytes | None, bytes]


def remember_keys(records: Iterable[Record]) -> None:
    """The patient ids sent, for the end-of-run search of the logs (see tests/conftest.py)."""
    for key, _ in records:
        if key and len(key) >= 6:
            SENT_PATIENT_IDS.add(key.decode(errors="replace"))


# -- the offline reference of the classifier -------------------------------------------------


@dataclass(frozen=True)
class Offline:
    """What the stream must publish for some records, decided offline in the same order."""

    final: dict[str, dict]  # each patient's last determination (model_dump, json mode)
    sequences: dict[str, list[str]]  # each patient's determination ids, as published
    admitted: int  # records admitted as new events
    duplicates: int  # records that repeat an admitted event (same content)
    dead: list[int]  # indexes of the records that must become dead letters


def offline(records: list[Record]) -> Offline:
    """Replays the classifier's per-record logic without Kafka: admission, then a determination
    published whenever its id changes. Costs ~0.7 ms per admitted event."""
    policy, as_of = load_policy(), datetime.fromisoformat(AS_OF)
    histories: dict[str, PatientHistory] = {}
    last: dict[str, Determination] = {}
    sequences: dict[str, list[str]] = defaultdict(list)
    admitted = duplicates = 0
    dead = []
    for index, (key, value) in enumerate(records):
        read = read_record(key, value)
        if isinstance(read, Rejection):
            dead.append(index)
            continue
        event, text = read
        history = histories.setdefault(event.patient_id, PatientHistory())
        admission = history.admit(event, text)
        if admission is Admission.CONFLICT:
            dead.append(index)
            continue
        if admission is Admission.DUPLICATE:
            duplicates += 1
            continue
        admitted += 1
        determination = evaluate(history.events, policy, as_of)
        last[event.patient_id] = determination
        sequence = sequences[event.patient_id]
        if not sequence or sequence[-1] != determination.determination_id:
            sequence.append(determination.determination_id)
    final = {patient: d.model_dump(mode="json") for patient, d in last.items()}
    return Offline(final, dict(sequences), admitted, duplicates, dead)


@functools.lru_cache(maxsize=2)
def cohort(patients: int, seed: int) -> tuple[list[Record], Offline]:
    """A simulated feed as records keyed by patient, and its offline reference (cached: two
    scenarios share one feed)."""
    records = as_records(feed_lines(patients, seed))
    return records, offline(records)


def compare_determinations(published: dict[str, list[dict]], reference: Offline) -> dict[str, int]:
    """Published determinations (by patient, in topic order) against the reference.

    - lost: patients whose last published determination is not the reference's (or missing);
    - duplicated: a determination published again right after itself (same id, consecutively);
    - republished: messages that are not a subsequence of the reference's sequence (a
      re-publication of an earlier determination after a crash, e.g. A B C B C), counted as
      published minus matched;
    - missing_intermediate: reference determinations never published (a later one was): the
      stream decides the events of a batch together, so it may skip these by design.
    """
    lost = sum(
        1
        for patient, expected in reference.final.items()
        if not published.get(patient) or published[patient][-1] != expected
    )
    unexpected_patients = len(set(published) - set(reference.final))
    duplicated = republished = missing = 0
    for patient, messages in published.items():
        ids = [message["determination_id"] for message in messages]
        duplicated += sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)
        expected = reference.sequences.get(patient, [])
        matched = position = 0
        for determination_id in ids:  # in order, each at or after the previous one's place
            try:
                found = expected.index(determination_id, position)
            except ValueError:
                continue  # not in the rest of the reference: a re-publication
            matched += 1
            position = found + 1
        republished += len(ids) - matched
        missing += len(expected) - matched
    return {
        "patients": len(reference.final),
        "determinations_published": sum(len(m) for m in published.values()),
        "determinations_expected": sum(len(s) for s in reference.sequences.values()),
        "lost": lost + unexpected_patients,
        "duplicated": duplicated,
        "republished": republished,
        "missing_intermediate": missing,
    }


# -- classifier workers ------------------------------------------------------------------------


class FaultWorkers(Workers):
    """`painpath classifier` processes, which a scenario may also kill."""

    def __init__(self, settings, endpoints):
        super().__init__(settings, endpoints)
        self.logs: dict[int, Path] = {}

    def start(self, state_dir, **env: str) -> int:
        port = super().start(state_dir, **env)
        self.logs[port] = ARTIFACTS / f"classifier-{port}.stderr.log"
        return port

    def kill(self, port: int) -> None:
        """SIGKILL: no shutdown, no last commit, no flush."""
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def wait_ready_one(self, port: int, timeout: float = 90) -> float:
        """Seconds until this worker answers ready."""
        started = time.monotonic()
        process = self.processes[port]
        while True:
            assert process.poll() is None, f"classifier on {port} exited: see test-artifacts"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            assert time.monotonic() - started < timeout, f"classifier on {port} never ready"
            time.sleep(0.2)

    def processed(self) -> dict[int, float]:
        """Input records handled so far by each running worker (any outcome)."""
        counts = {}
        for port in list(self.processes):
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.TransportError:
                continue
            counts[port] = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("painpath_classifier_events_total{")
            )
        return counts

    def crashed(self, port: int) -> bool:
        text = self.logs[port].read_text(errors="replace")
        return "Crashed" in text or "Traceback" in text


async def produce_paced(
    bootstrap: str, topic: str, records: list[Record], per_second: float, chunk: int = 250
) -> None:
    """Produce records in order at about `per_second`, as a live feed would arrive."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.monotonic()
        for start in range(0, len(records), chunk):
            for key, value in records[start : start + chunk]:
                await producer.send(topic, key=key, value=value)
            ahead = (start + chunk) / per_second - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll an async or plain predicate until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s: {what}"
        await asyncio.sleep(interval)


async def http_status(client: httpx.AsyncClient, url: str, **options) -> int | None:
    """A GET's status code, or None when nothing answers."""
    try:
        return (await client.get(url, timeout=5, **options)).status_code
    except httpx.TransportError:
        return None


def metric_totals(text: str, name: str) -> dict[str, float]:
    """A Prometheus counter's samples in `text` (a /metrics answer) by label set."""
    totals: dict[str, float] = {}
    for sample in text.splitlines():
        if sample.startswith(name + "{"):
            labels, value = sample[len(name) + 1 :].split("} ")
            totals[labels] = totals.get(labels, 0.0) + float(value)
    return totals


# -- the coordinator ---------------------------------------------------------------------------

ADMIN_TOKEN = "fault-admin-token"
PSEUDONYM_KEY = "test-pseudonym-key"


class ServiceProcess:
    """One `painpath <service>` process, its log under test-artifacts/."""

    def __init__(self, service: str, env: dict[str, str], label: str):
        self.service = service
        self.env = env
        self.label = label
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = ARTIFACTS / f"{label}-{self.port}.stderr.log"
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        out = self.log.open("a")
        out.write(f"--- start {self.starts} ---\n")
        out.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "painpath", self.service, "--port", str(self.port)],
            env=self.env,
            stdout=out,
            stderr=out,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def readiness(self, client: httpx.AsyncClient) -> int | None:
        """The /readyz status code, or None when nothing answers."""
        try:
            return (await client.get(self.url("/readyz"), timeout=5)).status_code
        except httpx.TransportError:
            return None

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 90) -> float:
        started = time.monotonic()
        while (await self.readiness(client)) != 200:
            assert self.alive, f"{self.label} exited: see {self.log}"
            assert time.monotonic() - started < timeout, f"{self.label} never ready"
            await asyncio.sleep(0.2)
        return time.monotonic() - started


def service_env(
    bootstrap: str, database_url: str, prefix: str, state_dir: Path, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "GATEWAY_"))}
    return env | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "KAFKA_TOPIC_PREFIX": prefix,
        "COORDINATOR_TOKENS": json.dumps(
            [{"name": "fault-admin", "token": ADMIN_TOKEN, "role": "admin"}]
        ),
        "COORDINATOR_SESSION_TIMEOUT_SECONDS": "6",
        "LOG_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "LOG_LEVEL": "INFO",
        "PAINPATH_STATE_DIR": str(state_dir),
        **extra,
    }


def determination_feed(patients: int, seed: int, every: int = 8) -> list[Determination]:
    """Real determinations of simulated patients, as the classifier would publish them over
    time (sampled every `every` admitted events, and after the last), in feed order."""
    policy, as_of = load_policy(), datetime.fromisoformat(AS_OF)
    records = as_records(feed_lines(patients, seed))
    histories: dict[str, PatientHistory] = {}
    counts: Counter[str] = Counter()
    last_index: dict[str, int] = {}
    admitted: list[tuple[int, str]] = []
    for index, (key, value) in enumerate(records):
        try:
            event = parse_event(value.decode())
        except (UnicodeDecodeError, ContractViolation):
            continue
        if key != event.patient_id.encode():
            continue
        history = histories.setdefault(event.patient_id, PatientHistory())
        if history.admit(event, value.decode()) is Admission.NEW:
            admitted.append((index, event.patient_id))
            last_index[event.patient_id] = index
    feed, published, replay = [], {}, {p: PatientHistory() for p in histories}
    for index, patient in admitted:
        key, value = records[index]
        replay[patient].admit(parse_event(value.decode()), value.decode())
        counts[patient] += 1
        if counts[patient] % every and index != last_index[patient]:
            continue
        determination = evaluate(replay[patient].events, policy, as_of)
        if published.get(patient) != determination.determination_id:
            published[patient] = determination.determination_id
            feed.append(determination)
    return feed


def expected_tasks(determinations: Iterable[Determination]) -> Counter:
    """(patient, task key, state, determination id) of every task the coordinator must end with,
    replaying the pure plan reconciliation over each patient's determinations in order."""
    templates = load_templates()
    tasks: dict[str, list[list[str]]] = defaultdict(list)
    for determination in determinations:
        current = tasks[determination.patient_id]
        change = reconcile(
            [ExistingTask(key, TaskState(state)) for key, state, _ in current],
            plan_for(determination, templates),
            determination,
        )
        for spec in change.add:
            current.append([spec.key, TaskState.PROPOSED.value, determination.determination_id])
        for key, _ in change.cancel:
            for task in current:
                if task[0] == key and TaskState(task[1]) in OPEN_STATES:
                    task[1] = TaskState.CANCELLED.value
    return Counter(
        (patient, key, state, determination_id)
        for patient, current in tasks.items()
        for key, state, determination_id in current
    )


async def produce_determinations(
    bootstrap: str, prefix: str, determinations: list[Determination], per_second: float
) -> None:
    records = [(d.patient_id.encode(), d.model_dump_json().encode()) for d in determinations]
    await produce_paced(bootstrap, DETERMINATIONS.full_name(prefix), records, per_second, chunk=50)


async def coordinator_state(connection) -> dict:
    """What the coordinator's database holds, for the comparisons."""
    tasks = Counter(
        tuple(row)
        for row in await connection.fetch(
            "SELECT patient_id, key, state, determination_id FROM tasks"
        )
    )
    open_twice = await connection.fetchval(
        """SELECT count(*) FROM (SELECT patient_id, key FROM tasks
           WHERE state IN ('proposed', 'accepted', 'in_progress')
           GROUP BY patient_id, key HAVING count(*) > 1) AS twice"""
    )
    current = dict(
        await connection.fetch(
            """SELECT p.patient_id, d.determination_id FROM care_plans p
               JOIN determinations d ON d.id = p.current_determination"""
        )
    )
    outbox = [
        row["sequence"]
        for row in await connection.fetch("SELECT sequence FROM outbox ORDER BY sequence")
    ]
    unpublished = await connection.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    )
    records = await connection.fetchval("SELECT count(*) FROM determinations")
    return {
        "tasks": tasks,
        "open_twice": open_twice,
        "current": current,
        "outbox": outbox,
        "unpublished": unpublished,
        "records": records,
    }


def compare_tasks(got: Counter, expected: Counter) -> dict[str, int]:
    return {
        "tasks": sum(got.values()),
        "tasks_expected": sum(expected.values()),
        "tasks_lost": sum((expected - got).values()),
        "tasks_duplicated": sum((got - expected).values()),
    }


def published_sequences(records) -> dict[str, int]:
    """care.tasks.v1 records against their `sequence` header: gaps and re-publications."""
    by_sequence: dict[int, list[bytes]] = defaultdict(list)
    for record in records:
        by_sequence[int(dict(record.headers)["sequence"])].append(record.value)
    top = max(by_sequence, default=0)
    return {
        "task_changes": top,
        "sequence_gaps": sum(1 for s in range(1, top + 1) if s not in by_sequence),
        "republished_identical": sum(
            len(values) - 1 for values in by_sequence.values() if len(set(values)) == 1
        ),
        "republished_different": sum(1 for values in by_sequence.values() if len(set(values)) > 1),
    }
