"""The contract's edges (`tests/contract_edges.py`) through every way in, against the real
broker and database: the gateway, the streaming classifier and `painpath classify` accept the
same events and refuse the others naming the same field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared import dead_letter
from shared.contract import parse_event
from shared.contract.records import read_record
from shared.topics import DETERMINATIONS, EVENTS, EVENTS_DLQ
from tests.conftest import API_KEY, read_topic
from tests.contract_edges import EDGES, edge_id, edge_patient, good_event
from tests.integration.test_classifier_stream import produce, wait_until_consumed, workers  # noqa: F401

pytestmark = pytest.mark.integration

HEADERS = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
ACCEPTED = [edge for edge in EDGES if edge.accepted]
REFUSED = [edge for edge in EDGES if not edge.accepted]


async def test_the_gateway_answers_each_edge_on_its_own_and_publishes_what_it_accepts(
    gateway, settings
):
    body = "[" + ", ".join([good_event(0), *(edge.text for edge in EDGES), good_event(1)]) + "]"

    response = await gateway.post("/v1/events", content=body, headers=HEADERS)

    assert response.status_code == 202, response.text[:2000]
    results = response.json()["results"]
    assert [r["status"] for r in (results[0], results[-1])] == ["accepted", "accepted"]
    for edge, result in zip(EDGES, results[1:-1], strict=True):
        if edge.accepted:
            assert result["status"] == "accepted", (edge.name, result)
        else:
            assert result["status"] == "rejected", (edge.name, result)
            assert [error["field"] for error in result["errors"]] == [edge.field], edge.name
    records = await read_topic(settings, EVENTS, expected=len(ACCEPTED) + 2)
    published = {json.loads(record.value)["id"]: record for record in records}
    assert set(published) == {edge_id(edge) for edge in ACCEPTED} | {"good-0", "good-1"}
    for edge in ACCEPTED:  # what the stream reads is the event that was sent
        record = published[edge_id(edge)]
        event, _ = read_record(record.key, record.value)
        assert event == parse_event(edge.text), edge.name
    tenth = published["edge-28"].value
    assert b'"2026-01-10T10:00:00.0000001Z"' in tenth


async def test_the_stream_dead_letters_each_refused_edge_naming_its_field(
    settings,
    workers,  # noqa: F811
    tmp_path,
):
    records = [(edge_patient(edge).encode(), edge.text.encode()) for edge in EDGES]
    records.append((b"good-p0", good_event(0).encode()))
    workers.start(tmp_path / "w1")
    workers.wait_ready()

    await produce(settings, records)
    await wait_until_consumed(settings)

    dead = await read_topic(settings, EVENTS_DLQ, expected=len(REFUSED), timeout=20)
    by_patient = {record.key.decode(): dict(record.headers) for record in dead}
    assert set(by_patient) == {edge_patient(edge) for edge in REFUSED}
    for edge in REFUSED:
        assert by_patient[edge_patient(edge)][dead_letter.FIELD].decode() == edge.field, edge.name
    decided = await read_topic(settings, DETERMINATIONS, expected=len(ACCEPTED) + 1, timeout=30)
    assert {record.key.decode() for record in decided} == {
        edge_patient(edge) for edge in ACCEPTED
    } | {"good-p0"}
    assert (
        workers.metric_totals("painpath_classifier_events_total")['outcome="new"']
        == len(ACCEPTED) + 1
    )


def test_painpath_classify_refuses_each_edge_in_one_line_and_classifies_the_rest(tmp_path):
    feed = tmp_path / "edges.jsonl"
    feed.write_text("\n".join([good_event(0), *(edge.text for edge in EDGES)]) + "\n")

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "painpath",
            "classify",
            str(feed),
            "--as-of",
            "2026-06-30T00:00:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    printed = {json.loads(line)["patient_id"] for line in done.stdout.splitlines()}
    assert printed == {edge_patient(edge) for edge in ACCEPTED} | {"good-p0"}
    refusals = [line for line in done.stderr.splitlines() if line.startswith("line ")]
    assert len(refusals) == len(REFUSED), done.stderr
    for number, edge in enumerate(EDGES, start=2):
        if not edge.accepted:
            [said] = [line for line in refusals if line.startswith(f"line {number}:")]
            assert f" {edge.field}: " in said, (edge.name, said)
    assert "Traceback" not in done.stderr
