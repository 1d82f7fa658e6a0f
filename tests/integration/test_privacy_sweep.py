"""Privacy sweep: run the whole system on a simulated feed, then search everything it wrote.

`painpath run --patients 40 --seed 9` runs as a user runs it (its own state folder and ports).
While it runs, the sweep adds the traffic the replay alone does not produce, then collects:
- every service's `/metrics` text (gateway, both classifier workers, coordinator);
- the headers of every record on `pain.events.dlq.v1`. Its keys and values are the original
  records, patient ids included, by design: they are not searched (they are the positive
  control instead: the search must find the patient ids there);
then stops it with Ctrl-C and reads every log: `<state>/logs/*.log`, the broker's and
PostgreSQL's logs, and the run's own output. None may contain a simulated patient id or a
clinical free-text value. (The gateway's HTTP replies are answers, not logs: not searched.)

The added traffic, so that the paths where a leak would hide are exercised:
- records on `pain.events.v1` that break the contract in each way the classifier dead-letters
  (a bad field, not JSON, not UTF-8, a key that is not the patient id, a conflicting
  duplicate), each carrying a patient id and free text;
- through the gateway, an event with new free text (published, classified, planned) and one
  refused for a bad field while carrying free text;
- coordinator API calls with a patient id in the path and the query, and a task cancelled
  with a free-text reason.

What is searched for (case-insensitively, as whole tokens), from the feed file itself:
- every `data.patient_id` (`sim-NNNNNN`; in truncated lines too, by pattern);
- free text: `effect`, `pain_sites`, `icd10_codes` entries, `drug` and the strings inside
  `findings` (e.g. prior analgesics), and the free text the sweep added.
Left out, on purpose: values shorter than 5 characters ("neck", "hips": they match unrelated
text and identify nobody); numbers and booleans (scores, doses, BMI, RxNorm codes: they match
timestamps and counters); enumerations of the contract (severity, stop reason, assessment
kind, test, result, classification, dose unit, instrument) and generic words such as the
NeuPSIG grades "possible", "probable", "definite": they are part of the vocabulary every log
line and metric may legitimately use, and say nothing about a patient. Drug names are
searched: no log line, metric name or label needs one (metrics are labelled by status, kind,
outcome, result and task state), and the privacy filter redacts `drug`.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared import dead_letter
from shared.contract import ContractViolation, parse_event
from shared.kafka import end_offsets
from shared.topics import EVENTS, EVENTS_DLQ
from tests.integration.test_run import run_env

pytestmark = pytest.mark.integration

PATIENTS, SEED = 40, 9
READY_LINE = "running: Ctrl-C stops every service"
START_TIMEOUT = 240.0
PATIENT_ID = re.compile(r"sim-\d{6}")
MIN_TERM_LENGTH = 5
# Strings of `findings` that are graded vocabulary, not free text (see the module docstring).
GENERIC_WORDS = {"possible", "probable", "definite"}
# Free text the sweep itself sends: distinctive, so any hit is a leak of that very field.
ADDED_FREE_TEXT = {
    "effect": "burning paraesthesia radiating to the calf",
    "drug": "zygomycetin forte",
    "note": "lives alone with her daughter marguerite",
    "pain_sites": "posterior tibial groove",
    "reason": "declined after talking with reverend okonkwo",
    "findings": "allodynia over the scar of the 2019 herniotomy",
}
BAD_RECORDS = 6  # dead letters the sweep adds (one per `_bad_records` entry)


def _sensitive_terms(feed: Path) -> tuple[set[str], set[str]]:
    """(patient ids, free-text values) of the feed, as described in the module docstring."""
    patients: set[str] = set()
    free_text: set[str] = set(ADDED_FREE_TEXT.values())

    def strings(value) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [s for item in value for s in strings(item)]
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings(item)]
        return []

    for line in feed.read_text().splitlines():
        patients.update(PATIENT_ID.findall(line))
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a truncated line: its patient id was taken by pattern
        data = event.get("data") if isinstance(event, dict) else None
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("patient_id"), str):
            patients.add(data["patient_id"])
        for field in ("effect", "drug", "pain_sites", "icd10_codes", "findings"):
            for text in strings(data.get(field)):
                free_text.update({text, text.replace("_", " ")})
    free_text = {
        term.lower()
        for term in free_text
        if len(term) >= MIN_TERM_LENGTH
        and not term.replace(".", "").isdigit()
        and term.lower() not in GENERIC_WORDS
    }
    return patients, free_text


def _matcher(terms: set[str]) -> re.Pattern[str]:
    """Any of `terms` as a whole token (not inside a longer word or id), case-insensitively."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def _hits(pattern: re.Pattern[str], texts: dict[str, str]) -> dict[str, list[str]]:
    found = {}
    for name, text in texts.items():
        lines = [line[:300] for line in text.splitlines() if pattern.search(line)]
        if lines:
            found[name] = lines[:5] + ([f"... {len(lines) - 5} more"] if len(lines) > 5 else [])
    return found


