"""Faults of the broker itself: the local broker (memory-only) SIGKILLed mid-stream.

The whole system runs as processes on a broker and a PostgreSQL of the test's own: the gateway
(fed over HTTP, as a hospital would), two classifier workers and the coordinator. The broker is
SIGKILLed while events flow; a new, empty one is started on the same port, the topics are
created again, and what `painpath run` does at start after a broker loss follows: the services
restart and the gateway's kept events are replayed (`painpath.replay.replay_after_broker_loss`).
The feed goes on meanwhile (its client retries every 503 and refused connection).

Compared with the offline reference over every event the gateway answered `accepted` (its
claims): each patient's last determination on the new topic and in the coordinator, and each
patient's open tasks against the plan of that reference determination.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from painpath.replay import replay_after_broker_loss
from painpath.summary import wait_until_settled
from services.classifier.offline import SetAside, classify_file
from services.classifier.policy import load_policy
from services.coordinator.care_plan import plan_for
from services.coordinator.templates import load_templates
from shared.kafka import create_topics
from shared.stack import Endpoints, LocalStack, _answers
from shared.topics import DETERMINATIONS, EVENTS
from tests.conftest import SENT_PATIENT_IDS, read_topic, remember_patient_ids
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    PSEUDONYM_KEY,
    FaultWorkers,
    ServiceProcess,
    service_env,
    wait_for,
)
from tests.faults.test_coordinator_faults import own_stack  # noqa: F401 (a fixture)
from tests.integration.test_classifier_stream import AS_OF, feed_lines

pytestmark = [pytest.mark.integration, pytest.mark.faults]

GATEWAY_KEY = "fault-broker-loss-key"
PATIENTS, SEED = 120, 53
BATCH = 100


def kill_broker(local: LocalStack) -> None:
    pid = local._recorded().broker_pid
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def restart_broker(local: LocalStack) -> None:
    """A new broker on the same port: empty, as the memory-only local broker after a death."""
    recorded = local._recorded()
    port = int(recorded.bootstrap_servers.rsplit(":", 1)[1])
    fresh = LocalStack(local.state_dir, broker_port=port)
    while True:  # the old socket may linger a moment
        try:
            _, pid = fresh._start_broker()
            break
        except Exception:
            time.sleep(0.1)
    local._record(replace(recorded, broker_pid=pid))
    deadline = time.monotonic() + 30
    while not _answers("127.0.0.1", port):
        assert time.monotonic() < deadline, "the new broker never answered"
        time.sleep(0.05)


def _json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


class Feed:
    """A hospital's feed through the gateway: batches in order, each retried until taken."""

    def __init__(self, url: str, lines: list[str], per_second: float):
        self.url = url
        self.lines = [line for line in lines if _json(line)]  # as `painpath publish` sends
        self.per_second = per_second
        self.sent = 0
        self.results: Counter[str] = Counter()
        self.retries = 0
        self.codes: Counter[int] = Counter()

    async def run(self, deadline: float) -> None:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=30) as client:
            for start in range(0, len(self.lines), BATCH):
                body = "[" + ",".join(self.lines[start : start + BATCH]) + "]"
                remember_patient_ids(body.encode())
                while True:
                    assert time.monotonic() < deadline, "the gateway never took a batch"
                    try:
                        response = await client.post(
                            self.url,
                            content=body,
                            headers={"X-API-Key": GATEWAY_KEY, "Content-Type": "application/json"},
                        )
                        self.codes[response.status_code] += 1
                        if response.status_code < 500:
                            break
                    except httpx.TransportError:
                        self.codes[0] += 1
                    self.retries += 1
                    await asyncio.sleep(0.5)
                for result in response.json()["results"]:
                    self.results[result["status"]] += 1
                self.sent = start + BATCH
                ahead = self.sent / self.per_second - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)


def event_keys(values) -> Counter:
    return Counter((e["source"], e["id"]) for e in map(json.loads, values))


