"""The coordinator: one process running its consumers, the outbox relay and the API.

Four consumers, each in a group of its own (`CONSUMERS`): live determinations
(`pain.determinations.v1`) and the timeline's live events (`pain.events.v1`); behind the live
determinations (`BatchConsumer(behind=...)`: a batch begun only while the live consumer has none
in hand, cut to a short slice while it is active), the backfill lane's determinations
(`pain.determinations.backfill.v1`) and events (`pain.events.backfill.v1`).

`create_app` wires the adapters (PostgreSQL pool, Kafka consumer and producer, LISTEN/NOTIFY)
around the service layer (`service.Coordinator`) and the pure cores (`care_plan`, `scheduling`).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.coordinator.api import create_router
from services.coordinator.care_plan import TaskState
from services.coordinator.classifier_group import ClassifierGroupMonitor
from services.coordinator.consumer import BACKFILL_MAX_RECORDS, MAX_RECORDS, BatchConsumer
from services.coordinator.dashboard import dashboard_router
from services.coordinator.relay import OutboxNotifier, OutboxRelay
from services.coordinator.scheduling import Roster
from services.coordinator.service import Coordinator
from services.coordinator.templates import PlanTemplates
from shared import tracing
from shared.db import SchemaError, check_schema, create_pool, migrate
from shared.kafka import client_options, reliable_producer
from shared.logging import get_logger
from shared.progress import Progress
from shared.settings import Settings
from shared.stack import Endpoints
from shared.supervision import Loops
from shared.topics import (
    CARE_TASKS,
    DETERMINATIONS,
    DETERMINATIONS_BACKFILL,
    EVENTS,
    EVENTS_BACKFILL,
    Topic,
)

log = get_logger("painpath.coordinator")

GROUP = "painpath-coordinator"
TIMELINE_GROUP = "painpath-coordinator-timeline"
BACKFILL_GROUP = "painpath-coordinator-backfill"
TIMELINE_BACKFILL_GROUP = "painpath-coordinator-timeline-backfill"


class ConsumerSpec(NamedTuple):
    name: str  # in readiness and metrics
    topics: tuple[Topic, ...]
    group: str
    max_records: int  # per batch (one transaction)
    # Starts no batch while the live determinations consumer has one, and cuts its batches to
    # `COORDINATOR_BACKFILL_SLICE_SECONDS` while that one is active (`consumer.BatchConsumer`).
    behind_live: bool

    @property
    def reads_events(self) -> bool:
        """Events for the timeline (`event_records`), not determinations."""
        return EVENTS in self.topics or EVENTS_BACKFILL in self.topics


# The backfill lane's two topics have consumers of their own, behind the live determinations:
# a backfill's timeline events (thousands a second to store) held the live determinations'
# event loop too (measured: their p50 from publication to PostgreSQL 2.2 s during a 200,000-event
# backfill, 1.0 s with the timeline's backfill consumer left out). The consumers start at once:
# four groups join the local broker in about 2 s, as one does.
CONSUMERS: tuple[ConsumerSpec, ...] = (
    ConsumerSpec("determinations", (DETERMINATIONS,), GROUP, MAX_RECORDS, False),  # first
    ConsumerSpec("events", (EVENTS,), TIMELINE_GROUP, MAX_RECORDS, False),
    ConsumerSpec(
        "determinations_backfill",
        (DETERMINATIONS_BACKFILL,),
        BACKFILL_GROUP,
        BACKFILL_MAX_RECORDS,
        True,
    ),
    ConsumerSpec("events_backfill", (EVENTS_BACKFILL,), TIMELINE_BACKFILL_GROUP, MAX_RECORDS, True),
)
CONSUMER_NAMES = tuple(spec.name for spec in CONSUMERS)
READINESS_TIMEOUT = 3.0
# Not ready without these (a dropped schema answers `SELECT 1` and fails every request).
SCHEMA_TABLES = [
    "determinations",
    "care_plans",
    "tasks",
    "task_audit",
    "outbox",
    "outbox_counter",
    "patient_sequences",
    "patient_events",
]
STOP_SECONDS = 10.0  # for the consumers, then again for the relay: within Kubernetes' 30 s grace


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.determinations = Counter(
            "painpath_coordinator_determinations",
            "Determination records consumed, by result",
            ["result"],
            registry=self.registry,
        )
        self.events = Counter(
            "painpath_coordinator_events",
            "Clinical event records kept for the timeline, by result",
            ["result"],
            registry=self.registry,
        )
        self.tasks = Gauge(
            "painpath_coordinator_tasks",
            "Tasks by state (read at scrape time)",
            ["state"],
            registry=self.registry,
        )
        self.outbox_backlog = Gauge(
            "painpath_coordinator_outbox_unpublished",
            "Task changes written but not yet published to care.tasks.v1",
            registry=self.registry,
        )
        self.lag = Gauge(
            "painpath_coordinator_consumer_lag",
            "Records not yet processed, by consumer, topic and partition",
            ["consumer", "topic", "partition"],
            registry=self.registry,
        )
        self.processing = Histogram(
            "painpath_coordinator_processing_seconds",
            "From a record's broker timestamp to its being applied, by consumer",
            ["consumer"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.retries = Gauge(
            "painpath_coordinator_database_retries",
            "Times a record was retried because the database did not answer, by consumer",
            ["consumer"],
            registry=self.registry,
        )
        for consumer in CONSUMER_NAMES:
            self.processing.labels(consumer)
            self.retries.labels(consumer)
        self.published = Gauge(
            "painpath_coordinator_outbox_published",
            "Task changes published by this instance's relay since start",
            registry=self.registry,
        )
        self.notifier_listening = Gauge(
            "painpath_coordinator_notifier_listening",
            "1 while the LISTEN connection that wakes the relay and the task stream is up"
            " (0: they poll every second while it reconnects)",
            registry=self.registry,
        )


def _observer(metrics: Metrics, spec: ConsumerSpec):
    counter = metrics.events if spec.reads_events else metrics.determinations

    def observe(outcome, seconds: float) -> None:
        counter.labels(outcome.value).inc()
        metrics.processing.labels(spec.name).observe(seconds)

    return observe


async def _finish(tasks: list[asyncio.Task], timeout: float) -> list[str]:
    """Wait for tasks asked to stop; cancel those still running after `timeout`.

    Returns the names of the tasks cancelled."""
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        log.warning("stop_timed_out_cancelling", task=task.get_name(), timeout_s=timeout)
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("task_failed", task=task.get_name(), exc_info=task.exception())
    return [task.get_name() for task in pending]


def create_app(
    settings: Settings,
    endpoints: Endpoints,
    templates: PlanTemplates,
    roster: Roster,
    today=lambda: datetime.now(UTC).date(),
) -> FastAPI:
    metrics = Metrics()
    prefix = settings.kafka_topic_prefix
    state: dict[str, Any] = {}
    coordinator = Coordinator(None, templates, roster, today)  # its pool is opened at start
    notifier = OutboxNotifier(endpoints.database_url)
    classifier_group = ClassifierGroupMonitor(
        settings, endpoints.bootstrap_servers, metrics.registry
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not endpoints.coordinator_tokens:
            raise RuntimeError("COORDINATOR_TOKENS is empty: nobody could use the API")
        await migrate(endpoints.database_url)
        pool = await create_pool(endpoints.database_url, settings.database_pool_max)
        coordinator.pool = pool
        await notifier.start(loops)
        producer = reliable_producer(settings, endpoints.bootstrap_servers)
        await producer.start()
        timeout_ms = int(settings.coordinator_session_timeout_seconds * 1000)
        kafka_consumers = [
            AIOKafkaConsumer(
                *(topic.full_name(prefix) for topic in spec.topics),
                **client_options(settings, endpoints.bootstrap_servers),
                group_id=f"{prefix}{spec.group}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=timeout_ms,
                heartbeat_interval_ms=timeout_ms // 3,
                fetch_max_wait_ms=settings.coordinator_fetch_wait_ms,
            )
            for spec in CONSUMERS
        ]
        # Each start waits for its group's first assignment (about 2 s on the local broker):
        # all at once, not one after the other.
        await asyncio.gather(*(consumer.start() for consumer in kafka_consumers))
        consumers: list[BatchConsumer] = []
        for spec, kafka_consumer in zip(CONSUMERS, kafka_consumers, strict=True):
            if spec.reads_events:
                # The cluster's metadata: each input's partition count, for the co-partitioning
                # check of each event topic.
                await kafka_consumer.topics()
                for topic in spec.topics:
                    name = topic.full_name(prefix)
                    count = len(kafka_consumer.partitions_for_topic(name) or ())
                    if count:
                        coordinator.event_partitions[name] = count
            consumers.append(
                BatchConsumer(
                    spec.name,
                    kafka_consumer,
                    coordinator.event_records
                    if spec.reads_events
                    else coordinator.determination_records,
                    Progress(settings.progress_watchdog_seconds),
                    _observer(metrics, spec),
                    max_records=spec.max_records,
                    behind=consumers[0] if spec.behind_live else None,
                    slice_seconds=settings.coordinator_backfill_slice_seconds,
                    backlog_share=settings.coordinator_backlog_share,
                )
            )
        relay = OutboxRelay(
            endpoints.database_url, pool, producer, CARE_TASKS.full_name(prefix), notifier
        )
        # Each loop recovers by itself (the consumers wait out a database outage, the relay and
        # the notifier reconnect), or its death stops the process (shared.supervision).
        consuming = [loops.start(c.name, c.run) for c in consumers]
        relaying = loops.start("relay", relay.run, restart=True)
        tasks = [*consuming, relaying]
        state.update(pool=pool, consumers=consumers, relay=relay, tasks=tasks)
        await classifier_group.start(loops)
        log.info("coordinator_started", templates=templates.id, people=len(roster.people))
        try:
            yield
        finally:
            # SIGTERM (uvicorn stopped taking requests first): the consumers finish the record in
            # hand and commit, then the relay publishes what they wrote; whatever outlasts
            # STOP_SECONDS is cancelled (at-least-once: the next instance finds it applied).
            stopping_at = time.monotonic()
            loops.stop()
            log.info("coordinator_stopping")
            await classifier_group.stop()
            for consumer in consumers:
                consumer.stop()
            cancelled = await _finish(consuming, STOP_SECONDS)
            relay.stop()
            cancelled += await _finish([relaying], STOP_SECONDS)
            for consumer in kafka_consumers:
                await consumer.stop()  # leaves the group: its partitions move on at once
            await producer.stop()
            await notifier.stop()
            await pool.close()
            log.info(
                "coordinator_stopped",
                graceful=not cancelled,
                cancelled=cancelled,
                relay_published=relay.published,
                seconds=round(time.monotonic() - stopping_at, 2),
            )

    app = FastAPI(
        title="Painpath coordinator",
        version="1",
        description=(
            "Care plans and team tasks from refractory-pain determinations."
            " Authenticate with `Authorization: Bearer <token>`."
        ),
        lifespan=lifespan,
    )

    app.include_router(create_router(coordinator, notifier, endpoints.coordinator_tokens))
    app.include_router(dashboard_router())
    app.include_router(classifier_group.router())

    @app.middleware("http")
    async def observe(request: Request, call_next):
        structlog.contextvars.clear_contextvars()
        traceparent = tracing.continue_trace(request.headers.get(tracing.TRACEPARENT))
        tracing.bind(traceparent)
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        response.headers[tracing.TRACEPARENT] = traceparent
        log.info(
            "request",
            method=request.method,
            route=route,  # the template: a path can hold a patient id
            code=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    loops = Loops.of_app(app)

    @app.get("/readyz", summary="Readiness: database, consumers and relay")
    async def readyz() -> JSONResponse:
        checks = {"database": "ok", **dict.fromkeys(CONSUMER_NAMES, "ok"), "relay": "ok"}
        try:
            async with asyncio.timeout(READINESS_TIMEOUT):
                await check_schema(state["pool"], SCHEMA_TABLES)
        except SchemaError as exc:
            checks["database"] = f"failing: {exc}"
        except Exception as exc:  # what failed is the answer, not an error of ours
            checks["database"] = f"failing: {type(exc).__name__}"
        for consumer in state["consumers"]:
            checks[consumer.name] = consumer.readiness(sum((await consumer.lag()).values()))
        for task in state["tasks"]:
            if task.done():
                checks[task.get_name()] = "failing: stopped"
        ready = all(result == "ok" for result in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        pool = state["pool"]
        counts = dict(await pool.fetch("SELECT state, count(*) FROM tasks GROUP BY state"))
        for task_state in TaskState:
            metrics.tasks.labels(task_state.value).set(counts.get(task_state.value, 0))
        metrics.outbox_backlog.set(
            await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        )
        metrics.published.set(state["relay"].published)
        metrics.notifier_listening.set(1 if notifier.listening else 0)
        for consumer in state["consumers"]:
            metrics.retries.labels(consumer.name).set(consumer.retries)
            for partition, lag in (await consumer.lag()).items():
                metrics.lag.labels(consumer.name, partition.topic, str(partition.partition)).set(
                    lag
                )
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
