"""The gateway fuzzed from its own OpenAPI document (schemathesis), and hostile raw bodies.

The app is the real one (`create_app`) on the real broker and PostgreSQL of the test session,
with its own topics and database (the `settings` and `endpoints` fixtures). schemathesis starts
its lifespan on its own event-loop thread and calls it in-process (ASGI). Every request has a
timeout (`REQUEST_TIMEOUT`), so a hang fails the test instead of stalling the suite; Hypothesis
runs a fixed number of examples without shrinking, so the whole file stays under a minute.

Checks, and why:
- `not_a_server_error`: no request, however malformed, earns a 5xx. The gateway's one 5xx, 503,
  means "the broker or the database did not answer: retry", and both answer in these tests;
- `status_code_conformance`: every answer is a documented one;
- `content_type_conformance`: request-level errors are `application/problem+json`, as documented;
- `response_schema_conformance`: bodies match the documented models (IngestResponse, Problem);
- not used:
  - `positive_data_acceptance`: a schema-valid event is still refused for a source the key may
    not use (403) or as a conflict (409), by design;
  - `negative_data_rejection`: a batch is validated event by event, so an array holding one bad
    event among good ones is 202, and unknown extra fields are kept: by design;
  - `ignored_auth`, `missing_required_header`: authentication is fuzzed on its own (every
    request without a valid key must be 401 and publish nothing).

The defects the fuzz found (NUL characters, over-long keys, lone surrogates, oversized events,
undocumented answers) are fixed; each keeps a regression test at the end of this file.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import asyncpg
import hypothesis
import pytest
import requests
import schemathesis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.coordinator.consumer import Outcome
from services.coordinator.scheduling import load_roster
from services.coordinator.service import Coordinator
from services.coordinator.templates import load_templates
from services.gateway.app import create_app
from shared.topics import EVENTS
from tests.conftest import API_KEY, OTHER_API_KEY, read_topic

pytestmark = pytest.mark.integration

EXPLORE = os.environ.get("PAINPATH_FUZZ_EXPLORE") == "1"
REQUEST_TIMEOUT = 10.0  # seconds for one request: longer is a hang
AUTHENTICATED = {"X-API-Key": API_KEY}
OWN_SOURCE_PREFIX = "urn:hospital:st-olaf:"  # the test key may publish for these sources


def _fuzz_settings(max_examples: int) -> hypothesis.settings:
    return hypothesis.settings(
        max_examples=max_examples * (10 if EXPLORE else 1),
        deadline=None,  # the per-request timeout bounds each call
        # No shrinking: a failure is reported as found, and the run stays bounded in time.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        # The same examples on every run, so that `make test` does not flake;
        # PAINPATH_FUZZ_EXPLORE=1 draws new ones each run (and max_examples x 10).
        derandomize=not EXPLORE,
    )


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def schema(settings, endpoints):
    """The gateway's OpenAPI document, loaded from the running app (lifespan started)."""
    app = create_app(settings, endpoints)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # stops the producer and the pool before the database goes


def _events(body) -> list[dict]:
    return [e for e in (body if isinstance(body, list) else [body]) if isinstance(e, dict)]


def _own_sources(case, own: bool) -> None:
    """Move the generated events under a source the test key may publish for (when `own`).

    Schema-valid events with a random `source` are all refused 403 for the key; this makes
    about half the requests reach the claims, the database and the broker.
    """
    if own and case.body is not None:
        for event in _events(case.body):
            if isinstance(event.get("source"), str):
                event["source"] = OWN_SOURCE_PREFIX + event["source"]


def _call(case, headers: dict[str, str] | None):
    try:
        return case.call(headers=headers, timeout=REQUEST_TIMEOUT)
    except requests.exceptions.Timeout:
        pytest.fail(f"no answer within {REQUEST_TIMEOUT} s (a hang): {case.as_curl_command()}")


