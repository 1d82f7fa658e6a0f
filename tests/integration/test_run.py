"""`painpath run` (what `make run` calls), as a user runs it: replay, summary, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shared.ports import free_port
from shared.stack import LocalStack, _alive, _answers

pytestmark = pytest.mark.integration


def run_env(state_dir: Path) -> dict[str, str]:
    """The environment of a `painpath run` of its own: its state folder, free ports, the local
    stack (no broker, database, keys or topic prefix of the caller's), short session timeouts.
    The second classifier worker takes CLASSIFIER_PORT + 1."""
    env = os.environ | {
        "PAINPATH_STATE_DIR": str(state_dir),
        "PAINPATH_BROKER_PORT": str(free_port()),
        "GATEWAY_PORT": str(free_port()),
        "COORDINATOR_PORT": str(free_port()),
        "CLASSIFIER_PORT": str(free_port()),
        "CLASSIFIER_SESSION_TIMEOUT_SECONDS": "6",
        "COORDINATOR_SESSION_TIMEOUT_SECONDS": "6",
    }
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "GATEWAY_API_KEYS",
        "COORDINATOR_TOKENS",
        "KAFKA_TOPIC_PREFIX",
        "LOG_PSEUDONYM_KEY",
    ):
        env.pop(name, None)
    return env


def start_run(env: dict[str, str], args: list[str], timeout: float):
    """`painpath run ARGS`, read until it says it is running; the process and the lines read."""
    run = subprocess.Popen(
        [sys.executable, "-m", "painpath", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + timeout
    for line in run.stdout:
        lines.append(line)
        if "running: Ctrl-C stops every service" in line:
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    return run, lines


def test_run_replays_a_feed_prints_the_summary_and_stops_everything_on_ctrl_c():
    with tempfile.TemporaryDirectory(prefix="painpath-test-run-") as folder:
        state_dir = Path(folder)
        env = run_env(state_dir)
        classifier_port = int(env["CLASSIFIER_PORT"])
        assert free_port() != classifier_port + 1  # the second worker's port is free enough
        del env["CLASSIFIER_SESSION_TIMEOUT_SECONDS"]  # the local stack's own choice
        run, lines = start_run(env, ["--patients", "30", "--seed", "4"], timeout=240)
        state = LocalStack(state_dir).state()
        broker_pid = state.broker_pid
        worker = Path(f"/proc/{state.services['classifier-1']['pid']}/environ").read_bytes()

        run.send_signal(signal.SIGINT)
        rest = run.stdout.read()
        status = run.wait(timeout=60)
        output = "".join(lines) + rest

    assert status == 0, output[-3000:]
    assert b"CLASSIFIER_SESSION_TIMEOUT_SECONDS=3\x00" in worker  # a 3 s join on the local broker
    for expected in (
        "publishing",
        "patients by status",
        "tasks by role and state",
        "slowest event-to-task latency",
        "dashboard: http://127.0.0.1:",
        "stopped the local broker and PostgreSQL",
    ):
        assert expected in output, expected
    assert "rejected 0" not in output  # the feed's invalid lines were refused, and said so
    assert not _alive(broker_pid)
    service_ports = [classifier_port, classifier_port + 1] + [
        int(env[name]) for name in ("GATEWAY_PORT", "COORDINATOR_PORT", "PAINPATH_BROKER_PORT")
    ]
    assert [port for port in service_ports if _answers("127.0.0.1", port)] == []


def hold_port(port: int) -> socket.socket | None:
    """Listen on `port` if it is free (if not, another program holds it: taken either way)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def test_taken_default_ports_are_replaced_and_said_and_set_tokens_are_named():
    """Issue 13 item 10: the broker's and the coordinator's default ports taken; the run takes
    free ones, says so in one line each, and records them where `painpath publish` looks."""
    held = [hold_port(19092), hold_port(8090)]
    try:
        with tempfile.TemporaryDirectory(prefix="painpath-test-run-ports-") as folder:
            state_dir = Path(folder)
            env = run_env(state_dir)
            for name in ("PAINPATH_BROKER_PORT", "COORDINATOR_PORT"):
                env.pop(name)
            env["COORDINATOR_TOKENS"] = (
                '[{"name": "dr-test", "token": "a-test-token-0001", "role": "admin"}]'
            )
            run, lines = start_run(env, ["--patients", "0", "--classifiers", "1"], timeout=120)
            state = LocalStack(state_dir).state()
            run.send_signal(signal.SIGINT)
            output = "".join(lines) + run.stdout.read()
            status = run.wait(timeout=60)
    finally:
        for sock in held:
            if sock is not None:
                sock.close()

    assert status == 0, output[-3000:]
    broker_port = int(state.bootstrap_servers.rsplit(":", 1)[1])
    coordinator_url = state.services["coordinator"]["url"]
    assert broker_port != 19092 and not coordinator_url.endswith(":8090")
    assert (
        f"broker: port 19092 (PAINPATH_BROKER_PORT) is taken: using {broker_port} instead" in output
    )
    coordinator_port = coordinator_url.rsplit(":", 1)[1]
    assert (
        f"coordinator: port 8090 (COORDINATOR_PORT) is taken: using {coordinator_port} instead"
        in output
    )
    assert "(token: one of COORDINATOR_TOKENS: dr-test (admin))" in output
    assert "painpath stack key --admin" not in output
    assert "a-test-token-0001" not in output
    assert "Traceback" not in output
