"""The ingest gateway against the real broker (Tansu) and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx
import pytest

from services.gateway.app import create_app, sweep_retention
from services.gateway.ingest import Ingestor
from shared.kafka import reliable_producer
from shared.topics import EVENTS
from tests.conftest import API_KEY, OTHER_API_KEY, RUN_LOG, read_topic

pytestmark = pytest.mark.integration

SOURCE = "urn:hospital:st-olaf:ehr"
HEADERS = {"X-API-Key": API_KEY, "Content-Type": "application/json"}


def score(event_id: str, patient_id: str = "pt-gw-0001", value: int = 5, **envelope) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": "pain.score.recorded.v1",
        "time": "2026-03-02T09:30:00+01:00",
        "data": {"patient_id": patient_id, "score": value},
        **envelope,
    }


async def post(gateway: httpx.AsyncClient, body, headers=HEADERS) -> httpx.Response:
    return await gateway.post("/v1/events", content=json.dumps(body), headers=headers)


async def test_accepted_events_are_on_the_topic_once_keyed_by_patient_in_order(gateway, settings):
    patients = ["pt-gw-order-a", "pt-gw-order-b", "pt-gw-order-c"]
    batch = [score(f"evt-{i}", patients[i % 3], value=i % 11) for i in range(30)]

    response = await post(
        gateway, batch, {**HEADERS, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    )

    assert response.status_code == 202
    assert response.json()["accepted"] == 30
    records = await read_topic(settings, EVENTS, expected=30)
    assert len(records) == 30
    for record in records:
        event = json.loads(record.value)
        assert record.key.decode() == event["data"]["patient_id"]
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        assert dict(record.headers)["traceparent"].decode().startswith(f"00-{'ab' * 16}-")
    for patient in patients:
        sent = [e["id"] for e in batch if e["data"]["patient_id"] == patient]
        received = [json.loads(r.value)["id"] for r in records if r.key.decode() == patient]
        assert received == sent
        assert len({r.partition for r in records if r.key.decode() == patient}) == 1


async def test_published_event_keeps_unknown_extra_fields(gateway, settings):
    event = score("evt-extra")
    event["data"]["ward"] = "7B"
    event["subject"] = "Patient/opaque"

    assert (await post(gateway, event)).status_code == 202

    [record] = await read_topic(settings, EVENTS, expected=1)
    assert json.loads(record.value) == event


async def test_resent_event_is_answered_duplicate_and_not_republished(gateway, settings):
    first = await post(gateway, score("evt-dup"))
    again = await post(gateway, score("evt-dup"))

    assert first.json()["results"][0]["status"] == "accepted"
    assert again.status_code == 202
    assert again.json()["results"][0] | {"errors": []} == {
        "index": 0,
        "id": "evt-dup",
        "status": "duplicate",
        "code": 200,
        "errors": [],
    }
    assert len(await read_topic(settings, EVENTS, expected=1)) == 1


async def test_same_id_with_other_content_is_rejected_as_conflict(gateway, settings):
    await post(gateway, score("evt-conflict", value=3))

    response = await post(gateway, score("evt-conflict", value=4))

    assert response.status_code == 409
    [result] = response.json()["results"]
    assert result["status"] == "conflict"
    assert result["errors"][0]["field"] == "id"
    assert len(await read_topic(settings, EVENTS, expected=1)) == 1


async def test_same_event_twice_in_one_batch_is_published_once(gateway, settings):
    response = await post(
        gateway, [score("evt-twice"), score("evt-twice"), score("evt-twice", value=9)]
    )

    assert [r["status"] for r in response.json()["results"]] == [
        "accepted",
        "duplicate",
        "conflict",
    ]
    assert len(await read_topic(settings, EVENTS, expected=1)) == 1


async def test_same_id_from_another_source_is_another_event(gateway, settings):
    response = await post(
        gateway, [score("evt-shared"), score("evt-shared", source="urn:hospital:st-olaf:lab")]
    )

    assert [r["status"] for r in response.json()["results"]] == ["accepted", "accepted"]


async def test_bad_items_in_a_batch_do_not_fail_the_good_ones(gateway, settings):
    invalid_score = score("evt-bad-score", value=11)
    no_offset = score("evt-naive", time="2026-03-02T09:30:00")
    unknown_type = score("evt-unknown", type="pain.mood.recorded.v1")
    batch = [
        score("evt-good-1"),
        invalid_score,
        "not an event",
        no_offset,
        unknown_type,
        score("evt-good-2"),
    ]

    response = await post(gateway, batch)

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 0, 4)
    results = body["results"]
    assert [r["status"] for r in results] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert results[1]["errors"][0]["field"] == "data.score"
    assert results[2]["errors"][0]["field"] == "(event)"
    assert results[3]["errors"][0]["field"] == "time"
    assert results[4]["errors"][0]["field"] == "type"
    assert all(r["code"] == 422 for r in results[1:5])
    records = await read_topic(settings, EVENTS, expected=2)
    assert sorted(json.loads(r.value)["id"] for r in records) == ["evt-good-1", "evt-good-2"]


async def test_a_single_invalid_event_is_answered_422_naming_the_field(gateway):
    event = score("evt-invalid")
    event["data"]["instrument"] = "likert"

    response = await post(gateway, event)

    assert response.status_code == 422
    assert response.json()["results"][0]["errors"] == [
        {"field": "data.instrument", "reason": "must be 'nrs', 'vas' or 'peg'"}
    ]


@pytest.mark.parametrize("key", [None, "", "wrong-key", API_KEY + "x"])
async def test_a_missing_or_unknown_api_key_is_401(gateway, settings, key):
    headers = {"Content-Type": "application/json"} | ({"X-API-Key": key} if key is not None else {})

    response = await post(gateway, score("evt-unauth"), headers)

    assert response.status_code == 401
    assert len(await read_topic(settings, EVENTS, expected=0, timeout=1)) == 0


async def test_a_source_the_key_may_not_use_is_403_for_that_item_only(gateway, settings):
    foreign = score("evt-foreign", source="urn:hospital:other:ehr")

    mixed = await post(gateway, [score("evt-own"), foreign])
    alone = await gateway.post(
        "/v1/events",
        content=json.dumps(score("evt-own-other")),
        headers={"X-API-Key": OTHER_API_KEY, "Content-Type": "application/json"},
    )

    assert mixed.status_code == 202
    assert [r["status"] for r in mixed.json()["results"]] == ["accepted", "forbidden"]
    assert mixed.json()["results"][1]["code"] == 403
    assert mixed.json()["results"][1]["errors"][0]["field"] == "source"
    assert alone.status_code == 403
    records = await read_topic(settings, EVENTS, expected=1)
    assert [json.loads(r.value)["id"] for r in records] == ["evt-own"]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (b"42", "application/json", 400),
        (b'"an event"', "application/json", 400),
        (b"[]", "application/json", 400),
        (b"[" * 100_000, "application/json", 400),
        (json.dumps(score("evt-media")).encode(), "text/plain", 415),
        (json.dumps(score("evt-media")).encode(), "application/xml", 415),
        (b"[" + b" " * (6 * 1024 * 1024) + b"]", "application/json", 413),
        (
            json.dumps([score(f"evt-many-{i}") for i in range(1001)]).encode(),
            "application/json",
            413,
        ),
    ],
    ids=[
        "truncated",
        "empty",
        "number",
        "string",
        "empty-array",
        "deep-nesting",
        "text-plain",
        "xml",
        "too-large",
        "1001-events",
    ],
)
async def test_malformed_bodies_get_a_clear_4xx(gateway, settings, content, content_type, status):
    response = await gateway.post(
        "/v1/events", content=content, headers={"X-API-Key": API_KEY, "Content-Type": content_type}
    )

    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"]
    assert len(await read_topic(settings, EVENTS, expected=0, timeout=1)) == 0


async def test_cloudevents_media_types_are_accepted(gateway):
    for media_type in (
        "application/cloudevents+json",
        "application/cloudevents-batch+json; charset=utf-8",
    ):
        response = await post(
            gateway, score(f"evt-{media_type[:20]}"), {**HEADERS, "Content-Type": media_type}
        )
        assert response.status_code == 202


async def test_a_batch_of_a_thousand_is_accepted(gateway, settings):
    response = await post(
        gateway, [score(f"evt-k-{i}", f"pt-gw-k{i % 50:04d}") for i in range(1000)]
    )

    assert response.status_code == 202
    assert response.json()["accepted"] == 1000
    assert len(await read_topic(settings, EVENTS, expected=1000)) == 1000


async def test_duplicates_are_recognised_across_a_gateway_restart(settings, endpoints):
    app = create_app(settings, endpoints)
    for expected in ("accepted", "duplicate"):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                response = await post(client, score("evt-restart"))
        assert response.json()["results"][0]["status"] == expected
    assert len(await read_topic(settings, EVENTS, expected=1)) == 1


async def test_concurrent_requests_with_the_same_event_publish_it_once(gateway, settings):
    responses = await asyncio.gather(*(post(gateway, score("evt-race")) for _ in range(8)))

    statuses = sorted(r.json()["results"][0]["status"] for r in responses)
    assert statuses == ["accepted"] + ["duplicate"] * 7
    assert len(await read_topic(settings, EVENTS, expected=1)) == 1


async def test_a_batch_the_broker_does_not_take_claims_nothing(settings, endpoints, gateway):
    """A publish failure rolls back the (source, id) claims: the client's retry is accepted."""
    pool = await asyncpg.create_pool(endpoints.database_url)
    producer = reliable_producer(settings, endpoints.bootstrap_servers)
    await producer.start()
    await producer.stop()  # a producer that can no longer send
    broken = Ingestor(
        pool, producer, EVENTS.full_name(settings.kafka_topic_prefix), publish_timeout=2
    )
    from services.gateway.ingest import PublishFailed
    from tests.conftest import TEST_KEYS

    with pytest.raises(PublishFailed):
        await broken.ingest([score("evt-retry")], TEST_KEYS[0])
    claims = await pool.fetchval("SELECT count(*) FROM gateway_accepted_events")
    await pool.close()

    assert claims == 0
    retry = await post(gateway, score("evt-retry"))
    assert retry.json()["results"][0]["status"] == "accepted"


