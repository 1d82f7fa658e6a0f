"""The ingest gateway: hospital systems POST clinical events, valid ones go to `pain.events.v1`.

`create_app` wires the adapters (Kafka producer, PostgreSQL pool, metrics) around `Ingestor`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request, Security
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from services.gateway.ingest import (
    MAX_BATCH,
    Ingestor,
    ItemResult,
    ItemStatus,
    Outcome,
    PublishFailed,
)
from shared import tracing
from shared.contract import EVENT_MODELS, json_text
from shared.db import SchemaError, check_schema, create_pool, migrate
from shared.kafka import reliable_producer
from shared.logging import get_logger
from shared.settings import ApiKey, Settings
from shared.stack import Endpoints
from shared.supervision import Loops
from shared.topics import EVENTS

log = get_logger("painpath.gateway")

API_KEY_HEADER = "X-API-Key"
API_KEY_SCHEME = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The source system's API key"
)
ACCEPTED_MEDIA_TYPES = (
    "application/json",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
)
READINESS_TIMEOUT = 3.0
RETENTION_SWEEP_SECONDS = 3600


class IngestResponse(BaseModel):
    accepted: int
    duplicate: int
    rejected: int
    results: list[ItemResult]


class Problem(BaseModel):
    """An error about the request as a whole (RFC 9457 problem details, reduced)."""

    status: int
    title: str
    detail: str


def _problem_doc(description: str) -> dict[str, Any]:
    """An error response in the OpenAPI document: a Problem, as application/problem+json."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {"application/problem+json": {"schema": schema}}}


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        Problem(status=status, title=title, detail=detail).model_dump(),
        status_code=status,
        media_type="application/problem+json",
    )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "painpath_gateway_events",
            "Events received, by result",
            ["result"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "painpath_gateway_request_seconds",
            "Request duration, by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "painpath_gateway_batch_size",
            "Events per ingest request",
            buckets=(1, 10, 50, 100, 250, 500, 1000),
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "painpath_gateway_publish_failures",
            "Batches the broker did not acknowledge (answered 503)",
            registry=self.registry,
        )
        for status in ItemStatus:
            self.events.labels(status.value)


def _find_key(presented: str | None, keys: list[ApiKey]) -> ApiKey | None:
    """Compare against every key in constant time, whether or not an earlier one matched."""
    found = None
    candidate = (presented or "").encode()
    for key in keys:
        if hmac.compare_digest(candidate, key.key.get_secret_value().encode()) and presented:
            found = key
    return found


def _request_body_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The events' JSON Schemas as the request body, and the definitions they refer to."""
    _, definitions = models_json_schema(
        [(model, "validation") for model in EVENT_MODELS.values()],
        ref_template="#/components/schemas/{model}",
    )
    event = {
        "oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in EVENT_MODELS.values()]
    }
    schema = {
        "oneOf": [event, {"type": "array", "items": event, "minItems": 1, "maxItems": MAX_BATCH}]
    }
    content = {media: {"schema": schema} for media in ACCEPTED_MEDIA_TYPES}
    return {"required": True, "content": content}, definitions["$defs"]


