"""Faults in the coordinator: PostgreSQL stopped mid-stream, the coordinator killed mid-stream.

The coordinator runs as a real `painpath coordinator` process fed real determinations (the
classifier's rules over simulated patients, sampled as their histories grow). Its tasks are
compared with `expected_tasks`, the pure plan reconciliation replayed over the same
determinations: (patient, task key, state, determination id) of every task, as a multiset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.coordinator.app import GROUP
from services.coordinator.relay import NOTIFIER_APPLICATION_NAME
from shared.kafka import create_topics, group_lag
from shared.settings import Settings
from shared.stack import LocalStack
from shared.topics import CARE_TASKS, DETERMINATIONS
from tests.conftest import SENT_PATIENT_IDS, read_topic
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    PSEUDONYM_KEY,
    ServiceProcess,
    compare_tasks,
    coordinator_state,
    determination_feed,
    expected_tasks,
    produce_determinations,
    published_sequences,
    service_env,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

GATEWAY_KEY = "fault-gateway-key"
OUTAGE_SECONDS = 20


def remember(determinations) -> None:
    SENT_PATIENT_IDS.update(d.patient_id for d in determinations if len(d.patient_id) >= 6)


async def settled(settings: Settings, database_url: str, records: int, timeout: float) -> dict:
    """Until every determination record is applied, its offset committed and every task change
    published; returns the database's state."""
    group = f"{settings.kafka_topic_prefix}{GROUP}"

    async def done():
        connection = await asyncpg.connect(database_url)
        try:
            state = await coordinator_state(connection)
        finally:
            await connection.close()
        if state["records"] < records or state["unpublished"]:
            return None
        lag = await group_lag(settings, settings.kafka_bootstrap_servers, group, DETERMINATIONS)
        return state if lag == 0 else None

    return await wait_for(done, timeout, "the coordinator catching up", interval=1.0)