def _in_thread(coroutine):
    """Run a coroutine to completion on its own event loop (this test is not a coroutine)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


# --- The traffic the sweep adds ------------------------------------------------------------------


def _feed_events(feed: Path) -> list[dict]:
    """The feed's events that keep the contract (the ones the classifier admitted)."""
    events = []
    for line in feed.read_text().splitlines():
        try:
            parse_event(line)
        except ContractViolation:
            continue
        events.append(json.loads(line))
    return events


def _bad_records(events: list[dict]) -> list[tuple[bytes, bytes]]:
    """(key, value) of records that each break the contract in one way the classifier knows."""
    score = next(e for e in events if e["type"] == "pain.score.recorded.v1")
    patient = score["data"]["patient_id"]
    other = next(e["data"]["patient_id"] for e in events if e["data"]["patient_id"] != patient)
    note = {"note": ADDED_FREE_TEXT["note"], "effect": ADDED_FREE_TEXT["effect"]}

    def with_id(event: dict, suffix: str, **data) -> dict:
        return {**event, "id": f"privacy-{suffix}", "data": {**event["data"], **note, **data}}

    out_of_range = with_id(score, "range", score=11)
    wrong_type = with_id(score, "type", score=f"{patient} {ADDED_FREE_TEXT['effect']}")
    truncated = json.dumps(with_id(score, "truncated"))[:-7]
    conflicting = {**score, "data": {**score["data"], **note}}  # same (source, id), new content
    return [
        (patient.encode(), json.dumps(out_of_range).encode()),
        (patient.encode(), json.dumps(wrong_type).encode()),
        (patient.encode(), truncated.encode()),
        (patient.encode(), b"\xff\xfe" + json.dumps(with_id(score, "latin")).encode("utf-16")),
        (other.encode(), json.dumps(with_id(score, "key")).encode()),
        (patient.encode(), json.dumps(conflicting).encode()),
    ]


