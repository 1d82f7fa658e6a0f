"""The streaming classifier (faust): `pain.events.v1` in, `pain.determinations.v1` out.

- Each patient's admitted events are kept in the changelog-backed table `patients` (the
  original JSON texts, and the id of the determination last published), so state survives a
  restart and moves with its partition when workers join or leave.
- A record that breaks the contract (not UTF-8, not JSON, unknown type, invalid fields, a key
  that is not its patient id, a conflicting duplicate) is copied to `pain.events.dlq.v1` with
  its original key, value and headers, plus headers naming the reason and where it came from;
  the stream goes on.
- A determination is published, keyed by patient, only when its id changes: the id is derived
  from the decision and its evidence, so re-delivered input never yields a second, different
  message.
- Every `CLASSIFIER_REEVALUATE_SECONDS` each worker re-decides the patients of its partitions,
  since status changes as time passes (90 and 365 days, a trial reaching its minimum days).

Delivery is at-least-once (faust's default): offsets are committed after processing, so a crash
re-delivers, and re-delivery is idempotent by the contract's (source, id).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import faust
import structlog
from aiokafka.partitioner import murmur2
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.classifier.determination import Determination, Status
from services.classifier.history import CONFLICT_REASON, Admission, PatientHistory
from services.classifier.policy import Policy
from services.classifier.rules import evaluate
from shared import dead_letter, tracing
from shared.contract import ContractViolation, parse_event
from shared.logging import get_logger
from shared.progress import Progress
from shared.settings import Settings
from shared.stack import Endpoints
from shared.topics import DETERMINATIONS, EVENTS, EVENTS_DLQ

log = get_logger("painpath.classifier")

GROUP = "painpath-classifier"
YIELD_EVERY = 200  # patients re-decided between two yields to the event loop


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "painpath_classifier_events",
            "Input records, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "painpath_classifier_dead_letters",
            "Records sent to the dead-letter topic, by kind of reason",
            ["kind"],
            registry=self.registry,
        )
        self.determinations = Counter(
            "painpath_classifier_determinations",
            "Determinations published, by status",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "painpath_classifier_processing_seconds",
            "From the record's broker timestamp to its determination being decided",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.lag = Gauge(
            "painpath_classifier_consumer_lag",
            "Input records not yet processed, by partition of pain.events.v1",
            ["partition"],
            registry=self.registry,
        )
        self.reevaluations = Counter(
            "painpath_classifier_reevaluated_patients",
            "Patients re-decided because time passed",
            registry=self.registry,
        )
        for outcome in ("new", "duplicate", "dead_letter"):
            self.events.labels(outcome)
        for status in Status:
            self.determinations.labels(status.value)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    from shared.kafka import client_options

    options = client_options(settings, "")
    ssl_context = options.get("ssl_context")
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"],
            ssl_context=ssl_context,
        )
    return faust.SSLCredentials(ssl_context)


class Classifier:
    """The per-record work, apart from faust's wiring (so that it reads top to bottom)."""

    def __init__(
        self,
        policy: Policy,
        table: faust.Table,
        dead_letters: faust.TopicT,
        determinations: faust.TopicT,
        clock: Callable[[], datetime],
        metrics: Metrics,
        cache_size: int,
        progress: Progress,
    ):
        self.policy = policy
        self.table = table
        self.dead_letters = dead_letters
        self.determinations = determinations
        self.clock = clock
        self.metrics = metrics
        self.cache_size = cache_size
        self.progress = progress
        self._cache: OrderedDict[bytes, PatientHistory] = OrderedDict()

    def forget_cache(self) -> None:
        """Called on every rebalance: another worker may have changed what was cached."""
        self._cache.clear()
        self.progress.forget()

    def history(self, key: bytes) -> PatientHistory:
        history = self._cache.get(key)
        if history is None:
            stored = self.table.get(key)
            history = PatientHistory.from_record(stored) if stored else PatientHistory()
            self._cache[key] = history
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return history

    async def handle(self, message: faust.types.Message) -> None:
        await self._handle(message)
        self.progress.processed(message.partition, message.offset)

    async def _handle(self, message: faust.types.Message) -> None:
        traceparent = tracing.continue_trace(tracing.from_headers(message.headers))
        structlog.contextvars.clear_contextvars()
        tracing.bind(traceparent)
        try:
            text = message.value.decode("utf-8")
            event = parse_event(text)
        except UnicodeDecodeError:
            await self.dead_letter(message, "(event): not UTF-8 text", "(event)", "encoding")
            return
        except ContractViolation as violation:
            first = violation.violations[0].field
            await self.dead_letter(message, str(violation), first, "contract")
            return
        if message.key != event.patient_id.encode():
            reason = "key: the record's key must be its event's data.patient_id"
            await self.dead_letter(message, reason, "key", "key")
            return
        history = self.history(message.key)
        admission = history.admit(event, text)
        if admission is Admission.CONFLICT:
            await self.dead_letter(message, f"id: {CONFLICT_REASON}", "id", "conflict")
            return
        self.metrics.events.labels(admission.value).inc()
        if admission is Admission.NEW:
            await self.decide(message.key, history, traceparent)
            self.metrics.latency.observe(max(0.0, time.time() - message.timestamp))

    async def decide(self, key: bytes, history: PatientHistory, traceparent: str) -> Determination:
        """Re-decide one patient now; publish and remember the determination if it changed."""
        determination = evaluate(history.events, self.policy, self.clock())
        if determination.determination_id != history.published:
            await self.determinations.send(
                key=key,
                value=determination.model_dump_json().encode(),
                headers=[
                    ("content-type", b"application/json"),
                    (tracing.TRACEPARENT, traceparent.encode()),
                ],
            )
            log.debug("determination_published", status=determination.status.value)
            history.published = determination.determination_id
            self.metrics.determinations.labels(determination.status.value).inc()
        self.table[key] = history.to_record()
        return determination

    async def dead_letter(self, message: faust.types.Message, reason: str, field: str, kind: str):
        headers = [
            *(message.headers.items() if isinstance(message.headers, dict) else message.headers),
            (dead_letter.REASON, reason.encode()),
            (dead_letter.FIELD, field.encode()),
            (dead_letter.ORIGINAL_TOPIC, message.topic.encode()),
            (dead_letter.ORIGINAL_PARTITION, str(message.partition).encode()),
            (dead_letter.ORIGINAL_OFFSET, str(message.offset).encode()),
            (dead_letter.FAILED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        await self.dead_letters.send(key=message.key, value=message.value, headers=headers)
        self.metrics.events.labels("dead_letter").inc()
        self.metrics.dead_letters.labels(kind).inc()
        log.info(
            "dead_lettered",
            kind=kind,
            field=field,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
        )

    async def reevaluate(self, active_partitions: set[int], partitions: int) -> int:
        """Re-decide every patient of the active partitions; return how many."""
        done = 0
        for key in list(self.table.keys()):
            if partition_of(key, partitions) not in active_partitions:
                continue  # left behind by a partition this worker no longer owns
            # Time passing is a cause of its own: a new trace.
            await self.decide(key, self.history(key), tracing.continue_trace(None))
            done += 1
            if done % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        self.metrics.reevaluations.inc(done)
        return done


def create_app(
    settings: Settings, endpoints: Endpoints, policy: Policy, datadir: Path
) -> faust.App:
    """The classifier worker's faust app, wired to the configured topics."""
    prefix = settings.kafka_topic_prefix
    metrics = Metrics()
    app = faust.App(
        f"{prefix}{GROUP}",
        broker=[f"kafka://{server}" for server in endpoints.bootstrap_servers.split(",")],
        broker_credentials=_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        topic_partitions=EVENTS.partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.classifier_session_timeout_seconds,
        producer_acks=-1,
        web_host=settings.classifier_host,
        web_port=settings.classifier_port,
        web_in_thread=False,
    )
    events_name = EVENTS.full_name(prefix)
    # Raw bytes in and out: decoding is ours, so that a record that is not JSON is a dead
    # letter instead of a crash inside faust's deserializer.
    raw = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events = app.topic(events_name, partitions=EVENTS.partitions, **raw)
    dead_letters = app.topic(EVENTS_DLQ.full_name(prefix), partitions=EVENTS_DLQ.partitions, **raw)
    determinations = app.topic(
        DETERMINATIONS.full_name(prefix), partitions=DETERMINATIONS.partitions, **raw
    )
    # use_partitioner: the re-evaluation timer writes outside stream iteration; keys are the
    # raw patient id bytes, partitioned like the input, so the changelog stays co-partitioned.
    table = app.Table(
        "patients",
        key_type=bytes,
        partitions=EVENTS.partitions,
        default=None,
        use_partitioner=True,
    )
    fixed = settings.classifier_as_of
    classifier = Classifier(
        policy,
        table,
        dead_letters,
        determinations,
        clock=(lambda: fixed) if fixed else (lambda: datetime.now(UTC)),
        metrics=metrics,
        cache_size=settings.classifier_cache_patients,
        progress=Progress(settings.progress_watchdog_seconds),
    )

    async def lag() -> dict[int, int]:
        lags = {}
        for partition in app.consumer.assignment():
            if partition.topic != events_name:
                continue
            highwater = app.consumer.highwater(partition)
            position = await app.consumer.position(partition)
            if highwater is not None and position is not None:
                lags[partition.partition] = classifier.progress.lag(
                    partition.partition, highwater, position
                )
        return lags

    @app.agent(events, name="classify")
    async def classify(stream):
        async for event in stream.events():
            await classifier.handle(event.message)

    @app.timer(interval=settings.classifier_reevaluate_seconds)
    async def reevaluate() -> None:
        active = {tp.partition for tp in app.consumer.assignment() if tp.topic == events_name}
        if active:
            done = await classifier.reevaluate(active, EVENTS.partitions)
            log.info("reevaluated", patients=done, partitions=len(active))

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs) -> None:
        classifier.forget_cache()

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web, request):
        assigned = bool(app.consumer.assignment()) if app.consumer else False
        recovered = app.tables.recovery.completed.is_set()
        waiting = sum((await lag()).values()) if assigned else 0
        progressing = not classifier.progress.stalled(waiting)
        ready = assigned and recovered and progressing
        checks = {
            "partitions_assigned": assigned,
            "state_recovered": recovered,
            "progressing": progressing,
            "lag": waiting,
        }
        return web.json({"ready": ready, "checks": checks}, status=200 if ready else 503)

    @app.page("/metrics")
    async def prometheus(web, request):
        for partition, waiting in (await lag()).items():
            metrics.lag.labels(str(partition)).set(waiting)
        # aiohttp takes the charset apart from the media type
        media_type = CONTENT_TYPE_LATEST.split(";")[0]
        return web.bytes(generate_latest(metrics.registry), content_type=media_type)

    return app