def stop_quickly(processes: list, timeout: float = 10) -> None:
    """SIGTERM every process, SIGKILL what still runs after `timeout` (with its broker gone, a
    service's last commit may wait for a broker that never answers)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except Exception:
            process.kill()
            process.wait(10)


async def accepted_events(database_url: str) -> list[bytes]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            """SELECT record_value FROM gateway_accepted_events
               ORDER BY accepted_at, batch_position, source, event_id"""
        )
    finally:
        await connection.close()
    return [row["record_value"] for row in rows]


async def coordinator_view(database_url: str) -> dict:
    connection = await asyncpg.connect(database_url)
    try:
        current = dict(
            await connection.fetch(
                """SELECT p.patient_id, d.determination_id FROM care_plans p
                   JOIN determinations d ON d.id = p.current_determination"""
            )
        )
        open_tasks = await connection.fetch(
            """SELECT patient_id, key, count(*) AS n FROM tasks
               WHERE state IN ('proposed', 'accepted', 'in_progress') GROUP BY 1, 2"""
        )
        events_twice = await connection.fetchval(
            """SELECT count(*) FROM (SELECT 1 FROM patient_events
               GROUP BY source, event_id HAVING count(*) > 1) AS twice"""
        )
    finally:
        await connection.close()
    return {"current": current, "open": open_tasks, "events_twice": events_twice}


async def test_broker_killed_mid_stream_then_replayed_loses_and_doubles_nothing(
    own_stack,  # noqa: F811 (the fixture: a broker and a PostgreSQL of the test's own)
    tmp_path,
):
    local, settings = own_stack
    database_url = settings.database_url.get_secret_value()
    bootstrap = settings.kafka_bootstrap_servers
    prefix = settings.kafka_topic_prefix
    await create_topics(settings, bootstrap)
    endpoints = Endpoints(
        bootstrap_servers=bootstrap,
        database_url=database_url,
        api_keys=[],
        coordinator_tokens=[],
        pseudonym_key=PSEUDONYM_KEY,
        local=False,
    )
    lines = feed_lines(PATIENTS, SEED)
    env = service_env(bootstrap, database_url, prefix, tmp_path / "services")
    gateway_env = env | {
        "GATEWAY_API_KEYS": json.dumps([{"name": "f", "key": GATEWAY_KEY, "sources": ["*"]}])
    }
    gateway = ServiceProcess("gateway", gateway_env, "gateway-broker-loss")
    coordinator = ServiceProcess("coordinator", env, "coordinator-broker-loss")
    workers = FaultWorkers(settings, endpoints)
    feed = Feed(gateway.url("/v1/events"), lines, per_second=800)

    def start_services() -> None:
        coordinator.start()
        gateway.start()
        for number in (1, 2):
            workers.start(tmp_path / f"w{number}")

    def stop_services() -> None:
        processes = [*workers.processes.values(), coordinator.process, gateway.process]
        stop_quickly([process for process in processes if process is not None])
        workers.processes.clear()

    start_services()
    try:
        async with httpx.AsyncClient() as client:
            await gateway.wait_ready(client)
            await coordinator.wait_ready(client)
            await asyncio.to_thread(workers.wait_ready)
            feeding = asyncio.create_task(feed.run(time.monotonic() + 600))
            await wait_for(
                lambda: feeding.done() or feed.sent >= 0.4 * len(feed.lines), 120, "40 % sent"
            )
            assert not feeding.done(), feeding
            accepted_before_kill = len(await accepted_events(database_url))
            killed = time.monotonic()
            await asyncio.to_thread(kill_broker, local)
            # The gateway while its broker is gone: not ready, and a post is refused (503).
            readiness = []
            while time.monotonic() - killed < 4:
                readiness.append(await gateway.readiness(client))
                await asyncio.sleep(0.5)
            # What `painpath run` does after a broker death: everything stopped, a new broker,
            # the topics, the replay found necessary at start, the services again.
            await asyncio.to_thread(stop_services)
            await asyncio.to_thread(restart_broker, local)
            restarted = time.monotonic()
            await create_topics(settings, bootstrap)
            on_new_broker_before_replay = len(await read_topic(settings, EVENTS, 0, timeout=2))
            accepted_at_replay = len(await accepted_events(database_url))
            said: list[str] = []
            result = await asyncio.to_thread(
                replay_after_broker_loss, settings, endpoints, said.append
            )
            start_services()
            await gateway.wait_ready(client, timeout=120)
            await feeding
            waited = await wait_until_settled(settings, bootstrap, database_url, timeout=400)
            recovered = time.monotonic() - restarted
            view = await coordinator_view(database_url)
            alive = gateway.alive and coordinator.alive and len(workers.processes) == 2
    finally:
        stop_services()

    accepted = await accepted_events(database_url)
    on_topic = await read_topic(settings, EVENTS, expected=len(accepted), timeout=30)
    published = await read_topic(settings, DETERMINATIONS, expected=1, timeout=30)
    accepted_keys, topic_keys = event_keys(accepted), event_keys(r.value for r in on_topic)
    SENT_PATIENT_IDS.update(r.key.decode() for r in on_topic if r.key and len(r.key) >= 6)

    # The reference: every accepted event, classified offline as of the stream's instant.
    reference_file = tmp_path / "accepted.jsonl"
    reference_file.write_bytes(b"".join(value + b"\n" for value in accepted))
    decided, refused = classify_file(reference_file, load_policy(), datetime.fromisoformat(AS_OF))
    reference = {d.patient_id: d for d in decided if not isinstance(d, SetAside)}
    last_published: dict[str, str] = {}
    consecutive_twice = 0
    for record in sorted(published, key=lambda r: (r.partition, r.offset)):
        determination_id = json.loads(record.value)["determination_id"]
        patient = record.key.decode()
        consecutive_twice += last_published.get(patient) == determination_id
        last_published[patient] = determination_id
    templates = load_templates()
    open_keys: dict[str, set[str]] = {}
    open_twice = 0
    for row in view["open"]:
        open_keys.setdefault(row["patient_id"], set()).add(row["key"])
        open_twice += row["n"] > 1
    tasks_wrong = sum(
        1
        for patient, determination in reference.items()
        if open_keys.get(patient, set())
        != {spec.key for spec in plan_for(determination, templates)}
    )
    lost_events = sum((accepted_keys - topic_keys).values())
    determination_lost = sum(
        1 for p, d in reference.items() if last_published.get(p) != d.determination_id
    )
    stale = sum(1 for p, d in reference.items() if view["current"].get(p) != d.determination_id)
    report_figures(
        "broker_loss_replay",
        events_sent=len(feed.lines),
        accepted=len(accepted),
        accepted_before_kill=accepted_before_kill,
        accepted_at_replay=accepted_at_replay,
        feed_results=dict(feed.results),
        feed_retries=feed.retries,
        gateway_readyz_while_broker_dead=readiness,
        events_on_new_broker_before_replay=on_new_broker_before_replay,
        replayed=result.published if result else 0,
        replay_s=round(result.seconds, 1) if result else None,
        patients=len(reference),
        lost=lost_events + determination_lost,
        lost_events=lost_events,
        patients_without_their_determination=determination_lost,
        duplicated=open_twice + view["events_twice"] + consecutive_twice,
        open_tasks_twice=open_twice,
        timeline_events_twice=view["events_twice"],
        determinations_published_twice_in_a_row=consecutive_twice,
        stale=stale,
        patients_with_wrong_open_tasks=tasks_wrong,
        recover_s=round(recovered, 1),
        settled_after_feed_s=round(waited, 1),
    )
    assert alive
    assert not refused and len(reference) > 0
    assert readiness and all(code == 503 for code in readiness[1:]), readiness
    assert result is not None and result.published == accepted_at_replay >= accepted_before_kill
    assert lost_events == determination_lost == stale == tasks_wrong == 0
    assert open_twice == view["events_twice"] == consecutive_twice == 0