async def listening_sessions(database_url: str) -> int:
    """Sessions listening for outbox notifications (the coordinator's LISTEN connection)."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            NOTIFIER_APPLICATION_NAME,
        )
    finally:
        await connection.close()


def last_per_patient(records) -> dict[str, str]:
    last = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        last[record.key.decode()] = json.loads(record.value)["determination_id"]
    return last


# -- 4. PostgreSQL stopped for 20 s ------------------------------------------------------------


@pytest.fixture
def own_stack() -> Iterator[tuple[LocalStack, Settings]]:
    """A broker and a PostgreSQL of this test's own: stopping the session's database would
    break every other test."""
    with tempfile.TemporaryDirectory(prefix="painpath-fault-pg-") as folder:
        local = LocalStack(Path(folder), broker_port=None)
        state = local.up()
        settings = Settings(
            kafka_bootstrap_servers=state.bootstrap_servers,
            database_url=state.database_url,
            kafka_topic_prefix="fault.",
            log_pseudonym_key=PSEUDONYM_KEY,
            _env_file=None,
        )
        try:
            yield local, settings
        finally:
            local.down()


def stop_postgres(local: LocalStack) -> None:
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=local.pgdata, user=local._pg_user())


def start_postgres(local: LocalStack) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    server = pgserver.get_server(local.pgdata, cleanup_mode=None)  # this process's handle
    with server._lock:
        server.ensure_postgres_running()


async def test_postgres_down_for_20_seconds_mid_stream_is_waited_out_and_loses_nothing(
    own_stack,
):
    local, settings = own_stack
    database_url = settings.database_url.get_secret_value()
    prefix = settings.kafka_topic_prefix
    await create_topics(settings, settings.kafka_bootstrap_servers)
    determinations = determination_feed(patients=200, seed=41)
    remember(determinations)
    expected = expected_tasks(determinations)
    env = service_env(
        settings.kafka_bootstrap_servers, database_url, prefix, local.state_dir / "services"
    )
    coordinator = ServiceProcess("coordinator", env, "coordinator-pg-outage")
    gateway = ServiceProcess(
        "gateway",
        env
        | {"GATEWAY_API_KEYS": json.dumps([{"name": "f", "key": GATEWAY_KEY, "sources": ["*"]}])},
        "gateway-pg-outage",
    )
    event = {
        "specversion": "1.0",
        "id": "outage-1",
        "source": "urn:hospital:st-olaf:ehr",
        "type": "pain.score.recorded.v1",
        "time": "2026-01-01T09:00:00Z",
        "data": {"patient_id": "pt-fault-outage-01", "score": 6},
    }
    SENT_PATIENT_IDS.add(event["data"]["patient_id"])
    coordinator.start()
    try:
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            gateway.start()
            await gateway.wait_ready(client)
            # About 40 s of determinations: some before, during and after the outage.
            feeding = asyncio.create_task(
                produce_determinations(
                    settings.kafka_bootstrap_servers,
                    prefix,
                    determinations,
                    per_second=len(determinations) / 40,
                )
            )

            async def applied() -> int:
                connection = await asyncpg.connect(database_url)
                try:
                    return await connection.fetchval("SELECT count(*) FROM determinations")
                finally:
                    await connection.close()

            await wait_for(
                lambda: applied_at_least(applied, 0.1 * len(determinations)),
                timeout=60,
                what="10 % of the determinations applied",
            )
            before_outage = await applied()
            listening_before = await listening_sessions(database_url)
            stopped_at = time.monotonic()
            await asyncio.to_thread(stop_postgres, local)
            samples: list[tuple[float, int | None, int | None]] = []
            posted = None
            while time.monotonic() - stopped_at < OUTAGE_SECONDS:
                samples.append(
                    (
                        time.monotonic() - stopped_at,
                        await coordinator.readiness(client),
                        await gateway.readiness(client),
                    )
                )
                if posted is None and time.monotonic() - stopped_at > 5:
                    posted = (
                        await client.post(
                            gateway.url("/v1/events"),
                            json=event,
                            headers={"X-API-Key": GATEWAY_KEY},
                            timeout=30,
                        )
                    ).status_code
                await asyncio.sleep(0.5)
            await asyncio.to_thread(start_postgres, local)
            restarted_at = time.monotonic()
            coordinator_ready = await coordinator.wait_ready(client, timeout=120)
            gateway_ready = await gateway.wait_ready(client, timeout=120)
            accepted_after = (
                await client.post(
                    gateway.url("/v1/events"), json=event, headers={"X-API-Key": GATEWAY_KEY}
                )
            ).status_code
            await feeding
            state = await settled(settings, database_url, len(determinations), timeout=180)
            caught_up = time.monotonic() - restarted_at
            # The notifier's LISTEN connection died with the server: it must come back by itself.
            listen_deadline = time.monotonic() + 30
            while (listening_after := await listening_sessions(database_url)) < 1:
                if time.monotonic() > listen_deadline:
                    break
                await asyncio.sleep(0.5)
            alive = coordinator.alive and gateway.alive
    finally:
        coordinator.stop()
        gateway.stop()

    topic = await read_topic(settings, DETERMINATIONS, expected=len(determinations), timeout=30)
    changes = await read_topic(settings, CARE_TASKS, expected=len(state["outbox"]), timeout=30)
    delays = sorted(
        {float(d) for d in re.findall(r'"delay_s": ([0-9.]+)', coordinator.log.read_text())}
    )
    during = [sample for sample in samples if sample[0] > 3]
    tasks = compare_tasks(state["tasks"], expected)
    last = last_per_patient(topic)
    current_wrong = sum(1 for p, d in last.items() if state["current"].get(p) != d)
    sequences = published_sequences(changes)
    report_figures(
        "postgres_outage_20s",
        determinations=len(determinations),
        applied_before_outage=before_outage,
        outage_s=OUTAGE_SECONDS,
        coordinator_not_ready_samples=sum(1 for s in during if s[1] == 503),
        gateway_not_ready_samples=sum(1 for s in during if s[2] == 503),
        samples=len(during),
        gateway_post_during_outage=posted,
        gateway_post_after=accepted_after,
        retry_delays_s=delays,
        coordinator_ready_after_restart_s=round(coordinator_ready, 1),
        gateway_ready_after_restart_s=round(gateway_ready, 1),
        recovery_s=round(caught_up, 1),
        coordinator_restarts=coordinator.starts - 1,
        listen_sessions_before=listening_before,
        listen_sessions_after=listening_after,
        patients_with_wrong_current_determination=current_wrong,
        outbox_sequence_gap_free=state["outbox"] == list(range(1, len(state["outbox"]) + 1)),
        **tasks,
        **sequences,
    )
    assert alive and coordinator.starts == 1
    assert listening_before == listening_after == 1, "the outbox notifier did not LISTEN again"
    assert during and all(s[1] == 503 for s in during), "coordinator ready while PG was down"
    assert all(s[2] == 503 for s in during), "gateway ready while PG was down"
    assert posted == 503 and accepted_after == 202
    assert len(delays) >= 3 and delays[-1] > delays[0], "no backoff in the retries"
    assert state["records"] == len(determinations)
    assert tasks["tasks_lost"] == tasks["tasks_duplicated"] == 0
    assert state["open_twice"] == 0 and current_wrong == 0
    assert state["outbox"] == list(range(1, len(state["outbox"]) + 1))
    assert sequences["sequence_gaps"] == sequences["republished_different"] == 0
    assert sequences["task_changes"] == len(state["outbox"])


async def applied_at_least(applied, count: float) -> bool:
    return await applied() >= count


# -- 5. the coordinator killed mid-stream ------------------------------------------------------

KILLS = 3


async def test_the_coordinator_killed_mid_stream_duplicates_no_task_and_no_task_change(
    settings, endpoints, tmp_path
):
    database_url = endpoints.database_url
    prefix = settings.kafka_topic_prefix
    determinations = determination_feed(patients=200, seed=43)
    remember(determinations)
    expected = expected_tasks(determinations)
    env = service_env(settings.kafka_bootstrap_servers, database_url, prefix, tmp_path)
    coordinator = ServiceProcess("coordinator", env, "coordinator-sigkill")
    rng = random.Random(uuid.uuid4().int)  # a kill at another moment each run
    size = -(-len(determinations) // (KILLS + 1))
    parts = [determinations[i : i + size] for i in range(0, len(determinations), size)]

    async def applied() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetchval("SELECT count(*) FROM determinations")
        finally:
            await connection.close()

    coordinator.start()
    redelivered = 0
    kills = []
    try:
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            for part in parts[:KILLS]:
                before = await applied()
                await produce_determinations(
                    settings.kafka_bootstrap_servers, prefix, part, per_second=100_000
                )
                target = before + int(rng.uniform(0.15, 0.85) * len(part))
                await wait_for(
                    lambda target=target: applied_at_least(applied, target),
                    timeout=120,
                    what="part of the burst applied",
                    interval=0.02,
                )
                redelivered += already_applied((await client.get(coordinator.url("/metrics"))).text)
                at = await applied()
                killed = time.monotonic()
                coordinator.kill()
                coordinator.start()
                await coordinator.wait_ready(client)
                kills.append(
                    {"applied_at_kill": at, "ready_after_s": round(time.monotonic() - killed, 1)}
                )
            await produce_determinations(
                settings.kafka_bootstrap_servers, prefix, parts[KILLS], per_second=100_000
            )
            started = time.monotonic()
            state = await settled(settings, database_url, len(determinations), timeout=240)
            caught_up = time.monotonic() - started
            redelivered += already_applied((await client.get(coordinator.url("/metrics"))).text)
    finally:
        coordinator.stop()

    changes = await read_topic(settings, CARE_TASKS, expected=len(state["outbox"]), timeout=30)
    topic = await read_topic(settings, DETERMINATIONS, expected=len(determinations), timeout=30)
    tasks = compare_tasks(state["tasks"], expected)
    last = last_per_patient(topic)
    current_wrong = sum(1 for p, d in last.items() if state["current"].get(p) != d)
    sequences = published_sequences(changes)
    report_figures(
        "coordinator_sigkill",
        determinations=len(determinations),
        kills=kills,
        records_applied_again_after_restart=redelivered,
        caught_up_after_last_restart_s=round(caught_up, 1),
        patients_with_wrong_current_determination=current_wrong,
        open_tasks_twice=state["open_twice"],
        outbox_sequence_gap_free=state["outbox"] == list(range(1, len(state["outbox"]) + 1)),
        **tasks,
        **sequences,
    )
    assert state["records"] == len(determinations)  # each record applied exactly once
    assert tasks["tasks_lost"] == tasks["tasks_duplicated"] == 0
    assert state["open_twice"] == 0 and current_wrong == 0
    assert state["outbox"] == list(range(1, len(state["outbox"]) + 1))
    assert sequences["sequence_gaps"] == sequences["republished_different"] == 0
    assert sequences["task_changes"] == len(state["outbox"])


def already_applied(metrics: str) -> int:
    found = re.search(
        r'painpath_coordinator_determinations_total\{result="already_applied"\} ([0-9.]+)', metrics
    )
    return int(float(found.group(1))) if found else 0


# -- 4b. PostgreSQL stopped while a statement of the coordinator is running --------------------


async def test_postgres_stopped_while_a_statement_runs_is_waited_out_too(own_stack):
    """Deterministic: the planning lock is held by this test, so the coordinator's transaction
    is waiting inside a statement when PostgreSQL stops (-m fast terminates it; asyncpg raises
    InterfaceError or ConnectionDoesNotExistError, both waited out as an outage)."""
    from services.coordinator.store import PLANNING_LOCK

    local, settings = own_stack
    database_url = settings.database_url.get_secret_value()
    await create_topics(settings, settings.kafka_bootstrap_servers)
    determination = determination_feed(patients=3, seed=47)[-1]
    remember([determination])
    env = service_env(
        settings.kafka_bootstrap_servers,
        database_url,
        settings.kafka_topic_prefix,
        local.state_dir / "services",
    )
    coordinator = ServiceProcess("coordinator", env, "coordinator-pg-inflight")
    coordinator.start()
    try:
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            holder = await asyncpg.connect(database_url)
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT pg_advisory_xact_lock($1)", PLANNING_LOCK)
            await produce_determinations(
                settings.kafka_bootstrap_servers,
                settings.kafka_topic_prefix,
                [determination],
                per_second=100,
            )

            async def coordinator_waits_for_the_lock() -> bool:
                return bool(
                    await holder.fetchval(
                        """SELECT count(*) FROM pg_locks
                           WHERE locktype = 'advisory' AND NOT granted"""
                    )
                )

            await wait_for(coordinator_waits_for_the_lock, 60, "the coordinator blocked")
            await asyncio.to_thread(stop_postgres, local)
            with contextlib.suppress(Exception):
                await holder.close(timeout=1)
            await asyncio.sleep(3)
            await asyncio.to_thread(start_postgres, local)
            restarted = time.monotonic()
            ready = None
            while time.monotonic() - restarted < 45:
                if await coordinator.readiness(client) == 200:
                    ready = time.monotonic() - restarted
                    break
                await asyncio.sleep(0.5)
            checks = (await client.get(coordinator.url("/readyz"))).json()["checks"]
            connection = await asyncpg.connect(database_url)
            applied = await connection.fetchval("SELECT count(*) FROM determinations")
            await connection.close()
            alive = coordinator.alive
    finally:
        coordinator.stop()

    report_figures(
        "postgres_stopped_mid_statement",
        coordinator_alive=alive,
        ready_after_restart_s=None if ready is None else round(ready, 1),
        readiness_checks=checks,
        determinations_applied=applied,
        determinations_expected=1,
    )
    assert alive
    assert ready is not None, f"never ready again: {checks}"
    assert applied == 1