def create_app(settings: Settings, endpoints: Endpoints) -> FastAPI:
    metrics = Metrics()
    topic = EVENTS.full_name(settings.kafka_topic_prefix)
    state: dict[str, Any] = {}
    request_body, event_schemas = _request_body_schema()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not endpoints.api_keys:
            raise RuntimeError("GATEWAY_API_KEYS is empty: no source system could publish")
        await migrate(endpoints.database_url)
        pool = await create_pool(endpoints.database_url, settings.database_pool_max)
        producer = reliable_producer(settings, endpoints.bootstrap_servers)
        await producer.start()
        state.update(pool=pool, producer=producer, ingestor=Ingestor(pool, producer, topic))
        days = settings.gateway_idempotency_retention_days
        sweeper = loops.start(
            "retention-sweep", lambda: _sweep_retention_hourly(pool, days), restart=True
        )
        log.info("gateway_started", topic=topic, api_keys=len(endpoints.api_keys))
        try:
            yield
        finally:
            loops.stop()
            sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await sweeper
            await producer.stop()
            await pool.close()
            log.info("gateway_stopped")

    app = FastAPI(
        title="Painpath ingest gateway",
        version="1",
        description=(
            "Hospital systems publish clinical events (CloudEvents 1.0, structured JSON,"
            " contract v1). Authenticate with the `X-API-Key` header."
        ),
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next):
        traceparent = tracing.continue_trace(request.headers.get(tracing.TRACEPARENT))
        request.state.traceparent = traceparent
        structlog.contextvars.clear_contextvars()
        tracing.bind(traceparent)
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        route_path = getattr(route, "path", "unmatched")
        elapsed = time.perf_counter() - started
        metrics.requests.labels(route_path, str(response.status_code)).observe(elapsed)
        response.headers["traceparent"] = traceparent
        log.info(
            "request",
            method=request.method,
            route=route_path,
            code=response.status_code,
            duration_ms=round(elapsed * 1000, 2),
        )
        return response

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=IngestResponse,
        openapi_extra={"requestBody": request_body},
        responses={
            400: _problem_doc("The body is not JSON, or not an event or array"),
            401: _problem_doc("Missing or unknown API key"),
            403: {"model": IngestResponse, "description": "Every event's source is forbidden"},
            409: {"model": IngestResponse, "description": "Every event is a conflict"},
            413: _problem_doc("Body or batch too large"),
            415: _problem_doc("Wrong media type"),
            422: {"model": IngestResponse, "description": "No event was accepted: see each result"},
            503: _problem_doc("Broker or database unavailable: retry"),
        },
        summary="Publish one event or a batch of up to 1,000",
    )
    async def post_events(
        request: Request, presented: str | None = Security(API_KEY_SCHEME)
    ) -> Response:
        api_key = _find_key(presented, endpoints.api_keys)
        if api_key is None:
            return _problem(401, "Unauthorized", f"a valid {API_KEY_HEADER} header is required")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in ACCEPTED_MEDIA_TYPES:
            return _problem(
                415, "Unsupported Media Type", "send one of: " + ", ".join(ACCEPTED_MEDIA_TYPES)
            )
        body = await _read_limited(request, settings.gateway_max_body_bytes)
        if body is None:
            return _problem(
                413,
                "Content Too Large",
                f"the body exceeds {settings.gateway_max_body_bytes} bytes",
            )
        try:
            items = await _decode_batch(body)
        except json_text.JsonTextError:
            return _problem(400, "Bad Request", "the body is not valid JSON")
        except ValueError:
            return _problem(
                400, "Bad Request", "the body must be an event object or an array of events"
            )
        if not items:
            return _problem(400, "Bad Request", "the batch is empty")
        if len(items) > MAX_BATCH:
            return _problem(413, "Content Too Large", f"at most {MAX_BATCH} events per request")
        metrics.batch_size.observe(len(items))
        try:
            outcome = await state["ingestor"].ingest(
                items, api_key, request.state.traceparent, plain=json_text.plain(body)
            )
        except PublishFailed:
            metrics.publish_failures.inc()
            log.warning("publish_failed", source_system=api_key.name, events=len(items))
            return _problem(503, "Service Unavailable", "the event broker is unavailable: retry")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("database_unavailable", source_system=api_key.name, exc_info=True)
            return _problem(503, "Service Unavailable", "the database is unavailable: retry")
        for result in outcome.results:
            metrics.events.labels(result.status.value).inc()
            if result.code >= 400:  # for integration teams: which event, which fields (no values)
                log.info(
                    "event_refused",
                    event_id=result.id,
                    index=result.index,
                    status=result.status.value,
                    fields=[error.field for error in result.errors],
                    source_system=api_key.name,
                )
        log.info(
            "events_ingested",
            source_system=api_key.name,
            accepted=outcome.count(ItemStatus.ACCEPTED),
            duplicate=outcome.count(ItemStatus.DUPLICATE),
            rejected=len(items)
            - outcome.count(ItemStatus.ACCEPTED)
            - outcome.count(ItemStatus.DUPLICATE),
        )
        return JSONResponse(
            _reply(outcome).model_dump(mode="json"), status_code=_status_code(outcome)
        )

    loops = Loops.of_app(app)

    @app.get("/readyz", summary="Readiness: the broker and the database answer")
    async def readyz() -> JSONResponse:
        checks = {
            "broker": await _check(_broker_ready(state)),
            "database": await _check(_database_ready(state)),
        }
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(event_schemas)
            schemas["Problem"] = Problem.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _reply(outcome: Outcome) -> IngestResponse:
    accepted = outcome.count(ItemStatus.ACCEPTED)
    duplicate = outcome.count(ItemStatus.DUPLICATE)
    return IngestResponse(
        accepted=accepted,
        duplicate=duplicate,
        rejected=len(outcome.results) - accepted - duplicate,
        results=outcome.results,
    )


def _status_code(outcome: Outcome) -> int:
    """202 when anything was taken; otherwise the items' own 4xx (422 when they differ)."""
    codes = {result.code for result in outcome.results}
    if codes & {202, 200}:
        return 202
    return codes.pop() if len(codes) == 1 else 422


async def _decode_batch(body: bytes) -> list:
    """The body's events: at C speed when the body keeps every rule; else each event read on its
    own, which takes linear but Python-speed work on hostile input, so off the event loop."""
    try:
        return json_text.decode_batch_fast(body)
    except json_text.NeedsSlowPath:
        return await asyncio.to_thread(json_text.decode_batch, body)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


async def _check(probe) -> str:
    try:
        await asyncio.wait_for(probe, READINESS_TIMEOUT)
        return "ok"
    except SchemaError as exc:
        return f"failing: {exc}"
    except Exception as exc:  # what failed is the answer, not an error of ours
        return f"failing: {type(exc).__name__}"


async def _broker_ready(state: dict[str, Any]) -> None:
    await state["producer"].client.fetch_all_metadata()


async def _database_ready(state: dict[str, Any]) -> None:
    async with state["pool"].acquire() as connection:
        await check_schema(connection, ["gateway_accepted_events"])


async def sweep_retention(pool: asyncpg.Pool, days: int, batch: int = 10_000) -> int:
    """Forget the (source, id) claims older than the retention window, with the records they
    keep (what a replay could publish); return how many. In batches of `batch` rows, oldest
    first, each its own short transaction: a month of claims is not one long lock."""
    deleted = 0
    while True:
        status = await pool.execute(
            """DELETE FROM gateway_accepted_events WHERE (source, event_id) IN (
                   SELECT source, event_id FROM gateway_accepted_events
                   WHERE accepted_at < now() - make_interval(days => $1)
                   ORDER BY accepted_at LIMIT $2)""",
            days,
            batch,
        )
        done = int(status.split()[-1])
        deleted += done
        if done < batch:
            return deleted


async def _sweep_retention_hourly(pool: asyncpg.Pool, days: int) -> None:
    while True:
        try:
            deleted = await sweep_retention(pool, days)
            log.info("idempotency_retention_swept", deleted=deleted, days=days)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("idempotency_retention_sweep_failed", exc_info=True)
        await asyncio.sleep(RETENTION_SWEEP_SECONDS)
