"""A loop that dies stops its process with exit status 1, and /healthz says so first
(`shared.supervision`): never a live process with a dead consumer."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from shared.ports import free_port
from tests.conftest import ARTIFACTS
from tests.faults.helpers import service_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("consumer", ["events", "determinations_backfill"])
def test_a_consumer_that_dies_fails_healthz_and_exits_1(settings, endpoints, tmp_path, consumer):
    port = free_port()
    env = service_env(
        settings.kafka_bootstrap_servers,
        endpoints.database_url,
        settings.kafka_topic_prefix,
        tmp_path,
    ) | {"BROKEN_CONSUMER": consumer}
    log = ARTIFACTS / f"coordinator-broken-consumer-{port}.stderr.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.broken_consumer", "coordinator"]
            + ["--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
        )
    answers: list[tuple[int, dict]] = []
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                answers.append((answer.status_code, answer.json()))
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    text = log.read_text(errors="replace")
    assert status == 1, text[-3000:]
    assert (200, {"status": "ok"}) in answers  # alive before the loop died
    assert '"loop_died"' in text and f'"loop": "{consumer}"' in text
    failing = [body for code, body in answers if code == 503]
    # Between the death and the exit the server may already have stopped answering.
    assert all(body == {"status": "failing", "dead_loops": [consumer]} for body in failing)
