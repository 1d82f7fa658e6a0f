"""The command line as a user runs it: `painpath stack`, `painpath gateway`, `painpath publish`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.ports import free_port
from shared.stack import LocalStack, StackError
from shared.topics import ALL_TOPICS, EVENTS
from tests.conftest import API_KEY, ARTIFACTS, TEST_KEYS, read_topic, remember_patient_ids

pytestmark = pytest.mark.integration

PAINPATH = [sys.executable, "-m", "painpath"]


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        PAINPATH + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A folder outside pytest's rotated temporary folders (see the `stack` fixture)."""
    with tempfile.TemporaryDirectory(prefix="painpath-test-cli-") as folder:
        yield Path(folder)


async def count_tables(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await connection.close()


def local_env(state_dir: Path, broker_port: int | None = None) -> dict[str, str]:
    """The environment of a local stack of its own (no broker or database of the caller's)."""
    env = os.environ | {
        "PAINPATH_STATE_DIR": str(state_dir),
        "PAINPATH_BROKER_PORT": str(broker_port or free_port()),
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("DATABASE_URL", None)
    return env


def test_stack_up_is_idempotent_and_down_stops_it(state_dir: Path):
    env = local_env(state_dir)

    first = run(["stack", "up"], env)
    second = run(["stack", "up"], env)
    stack = LocalStack(state_dir)
    state = stack.state()
    topics = run(["topics", "create"], env)
    topics_again = run(["topics", "create"], env)
    migrated = run(["db", "migrate"], env)
    tables_migrated = asyncio.run(count_tables(state.database_url))
    down = run(["stack", "down"], env)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert state is not None
    assert first.stdout == second.stdout  # the same broker (pid, port) and database, reused
    assert f"pid {state.broker_pid}" in first.stdout
    assert topics.stdout.count("exists") == len(ALL_TOPICS)  # `stack up` created them
    assert topics_again.stdout.count("exists") == len(ALL_TOPICS)
    assert "0001_gateway_idempotency" in migrated.stdout
    assert down.returncode == 0, down.stderr
    assert stack.state() is None
    assert not (state_dir / "postgres" / "postmaster.pid").exists()

    # A new broker has an empty log, but the database is never emptied by `up` (issue 13 item
    # 4): it says so, and `--fresh` is the one way to empty it, refused while it is in use.
    again = run(["stack", "up"], env)
    state = stack.state()
    tables = asyncio.run(count_tables(state.database_url))
    in_use = asyncio.run(reset_while_connected(stack, state))
    stack.reset_database(state)
    tables_after_reset = asyncio.run(count_tables(state.database_url))
    run(["stack", "down"], env)
    assert again.returncode == 0, again.stderr
    assert "the database is kept as it was, nothing dropped" in again.stdout
    assert state.broker_lost
    assert tables == tables_migrated > 0
    assert in_use == (
        "the local database has 1 other connection(s) (painpath-test-user): stop the services"
        " using it before emptying it"
    )
    assert tables_after_reset == 0
    assert not LocalStack(state_dir)._recorded().broker_lost  # the empty database is in step


async def reset_while_connected(stack: LocalStack, state) -> str:
    """What `reset_database` says while another client is connected (it must refuse)."""
    connection = await asyncpg.connect(
        state.database_url, server_settings={"application_name": "painpath-test-user"}
    )
    try:
        await asyncio.to_thread(stack.reset_database, state)
    except StackError as refused:
        return str(refused)
    finally:
        await connection.close()
    return "not refused"


def test_a_taken_broker_port_is_one_line_naming_the_variable(state_dir: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = local_env(state_dir, port)
        result = run(["stack", "up"], env)
        run(["stack", "down"], env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: PAINPATH_BROKER_PORT={port}: port {port} on 127.0.0.1 is taken by another"
        " program; stop it or set PAINPATH_BROKER_PORT to a free port"
    )
    assert "Traceback" not in result.stderr


@pytest.fixture
def gateway_process(settings, endpoints):
    """`painpath gateway` as a separate process, against the test's topics and database."""
    port = free_port()
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": endpoints.database_url,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "GATEWAY_API_KEYS": json.dumps(
            [
                {"name": k.name, "key": k.key.get_secret_value(), "sources": k.sources}
                for k in TEST_KEYS
            ]
        ),
        "GATEWAY_PORT": str(port),
        "LOG_PSEUDONYM_KEY": "test-pseudonym-key",
    }
    log_file = ARTIFACTS / f"gateway-{port}.stderr.log"
    stderr = log_file.open("w")
    process = subprocess.Popen(PAINPATH + ["gateway"], env=env, stderr=stderr, stdout=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the gateway exited at start: see test-artifacts"
        assert time.monotonic() < deadline, "the gateway did not become ready"
        time.sleep(0.1)
    yield url, env
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it ended.
    assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    stderr.close()
    assert '"event": "gateway_stopped"' in log_file.read_text()


async def test_publish_lands_a_file_on_the_topic_and_explains_rejected_lines(
    gateway_process, settings, tmp_path
):
    url, env = gateway_process
    events = [
        {
            "specversion": "1.0",
            "id": f"evt-cli-{i}",
            "source": "urn:hospital:st-olaf:ehr",
            "type": "pain.score.recorded.v1",
            "time": "2026-03-02T09:30:00Z",
            "data": {"patient_id": f"pt-cli-{i % 7:04d}", "score": i % 11},
        }
        for i in range(1200)
    ]
    lines = [json.dumps(event) for event in events]
    lines[10] = lines[10].replace('"score": 10', '"score": 12')
    lines[20] = "{truncated"
    lines[30] = lines[30].replace('"2026-03-02T09:30:00Z"', '"2026-03-02T09:30:00"')
    file = tmp_path / "feed.jsonl"
    file.write_text("\n".join(lines) + "\n")
    for line in lines:
        remember_patient_ids(line.encode())

    first = run(["publish", str(file), "--gateway", url, "--api-key", API_KEY], env)
    lines[0] = lines[0].replace('"score": 0', '"score": 1')  # the same (source, id), other content
    changed = tmp_path / "changed.jsonl"
    changed.write_text("\n".join(lines) + "\n")
    again = run(["publish", str(changed), "--gateway", url, "--api-key", API_KEY, "--strict"], env)

    assert first.returncode == 0, first.stderr
    assert "accepted 1197  duplicate 0  conflict 0  rejected 3" in first.stdout
    assert (
        "line 11: rejected: data.score: nrs score must be a whole number from 0 to 10"
        in first.stdout
    )
    assert "line 21: not valid JSON" in first.stdout
    assert "line 31: rejected: time: must be an RFC 3339 timestamp with an offset" in first.stdout
    assert again.returncode == 1  # --strict: some lines were rejected
    assert "accepted 0  duplicate 1196  conflict 1  rejected 3" in again.stdout
    assert "line 1: conflict: id:" in again.stdout
    records = await read_topic(settings, EVENTS, expected=1197, timeout=20)
    assert len(records) == 1197
    assert len({json.loads(r.value)["id"] for r in records}) == 1197


def test_publish_with_a_wrong_key_says_so(gateway_process, tmp_path):
    url, env = gateway_process
    file = tmp_path / "one.jsonl"
    file.write_text("{}\n")

    result = run(["publish", str(file), "--gateway", url, "--api-key", "nope"], env)

    assert result.returncode == 2
    assert "refused the API key (401)" in result.stderr


def test_stack_down_is_refused_while_a_run_uses_the_stack(state_dir: Path):
    env = local_env(state_dir)
    assert run(["stack", "up"], env).returncode == 0
    stack = LocalStack(state_dir)
    stack.update(run_pid=os.getpid())  # a live "run"
    refused = run(["stack", "down"], env)
    stack.update(run_pid=0)
    down = run(["stack", "down"], env)

    assert refused.returncode == 2
    assert f"a painpath run (pid {os.getpid()}) uses the local stack" in refused.stderr
    assert down.returncode == 0, down.stderr
    assert stack.state() is None
