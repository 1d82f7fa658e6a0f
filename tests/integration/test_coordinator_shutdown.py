"""SIGTERM stops the coordinator gracefully, mid-stream, on the real broker and PostgreSQL.

A real `painpath coordinator` process gets a burst of real determinations (the classifier's rules
over simulated patients) and is sent SIGTERM while it is working through them. It must exit
promptly and cleanly, with the consumer group's committed offsets exactly at what it applied to
the database (nothing applied but left uncommitted, nothing committed but not applied) and its
outbox published. Restarted on the same group, it re-applies nothing and ends with the tasks of
an uninterrupted run (`expected_tasks`), each task change on `care.tasks.v1` once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.coordinator.app import GROUP
from shared.kafka import client_options
from shared.topics import CARE_TASKS, DETERMINATIONS
from tests.conftest import read_topic
from tests.faults.helpers import (
    ADMIN_TOKEN,
    ServiceProcess,
    compare_tasks,
    determination_feed,
    expected_tasks,
    produce_determinations,
    published_sequences,
    service_env,
    wait_for,
)
from tests.faults.test_coordinator_faults import already_applied, remember, settled

pytestmark = pytest.mark.integration

EXIT_DEADLINE = 30.0
# uvicorn stops gracefully, then re-raises the SIGTERM it caught so the exit status says why the
# process ended (see tests/integration/test_cli.py): -SIGTERM after a clean stop, or 0.
CLEAN_EXIT = (0, -signal.SIGTERM)


async def committed_offsets(settings, topic) -> dict[int, int]:
    """The coordinator group's committed offset per partition (0 where none), read by a consumer
    of the group that never joins it (the broker's admin API does not answer this)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings, settings.kafka_bootstrap_servers),
        group_id=f"{settings.kafka_topic_prefix}{GROUP}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        name = topic.full_name(settings.kafka_topic_prefix)
        return {
            p: await consumer.committed(TopicPartition(name, p)) or 0
            for p in range(topic.partitions)
        }
    finally:
        await consumer.stop()


async def applied_offsets(connection, topic_name: str, partitions: int) -> dict[int, int]:
    """Per partition, the offset after the last determination record applied (0 where none),
    and whether the applied offsets run without a hole from 0."""
    rows = await connection.fetch(
        """SELECT kafka_partition, max(kafka_offset) + 1 AS next, count(*) AS applied
           FROM determinations WHERE topic = $1 GROUP BY kafka_partition""",
        topic_name,
    )
    found = {row["kafka_partition"]: row for row in rows}
    for row in rows:
        assert row["next"] == row["applied"], f"a hole in partition {row['kafka_partition']}"
    return {p: found[p]["next"] if p in found else 0 for p in range(partitions)}


def log_lines(path, since: int) -> list[dict]:
    """The JSON log lines written after byte `since` (non-JSON lines kept as {"raw": ...})."""
    lines = []
    with path.open("rb") as log:
        log.seek(since)
        for line in log.read().decode(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
    return lines


async def test_sigterm_mid_stream_stops_cleanly_with_offsets_at_what_was_applied(
    settings, endpoints, tmp_path
):
    database_url = endpoints.database_url
    prefix = settings.kafka_topic_prefix
    topic_name = DETERMINATIONS.full_name(prefix)
    determinations = determination_feed(patients=300, seed=59)
    remember(determinations)
    expected = expected_tasks(determinations)
    env = service_env(settings.kafka_bootstrap_servers, database_url, prefix, tmp_path)
    coordinator = ServiceProcess("coordinator", env, "coordinator-sigterm")
    connection = await asyncpg.connect(database_url)

    async def applied() -> int:
        return await connection.fetchval("SELECT count(*) FROM determinations")

    try:
        coordinator.start()
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            await produce_determinations(
                settings.kafka_bootstrap_servers, prefix, determinations, per_second=100_000
            )
            target = len(determinations) // 4

            async def mid_stream() -> bool:
                tasks = await connection.fetchval("SELECT count(*) FROM tasks")
                return tasks > 0 and await applied() >= target

            await wait_for(mid_stream, 60, "a quarter of the determinations applied", 0.05)
            log_start = coordinator.log.stat().st_size
            at_signal = await applied()
            signalled = time.monotonic()
            coordinator.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(coordinator.process.wait, EXIT_DEADLINE)
            shutdown_s = time.monotonic() - signalled

            at_exit = await applied()
            committed = await committed_offsets(settings, DETERMINATIONS)
            in_database = await applied_offsets(connection, topic_name, DETERMINATIONS.partitions)
            unpublished = await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            lines = log_lines(coordinator.log, log_start)
            events = [line.get("event") for line in lines]
            print(
                f"\n[sigterm] determinations={len(determinations)} applied_at_signal={at_signal}"
                f" applied_at_exit={at_exit} exit_status={status} shutdown_s={shutdown_s:.2f}"
                f" committed={sum(committed.values())} unpublished_at_exit={unpublished}"
            )

            assert status in CLEAN_EXIT, f"exit status {status}: see {coordinator.log}"
            assert shutdown_s < EXIT_DEADLINE
            assert at_exit < len(determinations), "the stream was over before SIGTERM"
            stopped = [line for line in lines if line.get("event") == "coordinator_stopped"]
            assert len(stopped) == 1, f"no structured shutdown line in {coordinator.log}"
            assert stopped[0]["level"] == "info"
            assert not [e for e in events if e and e.startswith("relay_failed")], events
            assert not [line for line in lines if line.get("level") in ("error", "critical")]
            assert not [line for line in lines if "Traceback" in json.dumps(line)]
            # Offsets committed exactly at what was applied, partition by partition.
            assert committed == in_database
            assert unpublished == 0, "task changes left in the outbox at exit"

            # Restarted on the same group: the rest of the stream, nothing twice.
            coordinator.start()
            await coordinator.wait_ready(client)
            state = await settled(settings, database_url, len(determinations), timeout=120)
            metrics = (await client.get(coordinator.url("/metrics"))).text
    finally:
        coordinator.stop()
        await connection.close()

    reapplied = already_applied(metrics)
    changes = await read_topic(settings, CARE_TASKS, expected=len(state["outbox"]), timeout=30)
    sequences = published_sequences(changes)
    tasks = compare_tasks(state["tasks"], expected)
    print(f"[sigterm] after restart: re-applied={reapplied} {tasks} {sequences}")
    assert reapplied == 0, "records applied before SIGTERM were delivered again"
    assert state["records"] == len(determinations)  # each record applied exactly once
    assert tasks["tasks_lost"] == tasks["tasks_duplicated"] == 0
    assert state["open_twice"] == 0
    assert state["outbox"] == list(range(1, len(state["outbox"]) + 1))
    assert sequences["task_changes"] == len(state["outbox"])
    assert sequences["sequence_gaps"] == sequences["republished_different"] == 0
    assert sequences["republished_identical"] == 0, "the relay published a change twice"


STREAM_DEADLINE = 10.0


def exit_status(process, timeout: float) -> int | None:
    """The process's exit status, or None if it is still running after `timeout`."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_an_open_task_stream_does_not_hold_the_stop(settings, endpoints, tmp_path):
    env = service_env(
        settings.kafka_bootstrap_servers,
        endpoints.database_url,
        settings.kafka_topic_prefix,
        tmp_path,
    )
    coordinator = ServiceProcess("coordinator", env, "coordinator-sigterm-stream")
    coordinator.start()
    try:
        async with httpx.AsyncClient(timeout=None) as client:
            await coordinator.wait_ready(client)
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with client.stream("GET", coordinator.url("/v1/stream"), headers=headers) as live:
                assert live.status_code == 200
                coordinator.process.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(exit_status, coordinator.process, STREAM_DEADLINE)
            # The stream closed by its client, the held stop completes.
            after_close = await asyncio.to_thread(exit_status, coordinator.process, EXIT_DEADLINE)
        assert after_close in CLEAN_EXIT
        assert status in CLEAN_EXIT, f"still running {STREAM_DEADLINE:.0f} s after SIGTERM"
    finally:
        coordinator.stop()