async def test_claims_older_than_the_retention_window_are_forgotten(gateway, endpoints):
    await post(gateway, [score("evt-old"), score("evt-new")])
    pool = await asyncpg.create_pool(endpoints.database_url)
    await pool.execute(
        "UPDATE gateway_accepted_events SET accepted_at = now() - interval '31 days'"
        " WHERE event_id = 'evt-old'"
    )

    deleted = await sweep_retention(pool, days=30)
    remaining = [
        r["event_id"] for r in await pool.fetch("SELECT event_id FROM gateway_accepted_events")
    ]
    await pool.close()

    assert deleted == 1
    assert remaining == ["evt-new"]


async def test_health_readiness_metrics_and_openapi(gateway):
    await post(gateway, [score("evt-m1"), score("evt-m2", value=99)])

    assert (await gateway.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"broker": "ok", "database": "ok"}}
    metrics = (await gateway.get("/metrics")).text
    assert 'painpath_gateway_events_total{result="accepted"} 1.0' in metrics
    assert 'painpath_gateway_events_total{result="rejected"} 1.0' in metrics
    openapi = (await gateway.get("/openapi.json")).json()
    body = openapi["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["oneOf"][0]["oneOf"]) == 9
    assert "ScoreRecorded" in openapi["components"]["schemas"]


async def test_refused_events_are_logged_by_event_id_and_field_without_values(gateway):
    await post(
        gateway, [score("evt-logged-ok"), score("evt-logged-bad", "pt-gw-logged-9", value=12)]
    )

    lines = [json.loads(line) for line in RUN_LOG.read_text().splitlines()]
    [refused] = [line for line in lines if line.get("event_id") == "evt-logged-bad"]
    assert refused["event"] == "event_refused"
    assert refused["fields"] == ["data.score"]
    assert refused["trace_id"]
    assert "pt-gw-logged-9" not in RUN_LOG.read_text()
