"""Faults of the local stack under `painpath run` (issue 13, items 4 and 8): the broker dies and
`painpath stack up` starts a new one under running services; a worker is SIGKILLed under the
run; the run itself is SIGKILLed. Real broker, real PostgreSQL, real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from painpath.restart import kept_state
from shared.stack import LocalStack, _answers, _pid_alive
from tests.conftest import SENT_PATIENT_IDS
from tests.faults.conftest import report_figures
from tests.integration.test_cli import count_tables
from tests.integration.test_run import run_env

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PAINPATH = [sys.executable, "-m", "painpath"]


class LocalRun:
    """`painpath run` as a user starts it, its console collected line by line."""

    def __init__(self, env: dict[str, str], *args: str):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*PAINPATH, "run", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> float:
        """Seconds until `text` is on the console; fails with the console's end otherwise."""
        started = time.monotonic()
        while text not in self.output:
            assert self.process.poll() is None or text in self.output, self.output[-3000:]
            assert time.monotonic() - started < timeout, f"no {text!r}:\n{self.output[-3000:]}"
            time.sleep(0.2)
        return time.monotonic() - started

    def interrupt(self, timeout: float = 90) -> int:
        self.process.send_signal(signal.SIGINT)
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return status


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="painpath-test-faults-run-") as folder:
        yield Path(folder)
        LocalStack(Path(folder)).down()


def stack_state(state_dir: Path):
    return LocalStack(state_dir)._recorded()


def readyz(url: str) -> str:
    try:
        return str(httpx.get(f"{url}/readyz", timeout=3).status_code)
    except httpx.TransportError as error:
        return type(error).__name__


def one_event(patient: str, number: int, days_ago: int = 400) -> dict:
    SENT_PATIENT_IDS.add(patient)
    onset = (datetime.now(UTC) - timedelta(days=days_ago)).date().isoformat()
    return {
        "specversion": "1.0",
        "id": f"fault-{patient}-{number}",
        "source": "urn:hospital:st-olaf:ehr",
        "type": "pain.condition.recorded.v1",
        "time": (datetime.now(UTC) - timedelta(days=days_ago - 1)).isoformat(),
        "data": {"patient_id": patient, "onset_date": onset, "pain_sites": ["lower back"]},
    }


async def task_rows(database_url: str, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT id::text, state, outcome FROM tasks WHERE id = ANY($1::uuid[])", ids
        )
    finally:
        await connection.close()
    return {row["id"]: (row["state"], row["outcome"]) for row in rows}


