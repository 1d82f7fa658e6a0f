"""One trace id follows an event from the gateway's request to the task change."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from shared.topics import CARE_TASKS, DETERMINATIONS
from tests.conftest import API_KEY, ARTIFACTS, RUN_LOG, read_topic
from tests.integration.test_classifier_stream import workers  # noqa: F401  (fixture)
from tests.integration.test_coordinator import coordinator  # noqa: F401  (fixture)
from tests.unit.policy.clinical_events import refractory_history

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def trace_ids(records) -> set[str]:
    return {dict(r.headers)["traceparent"].decode().split("-")[1] for r in records}


async def test_a_trace_follows_an_event_from_the_gateway_to_the_task_change(
    gateway,
    coordinator,
    workers,
    settings,
    tmp_path,  # noqa: F811
):
    history = refractory_history()
    events = [
        json.loads(event.model_dump_json(exclude_none=True))
        | {"source": "urn:hospital:st-olaf:ehr"}
        for event in history.events
    ]
    port = workers.start(tmp_path / "w1", LOG_LEVEL="DEBUG")
    workers.wait_ready()

    response = await gateway.post(
        "/v1/events",
        content=json.dumps(events),
        headers={
            "X-API-Key": API_KEY,
            "Content-Type": "application/json",
            "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        },
    )
    assert response.json()["accepted"] == len(events)
    assert response.headers["traceparent"].split("-")[1] == TRACE_ID

    for _ in range(100):
        tasks = await read_topic(settings, CARE_TASKS, expected=1, timeout=2)
        if tasks:
            break
        await asyncio.sleep(0.2)
    # A task change follows a determination: what is published by now (the classifier publishes
    # a backlog's latest state, not one determination per event, so never `len(events)`).
    determinations = await read_topic(settings, DETERMINATIONS, expected=len(events), timeout=3)
    assert determinations

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'painpath_classifier_consumer_lag{partition="' in metrics
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    assert ready["checks"]["progressing"] is True
    assert trace_ids(determinations) == {TRACE_ID}
    assert tasks and trace_ids(tasks) == {TRACE_ID}
    gateway_and_coordinator = RUN_LOG.read_text()  # both run in this process
    classifier = (ARTIFACTS / f"classifier-{port}.stderr.log").read_text()
    assert f'"trace_id": "{TRACE_ID}"' in classifier
    assert gateway_and_coordinator.count(f'"trace_id": "{TRACE_ID}"') >= 2
    lines = [json.loads(line) for line in gateway_and_coordinator.splitlines()]
    traced = {line["logger"] for line in lines if line.get("trace_id") == TRACE_ID}
    assert {"painpath.gateway", "painpath.coordinator"} <= traced