async def _publish_raw(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            headers = [("traceparent", f"00-{uuid.uuid4().hex}-{'0' * 15}1-01".encode())]
            await producer.send_and_wait(EVENTS.name, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _read_dlq(bootstrap: str, expected: int, timeout: float = 60.0) -> list:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(EVENTS_DLQ.name, p) for p in range(EVENTS_DLQ.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
            if len(records) >= expected:
                positions = {tp: await consumer.position(tp) for tp in partitions}
                end = await end_offsets(consumer, partitions)
                if all(positions[tp] >= end[tp] for tp in partitions):
                    break
                for tp in partitions:
                    consumer.seek(tp, positions[tp])
        return records
    finally:
        await consumer.stop()


def _gateway_traffic(gateway: str, api_key: str, events: list[dict]) -> None:
    """An event with new free text (accepted) and one refused while carrying free text."""
    start = next(e for e in events if e["type"] == "pain.trial.started.v1")
    effect = {
        **start,
        "id": "privacy-effect-1",
        "type": "pain.side_effect.reported.v1",
        "data": {
            "patient_id": start["data"]["patient_id"],
            "drug": ADDED_FREE_TEXT["drug"],
            "effect": ADDED_FREE_TEXT["effect"],
            "severity": "moderate",
            "note": ADDED_FREE_TEXT["note"],
        },
    }
    refused = {**effect, "id": "privacy-effect-2", "data": {**effect["data"], "severity": "awful"}}
    assessment = {
        **start,
        "id": "privacy-assessment-1",
        "source": "urn:hospital:st-olaf:ehr",
        "type": "pain.assessment.recorded.v1",
        "data": {
            "patient_id": start["data"]["patient_id"],
            "kind": "physical_exam",
            "findings": {"free_text": ADDED_FREE_TEXT["findings"]},
            "pain_sites": [ADDED_FREE_TEXT["pain_sites"]],
        },
    }
    response = httpx.post(
        f"{gateway}/v1/events",
        json=[effect, refused, assessment],
        headers={"X-API-Key": api_key},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    assert [r["status"] for r in response.json()["results"]] == ["accepted", "rejected", "accepted"]


def _coordinator_traffic(coordinator: str, token: str, patient: str) -> None:
    """Patient ids in paths and queries, and a cancellation with a free-text reason."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=coordinator, headers=auth, timeout=30) as client:
        for path in (f"/v1/patients/{patient}", f"/v1/patients/{patient}/timeline"):
            assert client.get(path).status_code in (200, 404), path
        assert client.get("/v1/patients/sim-999999").status_code == 404
        tasks = client.get("/v1/tasks", params={"patient_id": patient, "limit": 50})
        assert tasks.status_code == 200
        open_tasks = [t for t in tasks.json()["items"] if t["state"] == "proposed"]
        if not open_tasks:  # this patient has no open task: any patient's will do
            open_tasks = client.get("/v1/tasks", params={"state": "proposed"}).json()["items"]
        if open_tasks:
            task = open_tasks[0]["id"]
            cancelled = client.post(
                f"/v1/tasks/{task}/cancel", json={"reason": ADDED_FREE_TEXT["reason"]}
            )
            assert cancelled.status_code == 200, cancelled.text
            assert client.get(f"/v1/tasks/{task}/history").status_code == 200
            assert client.get(f"/fhir/r4/Task/{task}").status_code == 200


# --- The sweep -----------------------------------------------------------------------------------


class _Output:
    """The run's output, read on a thread so that waiting for a line has a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)
            if READY_LINE in line:
                self.ready.set()

    def text(self, wait: float = 0) -> str:
        self._thread.join(wait)
        return "".join(self.lines)


def test_no_patient_id_or_free_text_in_any_log_metric_or_dead_letter_header():
    with tempfile.TemporaryDirectory(prefix="painpath-privacy-") as folder:
        state = Path(folder)
        # At DEBUG: the most the services ever write.
        env = run_env(state) | {"LOG_LEVEL": "DEBUG"}
        classifier_port = int(env["CLASSIFIER_PORT"])
        command = [sys.executable, "-m", "painpath"]
        run = subprocess.Popen(
            [*command, "run", "--patients", str(PATIENTS), "--seed", str(SEED)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = _Output(run)
        try:
            assert output.ready.wait(START_TIMEOUT), output.text()[-3000:]
            collected = _collect_while_running(state, env, command, classifier_port)
        finally:
            run.send_signal(signal.SIGINT)
            try:
                status = run.wait(timeout=90)
            except subprocess.TimeoutExpired:
                run.kill()
                status = run.wait()
        stdout = output.text(wait=10)
        assert status == 0, stdout[-3000:]
        # The services' logs, the broker's, and PostgreSQL's server log.
        log_files = [
            *sorted(state.glob("logs/*.log")),
            state / "broker.log",
            state / "postgres/log",
        ]
        logs = {
            str(path.relative_to(state)): path.read_text(errors="replace")
            for path in log_files
            if path.is_file()
        }
        [feed] = state.glob(f"feed-{PATIENTS}-{SEED}-*.jsonl")
        patients, free_text = _sensitive_terms(feed)

    metrics, dlq = collected["metrics"], collected["dlq"]
    services = {"gateway", "coordinator", "classifier-1", "classifier-2"}
    assert {f"logs/{name}.log" for name in services} <= set(logs)
    assert len(patients) == PATIENTS
    headers = {
        f"dlq {r.partition}:{r.offset} {name}": value.decode("utf-8", "replace")
        for r in dlq
        for name, value in r.headers
    }
    # The search works: it finds the patient ids where they belong (DLQ keys and values).
    ids = _matcher(patients)
    assert _hits(ids, {"dlq keys": "\n".join(r.key.decode() for r in dlq)})
    assert _hits(_matcher(free_text), {"dlq values": "\n".join(str(r.value) for r in dlq)})

    sources = {**logs, "run output": stdout, **metrics, **headers}
    print(
        f"\nsearched {len(patients)} patient ids and {len(free_text)} free-text values in"
        f" {len(logs)} log files ({sum(len(t) for t in logs.values())} characters),"
        f" the run's output ({len(stdout)} characters), {len(metrics)} /metrics pages"
        f" ({sum(len(t) for t in metrics.values())} characters) and {len(headers)} headers"
        f" of {len(dlq)} dead letters"
    )
    leaked = {"patient ids": _hits(ids, sources), "free text": _hits(_matcher(free_text), sources)}
    assert leaked == {"patient ids": {}, "free text": {}}, json.dumps(leaked, indent=2)


def _collect_while_running(state: Path, env: dict, command: list[str], classifier_port: int):
    """Add the sweep's traffic, then collect every /metrics page and the dead letters."""
    stack = json.loads((state / "stack.json").read_text())
    bootstrap = stack["bootstrap_servers"]

    def key(*flags: str) -> str:
        done = subprocess.run(
            [*command, "stack", "key", *flags], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    api_key, admin_token = key(), key("--admin")
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    coordinator = f"http://127.0.0.1:{env['COORDINATOR_PORT']}"
    [feed] = state.glob(f"feed-{PATIENTS}-{SEED}-*.jsonl")
    events = _feed_events(feed)

    bad = _bad_records(events)
    _in_thread(_publish_raw(bootstrap, bad))
    _gateway_traffic(gateway, api_key, events)
    _coordinator_traffic(coordinator, admin_token, events[0]["data"]["patient_id"])
    dlq = _in_thread(_read_dlq(bootstrap, expected=BAD_RECORDS))
    assert len(dlq) >= BAD_RECORDS, [dict(r.headers).get(dead_letter.REASON) for r in dlq]
    assert {dict(r.headers)[dead_letter.FIELD].decode() for r in dlq} >= {"key", "id", "(event)"}

    pages = {
        "gateway": (gateway, {}),
        "coordinator": (coordinator, {"Authorization": f"Bearer {admin_token}"}),
        "classifier-1": (f"http://127.0.0.1:{classifier_port}", {}),
        "classifier-2": (f"http://127.0.0.1:{classifier_port + 1}", {}),
    }
    metrics = {}
    for name, (base, headers) in pages.items():
        response = httpx.get(f"{base}/metrics", headers=headers, timeout=30)
        assert response.status_code == 200, name
        metrics[f"{name} /metrics"] = response.text
    dead_letters = [
        line
        for name in ("classifier-1", "classifier-2")
        for line in metrics[f"{name} /metrics"].splitlines()
        if line.startswith('painpath_classifier_events_total{outcome="dead_letter"}')
    ]
    assert sum(float(line.split()[-1]) for line in dead_letters) >= BAD_RECORDS
    return {"metrics": metrics, "dlq": dlq}