def act(coordinator: str, token: str, task_id: str, action: str, body: dict | None = None):
    response = httpx.post(
        f"{coordinator}/v1/tasks/{task_id}/{action}",
        json=body or {},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def test_stack_up_after_a_broker_death_drops_nothing_and_a_new_run_keeps_what_people_did(
    state_dir: Path,
):
    env = run_env(state_dir)
    first = LocalRun(env, "--patients", "20", "--seed", "3", "--classifiers", "1")
    first.wait_for("dashboard: http://")
    state = stack_state(state_dir)
    gateway = state.services["gateway"]["url"]
    coordinator = state.services["coordinator"]["url"]
    token = state.admin_token
    tasks = httpx.get(
        f"{coordinator}/v1/tasks",
        params={"state": "proposed", "limit": 3},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["items"]
    assert len(tasks) == 3, tasks
    completed, accepted = [t["id"] for t in tasks[:2]], tasks[2]["id"]
    for task_id in completed:  # what people did: two completions with outcomes, one acceptance
        act(coordinator, token, task_id, "accept")
        act(coordinator, token, task_id, "start")
        act(coordinator, token, task_id, "complete", {"outcome": "seen in clinic"})
    act(coordinator, token, accepted, "accept")
    before = asyncio.run(kept_state(state.database_url))
    people = asyncio.run(task_rows(state.database_url, [*completed, accepted]))

    # The fault: the broker dies under the running services, then `painpath stack up`.
    os.kill(state.broker_pid, signal.SIGKILL)
    said_during: set[str] = set()
    stale_ready = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        gateway_ready = readyz(gateway)
        said_during.add(f"gateway {gateway_ready}")
        said_during.add(f"coordinator {readyz(coordinator)}")
        if gateway_ready == "200":  # ready must mean a post would be taken
            post = httpx.post(
                f"{gateway}/v1/events",
                json=one_event("pt-fault-probe-0001", len(said_during)),
                headers={"X-API-Key": state.api_key},
                timeout=10,
            )
            stale_ready += post.status_code >= 500
        time.sleep(0.5)
    up_started = time.monotonic()
    up = subprocess.run(
        [*PAINPATH, "stack", "up"], env=env, capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    assert "nothing dropped" in up.stdout
    after_up = asyncio.run(kept_state(state.database_url))
    table_count = asyncio.run(count_tables(state.database_url))
    while readyz(gateway) != "200":
        assert time.monotonic() - up_started < 60, "the gateway never became ready again"
        time.sleep(0.5)
    gateway_recovered = time.monotonic() - up_started
    post = httpx.post(
        f"{gateway}/v1/events",
        json=one_event("pt-fault-after-0001", 1),
        headers={"X-API-Key": state.api_key},
        timeout=10,
    )
    listed = httpx.get(
        f"{coordinator}/v1/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert first.interrupt() == 0, first.output[-3000:]

    # Then a new `painpath run`: it keeps what people did, replays what the gateway kept.
    second = LocalRun(env, "--patients", "20", "--seed", "3", "--classifiers", "1")
    second.wait_for("dashboard: http://")
    after_run = asyncio.run(kept_state(state.database_url))
    people_after = asyncio.run(task_rows(state.database_url, [*completed, accepted]))
    assert second.interrupt() == 0, second.output[-3000:]

    lost = sum(
        max(0, getattr(before, name) - getattr(after, name))
        for after in (after_up, after_run)
        for name in ("claims", "tasks", "completed", "with_outcome", "audit_rows", "care_plans")
    )
    # A people-made task state the restart changed (a completion undone, an acceptance cancelled)
    stale = sum(1 for task_id, row in people.items() if people_after.get(task_id) != row)
    report_figures(
        "stack_up_after_broker_death",
        lost=lost,
        duplicated=max(0, after_run.completed - before.completed),
        stale=stale + stale_ready,
        tables_after_stack_up=table_count,
        claims_kept=f"{after_up.claims} of {before.claims}",
        tasks_kept=f"{after_run.tasks} (before {before.tasks})",
        completed_with_outcome_kept=f"{after_run.with_outcome} of {before.with_outcome}",
        audit_rows=f"{before.audit_rows} before, {after_up.audit_rows} after stack up,"
        f" {after_run.audit_rows} after the new run",
        readyz_during_fault=sorted(said_during),
        ready_while_a_post_failed=stale_ready,
        seconds_to_recover=round(gateway_recovered, 1),
        post_after_stack_up=post.status_code,
        tasks_after_stack_up=listed.status_code,
    )
    assert table_count > 0
    assert lost == 0 and stale == 0 and stale_ready == 0
    assert post.status_code == 202 and listed.status_code == 200
    assert "kept from earlier runs:" in second.output
    # Every event the gateway kept went back onto the new broker before any worker started,
    # so each patient was decided once on its whole history (no task cancelled and re-proposed:
    # a partition read in several fetches is not decided on the first one's part of it).
    assert "replaying every event accepted since" in second.output
    assert after_run.tasks == before.tasks, "tasks made again: decided on part of a history"
    assert "2 completed, 2 with an outcome" in second.output


def test_run_restarts_a_killed_worker_and_no_service_outlives_a_killed_run(state_dir: Path):
    env = run_env(state_dir)
    run = LocalRun(env, "--patients", "10", "--seed", "5", "--classifiers", "2")
    run.wait_for("dashboard: http://")
    state = stack_state(state_dir)
    worker = state.services["classifier-1"]
    killed_at = time.monotonic()
    os.kill(worker["pid"], signal.SIGKILL)

    # While it restarts, new events go through `painpath publish`, which finds the gateway in
    # the stack's state file (no GATEWAY_PORT given).
    patients = [f"pt-fault-restart-{n:04d}" for n in range(8)]
    feed = state_dir / "extra.jsonl"
    feed.write_text("".join(json.dumps(one_event(p, 1)) + "\n" for p in patients))
    publish_env = {k: v for k, v in env.items() if k not in ("GATEWAY_PORT", "GATEWAY_HOST")}
    published = subprocess.run(
        [*PAINPATH, "publish", str(feed)],
        env=publish_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = {readyz(worker["url"])}
    while "classifier-1 ready again" not in run.output:
        said.add(readyz(worker["url"]))
        assert time.monotonic() - killed_at < 90, run.output[-3000:]
        time.sleep(0.3)
    recovered = time.monotonic() - killed_at

    async def decided() -> tuple[int, int]:
        connection = await asyncpg.connect(state.database_url)
        try:
            row = await connection.fetchrow(
                """SELECT count(DISTINCT patient_id) AS patients,
                          count(*) - count(DISTINCT (patient_id, determination_id)) AS repeats
                   FROM determinations WHERE patient_id = ANY($1::text[])""",
                patients,
            )
        finally:
            await connection.close()
        return row["patients"], row["repeats"]

    deadline = time.monotonic() + 90
    while (found := asyncio.run(decided()))[0] < len(patients) and time.monotonic() < deadline:
        time.sleep(1)
    # The run is SIGKILLed: every service it started gets SIGTERM (parent-death signal).
    services = stack_state(state_dir).services
    # A service the state file names by a pid that is gone (publish would post to nothing)
    stale_records = [name for name, s in services.items() if not _pid_alive(s["pid"])]
    run_killed_at = time.monotonic()
    run.process.kill()
    run.process.wait(timeout=10)
    while any(_pid_alive(s["pid"]) for s in services.values()):
        if time.monotonic() - run_killed_at > 30:
            break
        time.sleep(0.2)
    gone_after = time.monotonic() - run_killed_at
    orphans = [name for name, s in services.items() if _pid_alive(s["pid"])]
    ports = [int(s["url"].rsplit(":", 1)[1]) for s in services.values()]
    listening = [port for port in ports if _answers("127.0.0.1", port)]

    report_figures(
        "run_restarts_service",
        lost=len(patients) - found[0],
        duplicated=found[1],
        stale=len(stale_records),
        seconds_to_recover=round(recovered, 1),
        readyz_during_fault=sorted(said),
        published=published.stdout.strip().splitlines()[-1] if published.stdout else "",
        orphans_after_run_sigkill=orphans,
        ports_still_listening=listening,
        seconds_until_services_gone=round(gone_after, 1),
        broker_and_postgres_outlive_the_run=LocalStack(state_dir).state() is not None,
    )
    assert published.returncode == 0, published.stderr
    assert "accepted 8" in published.stdout
    assert "classifier-1 exited (-9): restarting in 1 s" in run.output
    assert found == (len(patients), 0)
    assert stale_records == [] and services["classifier-1"]["pid"] != worker["pid"]
    assert orphans == [] and listening == []