def _fuzz(operation, mode: GenerationMode, max_examples: int, headers) -> list[int]:
    """Run `max_examples` generated requests through the checks; the status codes seen."""
    seen: list[int] = []

    @_fuzz_settings(max_examples)
    @given(case=operation.as_strategy(generation_mode=mode), own=st.booleans())
    def run(case, own):
        _own_sources(case, own)
        response = _call(case, headers)
        seen.append(response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()
    return seen


def test_the_document_lists_every_operation(schema):
    labels = sorted(result.ok().label for result in schema.get_all_operations())

    assert labels == ["GET /healthz", "GET /metrics", "GET /readyz", "POST /v1/events"]


@pytest.mark.parametrize(
    ("mode", "examples"), [(GenerationMode.POSITIVE, 250), (GenerationMode.NEGATIVE, 150)]
)
def test_fuzzed_events_never_fail_the_server_and_conform(schema, mode, examples):
    seen = _fuzz(schema["/v1/events"]["POST"], mode, examples, AUTHENTICATED)

    print(f"{mode.value}: {len(seen)} requests, answers {sorted(set(seen))}")
    assert len(seen) >= examples // 2
    if mode is GenerationMode.POSITIVE:  # the fuzz reached the database and the broker
        assert 202 in seen


@pytest.mark.parametrize(
    "headers",
    [None, {"X-API-Key": ""}, {"X-API-Key": API_KEY + "x"}, {"X-API-Key": API_KEY[:-1]}],
    ids=["missing", "empty", "longer", "shorter"],
)
def test_unauthenticated_fuzzed_requests_are_all_401_and_publish_nothing(schema, settings, headers):
    seen = _fuzz(schema["/v1/events"]["POST"], GenerationMode.POSITIVE, 20, headers)

    assert set(seen) == {401}
    assert _published(settings) == []


def _published(settings) -> list:
    """The records on the events topic (read on a thread: this test is not a coroutine)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, read_topic(settings, EVENTS, 0, timeout=1)).result()


def test_operations_endpoints_conform_under_fuzzing(schema):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert set(_fuzz(schema[path]["GET"], GenerationMode.POSITIVE, 5, None)) == {200}, path


# --- Hostile bodies, at the raw HTTP level -------------------------------------------------------

SOURCE = "urn:hospital:st-olaf:ehr"
CANARY_PATIENT = "pt-fuzz-canary-7f3a"
HEADERS = {"X-API-Key": API_KEY, "Content-Type": "application/json"}


def _event(event_id: str, **data) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": SOURCE,
        "type": "pain.score.recorded.v1",
        "time": "2026-03-02T09:30:00+01:00",
        "data": {"patient_id": CANARY_PATIENT, "score": 5, **data},
    }


def _text(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


def _with_raw(event: dict, name: str, raw: str) -> bytes:
    """The event's JSON with an extra top-level member whose value is `raw` JSON text."""
    return (_text(event)[:-1] + f',"{name}":{raw}}}').encode()


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


WRONG_TYPES = [1, "x", None, True, False, [], {}, 1.5, -1, {"type": 5}, {"data": []}, [[]]]

HOSTILE = {
    "deep-array-100k": b"[" * 100_000 + b"]" * 100_000,
    "deep-object-100k": _nested(100_000).encode(),
    "deep-extra-150": _with_raw(_event("evt-deep-150"), "x", _nested(150)),
    "deep-extra-250": _with_raw(_event("evt-deep-250"), "x", _nested(250)),
    "deep-extra-990": _with_raw(_event("evt-deep-990"), "x", _nested(990)),
    "deep-extra-5000": _with_raw(_event("evt-deep-5000"), "x", _nested(5000)),
    "deep-findings": json.dumps(
        {
            **_event("evt-deep-findings"),
            "type": "pain.assessment.recorded.v1",
            "data": {
                "patient_id": CANARY_PATIENT,
                "kind": "physical_exam",
                "findings": json.loads(_nested(180)),
            },
        }
    ).encode(),
    "1000-wrong-types": json.dumps((WRONG_TYPES * 84)[:1000]).encode(),
    "1000-wrong-field-types": json.dumps(
        [
            {**_event(f"evt-wrong-{i}"), "time": i, "specversion": 1.0, "data": [i]}
            for i in range(1000)
        ]
    ).encode(),
    "1001-wrong-types": json.dumps((WRONG_TYPES * 84)[:1001]).encode(),
    "raw-nul-byte": b'{"id":"a\x00b"}',
    "nul-in-extra": _text({**_event("evt-nul-extra"), "note": "a\x00b"}).encode(),
    "nul-in-data-extra": _text(_event("evt-nul-data", ward="7\x00B")).encode(),
    "nul-in-patient-id": _text(_event("evt-nul-pid", patient_id="pt\x00x")).encode(),
    "nul-in-type": _text({**_event("evt-nul-type"), "type": "pain.score.recorded.v1\x00"}).encode(),
    "nul-in-time": _text({**_event("evt-nul-time"), "time": "2026-03-02T09:30:00Z\x00"}).encode(),
    "invalid-utf8": b'{"id":"\xff\xfe\xfd"}',
    "invalid-utf8-in-event": _text(_event("evt-utf8"))
    .replace("st-olaf", "st-\xff")
    .encode("latin-1"),
    "overlong-utf8": b'{"id":"\xc0\xaf"}',
    "lone-surrogate-in-source": _text(_event("evt-sur-src")).replace("ehr", "\\ud800").encode(),
    "lone-surrogate-in-extra": _with_raw(_event("evt-sur-extra"), "x", '"\\udfff"'),
    "1e400-score": _text(_event("evt-1e400")).replace('"score":5', '"score":1e400').encode(),
    "1e400-extra": _with_raw(_event("evt-1e400-x"), "x", "1e400"),
    "-1e400-extra": _with_raw(_event("evt-m1e400-x"), "x", "[-1e400]"),
    "NaN-extra": _with_raw(_event("evt-nan"), "x", "NaN"),
    "Infinity-score": _text(_event("evt-inf")).replace('"score":5', '"score":Infinity').encode(),
    "10^400-score": _text(_event("evt-bigint"))
    .replace('"score":5', '"score":1' + "0" * 400)
    .encode(),
    "10^400-extra": _with_raw(_event("evt-bigint-x"), "x", "1" + "0" * 400),
    "5000-digit-int": _with_raw(_event("evt-digits"), "x", "9" * 5000),
    "1e-400-score": _text(_event("evt-tiny")).replace('"score":5', '"score":1e-400').encode(),
    "duplicate-keys": (
        b'{"specversion":"1.0","id":"evt-dupkeys","id":"evt-dupkeys-2","source":"'
        + SOURCE.encode()
        + b'","type":"pain.score.recorded.v1","time":"2026-03-02T09:30:00Z",'
        + b'"data":{"patient_id":"'
        + CANARY_PATIENT.encode()
        + b'","score":5},"data":{"patient_id":"'
        + CANARY_PATIENT.encode()
        + b'","score":11}}'
    ),
    "duplicate-patient-id-key": (
        _text(_event("evt-dup-pid")).replace(
            '"patient_id"', '"patient_id":"pt-other-dup","patient_id"'
        )
    ).encode(),
    "bom-prefixed": b"\xef\xbb\xbf" + _text(_event("evt-bom")).encode(),
    "utf-16": _text(_event("evt-utf16")).encode("utf-16"),
    "trailing-garbage": _text(_event("evt-trailing")).encode() + b" }{",
    "id-not-a-string": _text({**_event("evt-x"), "id": {"$gt": ""}}).encode(),
    "huge-id-of-compressible-text": _text(_event("x" * 100_000)).encode(),
    "900-kb-extra-string": _text({**_event("evt-900kb"), "note": "n" * 900_000}).encode(),
}


# What each hostile body gets: 400 for a body that is not JSON (not UTF-8/16/32, digits beyond
# Python's int limit, garbage after it), 413 over 1,000 events, 422 per event for what the
# contract refuses (nesting past 32 levels however deep, a repeated member name, a number beyond
# a double's range or too small to tell from 0), 202 for what it keeps. NUL in free-form
# fields: refused.
EXPECTED = {
    "1000-wrong-types": 422,
    "1000-wrong-field-types": 422,
    "1001-wrong-types": 413,
    "nul-in-extra": 422,
    "nul-in-data-extra": 422,
    "duplicate-keys": 422,  # `id` and `data` repeated
    "duplicate-patient-id-key": 422,
    "bom-prefixed": 202,
    "utf-16": 202,
    "huge-id-of-compressible-text": 422,  # ids are at most 256 characters
    "900-kb-extra-string": 422,  # one event is at most 512 KiB
} | {
    name: 400
    for name in (
        "raw-nul-byte",
        "invalid-utf8",
        "invalid-utf8-in-event",
        "overlong-utf8",
        "5000-digit-int",
        "trailing-garbage",
    )
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_bodies_get_a_4xx_or_202_never_a_5xx(gateway, name):
    response = await gateway.post("/v1/events", content=HOSTILE[name], headers=HEADERS)

    expected = EXPECTED.get(name, 422)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert response.status_code in allowed, response.text[:500]
    assert response.status_code in (202, 400, 413, 422), response.text[:500]
    assert response.headers["content-type"] in ("application/json", "application/problem+json")
    assert CANARY_PATIENT not in response.text  # errors never repeat the offending value
    body = response.json()
    if response.status_code in (202, 422):
        assert len(body["results"]) == body["accepted"] + body["duplicate"] + body["rejected"]
    else:
        assert body["status"] == response.status_code and body["detail"]


async def test_hostile_media_types_and_headers_get_a_4xx(gateway):
    body = _text(_event("evt-media")).encode()
    for content_type in ("", "application/json\x00", "application/jsonx", "*/*", "text/json"):
        response = await gateway.post(
            "/v1/events", content=body, headers={"X-API-Key": API_KEY, "Content-Type": content_type}
        )
        assert response.status_code == 415, content_type
    for key in ("\x00", API_KEY + "\x00", " " + API_KEY, API_KEY.upper(), "é" * 20):
        response = await gateway.post(
            "/v1/events",
            content=body,
            headers={"X-API-Key": key.encode("utf-8"), "Content-Type": "application/json"},
        )
        assert response.status_code == 401, repr(key)
    response = await gateway.post(
        "/v1/events",
        content=body,
        headers={**HEADERS, "Content-Length": "99999999999999999999999"},
    )
    assert response.status_code == 413


# --- Defects the fuzz found, fixed: each stays as a regression test ---------------------------


def _unique(text: str) -> str:
    return f"{text}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("where", ["id", "source", "one-of-a-batch"])
async def test_nul_in_id_or_source_is_refused_422_not_503(gateway, settings, where):
    bad = _event(_unique("evt-nul"))
    if where == "source":
        bad["source"] = SOURCE + "\x00"
    else:
        bad["id"] += "\x00"
    batch = [_event(_unique("evt-ok")) for _ in range(3)] + [bad]

    response = await gateway.post(
        "/v1/events",
        content=json.dumps(batch if where == "one-of-a-batch" else bad),
        headers=HEADERS,
    )

    assert response.status_code == (202 if where == "one-of-a-batch" else 422)
    assert response.json()["results"][-1]["status"] == "rejected"


async def test_a_nul_anywhere_is_refused_and_the_coordinator_survives_one_sent_past_the_gateway(
    gateway, settings, endpoints
):
    event = {**_event(_unique("evt-nul-note")), "note": "seen by Dr A\x00"}
    response = await gateway.post("/v1/events", content=json.dumps(event), headers=HEADERS)
    assert response.status_code == 422
    assert response.json()["results"][0]["errors"][0]["field"] == "note"
    # A producer writing to Kafka directly skips the gateway: the coordinator must not die on it.
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    await producer.send_and_wait(
        EVENTS.full_name(settings.kafka_topic_prefix),
        key=event["data"]["patient_id"].encode(),
        value=json.dumps(event).encode(),
    )
    await producer.stop()
    [record] = await read_topic(settings, EVENTS, expected=1)
    pool = await asyncpg.create_pool(endpoints.database_url)
    coordinator = Coordinator(pool, load_templates(), load_roster(), date.today)
    try:
        [outcome] = await coordinator.event_records([record])
    finally:
        await pool.close()

    assert outcome is Outcome.REFUSED


@pytest.mark.parametrize("field", ["id", "source"])
async def test_an_id_or_source_too_long_to_index_is_refused_422_not_503(gateway, field):
    event = _event(_unique("evt-long"))
    event[field] += secrets.token_urlsafe(3000)

    response = await gateway.post("/v1/events", content=json.dumps(event), headers=HEADERS)

    assert response.status_code == 422


async def test_an_id_that_is_not_valid_unicode_is_refused_not_a_500(gateway):
    body = _text(_event("evt-placeholder")).replace("evt-placeholder", "\\ud800").encode()

    response = await gateway.post("/v1/events", content=body, headers=HEADERS)

    assert response.status_code == 422


async def test_an_event_too_large_for_the_broker_is_refused_not_503(gateway, settings):
    event = {**_event(_unique("evt-large")), "note": "n" * 1_500_000}

    response = await gateway.post("/v1/events", content=json.dumps(event), headers=HEADERS)

    assert response.status_code in (413, 422)
    assert await read_topic(settings, EVENTS, expected=0, timeout=1) == []


@pytest.mark.parametrize("answer", [403, 409])
def test_whole_request_403_and_409_are_documented(schema, answer):
    operation = schema["/v1/events"]["POST"]
    event = _event(_unique("evt-doc"))
    if answer == 409:
        first = operation.Case(body=event, media_type="application/json")
        assert _call(first, AUTHENTICATED).status_code == 202
        event = {**event, "data": {**event["data"], "score": 6}}
    case = operation.Case(body=event, media_type="application/json")
    key = {"X-API-Key": OTHER_API_KEY} if answer == 403 else AUTHENTICATED

    response = _call(case, key)

    assert response.status_code == answer
    case.validate_response(response, checks=[status_code_conformance], headers=key)


def test_problem_responses_are_documented_as_problem_json(schema):
    case = schema["/v1/events"]["POST"].Case(body=_event("evt-401"), media_type="application/json")

    response = _call(case, None)

    assert response.status_code == 401
    case.validate_response(response, checks=[content_type_conformance])
