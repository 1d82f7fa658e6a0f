"""The streaming classifier: `pain.events.v1` in, `pain.determinations.v1` out.

A worker is one member of the consumer group `painpath-classifier`; start several and the
partitions are shared between them. The design, and why it is not a faust agent, is in the
README ("The streaming classifier"). In short:

- **Batches.** Records are fetched in batches (up to `CLASSIFIER_MAX_BATCH`). Each record is read
  (`records.read_record`) and admitted to its patient's history (`history.admit`: a duplicate
  changes nothing, a conflicting one is refused). Refused records go to `pain.events.dlq.v1` with
  their original key, value and headers plus headers naming the reason and where they came from.
- **State.** Each owned partition's histories live in memory. What a batch admitted is appended,
  as framed original bytes, to the partition of the same number of the internal topic
  `painpath.classifier.history.v1`: one record per partition per batch, not one per event or per
  patient. A partition's histories are rebuilt from it when the partition is assigned.
- **Decisions.** A patient touched by a batch is marked dirty; dirty patients are re-decided
  (`rules.evaluate`) once the worker has caught up, or, during a backfill, after
  `CLASSIFIER_DECISION_DELAY_SECONDS` and four times what the pass is expected to take (deciding
  takes at most a fifth of the time), so a patient with a hundred events in a backfill is decided
  a few times, not a hundred. A determination is published, keyed by patient, on the partition
  of its input, only when its id differs from the last one published for that patient.
- **Delivery.** After each batch every send (history, dead letters, determinations) is
  acknowledged by the broker (`acks=all`) before the input offsets are committed. A crash
  re-delivers the uncommitted records, whose admission is idempotent.
- **No duplicate determinations after a crash.** What was published is read back from
  `pain.determinations.v1` itself when a partition is assigned, not from state that a crash may
  have left behind it; every restored patient is then re-decided, so a determination that was
  decided but not yet published when a worker died is published by the next owner.
- **Time passing.** Every `CLASSIFIER_REEVALUATE_SECONDS` all patients of the owned partitions
  are marked dirty: status changes at 90 and 365 days and when a trial reaches its minimum days.
- **Quarantine.** Whatever bug may hide in a rule, deciding one patient never stops a worker: a
  patient whose decision raises is set aside (counted, logged without its id or the exception's
  message, and a dead letter listing the (source, id) of its events), and every other patient
  goes on. It is not dirty, so its partition's offsets advance, and the time-passing
  re-evaluation leaves it alone; it is decided again when a new event arrives for it, or when its
  partition is restored (a restart, e.g. with a new policy, re-decides every patient).
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.partitioner import murmur2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.classifier.history import CONFLICT_REASON, Admission, PatientHistory
from services.classifier.policy import Policy
from services.classifier.records import DecisionFailure, Rejection, read_record
from services.classifier.rules import evaluate
from shared import dead_letter, tracing
from shared.contract import ContractViolation, Status, parse_event
from shared.kafka import client_options, end_offsets
from shared.logging import get_logger
from shared.progress import Progress
from shared.settings import Settings
from shared.stack import Endpoints
from shared.topics import CLASSIFIER_HISTORY, DETERMINATIONS, EVENTS, EVENTS_DLQ

log = get_logger("painpath.classifier")

GROUP = "painpath-classifier"
YIELD_EVERY = 200  # patients decided between two yields to the event loop
HISTORY_FORMAT = b"\x01"  # framing version of a history record
HISTORY_CHUNK_BYTES = 512 * 1024  # history records stay well under the broker's message limit
CAUGHT_UP_RECORDS = 1_000  # below this lag a worker decides at once: latency over batching
DECISION_SHARE = 4  # during a backfill, wait 4x a pass's expected duration: a fifth deciding
QUARANTINE = "quarantine"  # the dead-letter kind of a patient set aside
QUARANTINE_FIELD = "(patient)"


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
            "From the record's broker timestamp to its patient being decided",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch = Histogram(
            "painpath_classifier_batch_records",
            "Records per fetched batch",
            buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 25_000),
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
        self.decided = Counter(
            "painpath_classifier_decided_patients",
            "Patients decided (a determination computed), published or not",
            registry=self.registry,
        )
        self.dirty = Gauge(
            "painpath_classifier_dirty_patients",
            "Patients with admitted events whose determination is not decided and published yet",
            registry=self.registry,
        )
        self.restores = Counter(
            "painpath_classifier_restored_partitions",
            "Partitions whose state was rebuilt from the history topic",
            registry=self.registry,
        )
        self.restore_seconds = Histogram(
            "painpath_classifier_restore_seconds",
            "Time to rebuild the state of the partitions of one assignment (read at once)",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.quarantined = Counter(
            "painpath_classifier_quarantined_patients",
            "Patients set aside because deciding them raised, by exception type (once per"
            " failed decision: a new event retries, and may count again)",
            ["error"],
            registry=self.registry,
        )
        self.in_quarantine = Gauge(
            "painpath_classifier_patients_in_quarantine",
            "Patients of the owned partitions set aside now, until a new event or a restore",
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "painpath_classifier_commit_failures",
            "Offset commits refused (a rebalance took the partitions; the records are re-read)",
            registry=self.registry,
        )
        for outcome in ("new", "duplicate", "dead_letter"):
            self.events.labels(outcome)
        for status in Status:
            self.determinations.labels(status.value)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def encode_history(texts: list[bytes]) -> bytes:
    """One history record: the original bytes of admitted events, each with a 4-byte length."""
    return HISTORY_FORMAT + b"".join(len(text).to_bytes(4, "big") + text for text in texts)


def decode_history(value: bytes) -> Iterator[bytes]:
    if value[:1] != HISTORY_FORMAT:
        raise ValueError(f"unknown history record format {value[:1]!r}")
    position = 1
    while position < len(value):
        length = int.from_bytes(value[position : position + 4], "big")
        position += 4
        yield value[position : position + length]
        position += length


def _chunks(texts: list[bytes], limit: int = HISTORY_CHUNK_BYTES) -> Iterator[list[bytes]]:
    chunk, size = [], 0
    for text in texts:
        if chunk and size + len(text) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 4
    if chunk:
        yield chunk


def quarantine_reason(failure: DecisionFailure) -> str:
    return (
        f"{QUARANTINE_FIELD}: deciding raised {failure.error} in {failure.raised_in};"
        " set aside until a new event or a new policy"
    )


def quarantine_documents(
    keys: list[str],
    failure: DecisionFailure,
    policy: str,
    as_of: datetime,
    limit: int = HISTORY_CHUNK_BYTES,
) -> list[bytes]:
    """The dead letter of a patient set aside: a JSON document naming the (source, id) of the
    events being decided (`keys`, the history's keys), in several parts (`part` of `parts`)
    when they do not fit in about `limit` bytes, so the broker never refuses one."""
    parts: list[list[dict[str, str]]] = [[]]
    size = 0
    for key in keys:
        # A history's key is f"{source}\x1f{id}"; a URI reference has no control character.
        source, _, event_id = key.partition("\x1f")
        ref = {"source": source, "id": event_id}
        length = len(json.dumps(ref)) + 2  # its bytes in the document (ASCII, escaped)
        if parts[-1] and size + length > limit:
            parts.append([])
            size = 0
        parts[-1].append(ref)
        size += length
    head = {
        "kind": QUARANTINE,
        "error": failure.error,
        "raised_in": failure.raised_in,
        "policy": policy,
        "as_of": as_of.isoformat(),
        "event_count": len(keys),
        "parts": len(parts),
    }
    return [
        json.dumps(head | {"part": number, "events": events}).encode()
        for number, events in enumerate(parts, start=1)
    ]


@dataclass
class Dirty:
    partition: int
    parent: str | bytes | None  # the trace context a determination continues (None: a new one)
    timestamp_ms: int | None  # the newest record's broker timestamp, for the latency histogram


@dataclass(frozen=True)
class Decided:
    """A determination to publish, serialised."""

    key: bytes
    partition: int
    value: bytes
    determination_id: str
    status: str
    parent: str | bytes | None


class PassCost:
    """What deciding costs, per event of the histories decided: learnt from each pass, so the
    next pass's duration is known before it starts (a pass re-reads whole histories, which grow
    during a backfill, so the last pass's duration under-estimates the next one's)."""

    PRIOR = 20e-6  # seconds per event before any pass was measured (measured: 12-17 us)
    MIN_EVENTS = 1_000  # a smaller pass is too noisy to learn from

    def __init__(self) -> None:
        self.seconds_per_event = self.PRIOR

    def expected(self, events: int) -> float:
        return events * self.seconds_per_event

    def observe(self, events: int, seconds: float) -> None:
        if events >= self.MIN_EVENTS:
            self.seconds_per_event = (self.seconds_per_event + seconds / events) / 2


def decision_due(waited: float, delay: float, expected_pass_seconds: float) -> bool:
    """During a backfill: decide once the dirty patients have waited `delay`, and at least
    DECISION_SHARE times what their pass will take, so deciding takes at most a fifth of the
    time and the rest goes to reading the backlog."""
    return waited >= max(delay, DECISION_SHARE * expected_pass_seconds)


@dataclass
class PartitionState:
    patients: dict[bytes, PatientHistory] = field(default_factory=dict)
    next_offset: int | None = None  # the input offset after the last one processed
    committed: int | None = None  # the last offset committed for the group
    # Patients whose decision raised: not decided again until a new event or a restore.
    quarantined: set[bytes] = field(default_factory=set)


class ParsedCache:
    """Which histories keep their parsed events (the rest keep only their texts): bounded memory."""

    def __init__(self, size: int):
        self._size = size
        self._order: OrderedDict[int, PatientHistory] = OrderedDict()

    def touch(self, history: PatientHistory) -> None:
        self._order[id(history)] = history
        self._order.move_to_end(id(history))
        while len(self._order) > self._size:
            _, evicted = self._order.popitem(last=False)
            evicted.forget_parsed()

    def clear(self) -> None:
        self._order.clear()


class Classifier:
    """One worker: consumes, keeps state, decides, publishes; see the module's docstring."""

    def __init__(
        self,
        settings: Settings,
        endpoints: Endpoints,
        policy: Policy,
        clock: Callable[[], datetime] | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.endpoints = endpoints
        self.policy = policy
        fixed = settings.classifier_as_of
        self.clock = clock or ((lambda: fixed) if fixed else (lambda: datetime.now(UTC)))
        self.metrics = metrics or Metrics()
        self._counted_new = self.metrics.events.labels(Admission.NEW.value)
        self._counted_duplicate = self.metrics.events.labels(Admission.DUPLICATE.value)
        prefix = settings.kafka_topic_prefix
        self.group = f"{prefix}{GROUP}"
        self.events_topic = EVENTS.full_name(prefix)
        self.dlq_topic = EVENTS_DLQ.full_name(prefix)
        self.determinations_topic = DETERMINATIONS.full_name(prefix)
        self.history_topic = CLASSIFIER_HISTORY.full_name(prefix)
        self.progress = Progress(settings.progress_watchdog_seconds)
        self.owned: dict[int, PartitionState] = {}
        self.dirty: dict[bytes, Dirty] = {}
        self.dirty_since: float | None = None
        self.pass_cost = PassCost()
        self._dirty_events_at: tuple[float, int] = (-1e9, 0)  # (when counted, events)
        self.restoring = False
        self.parsed = ParsedCache(settings.classifier_cache_patients)
        self._lock = asyncio.Lock()
        self._pending: list[asyncio.Future] = []
        self._stopping = False
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _options(self) -> dict[str, object]:
        return client_options(self.settings, self.endpoints.bootstrap_servers)

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            **self._options(),
            acks="all",
            linger_ms=2,
            max_batch_size=1024 * 1024,
            max_request_size=2 * 1024 * 1024,
        )
        await self.producer.start()
        timeout_ms = int(self.settings.classifier_session_timeout_seconds * 1000)
        self.consumer = AIOKafkaConsumer(
            **self._options(),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=timeout_ms,
            heartbeat_interval_ms=max(100, timeout_ms // 3),
            fetch_max_wait_ms=self.settings.classifier_fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self.consumer.start()
        await self._check_co_partitioning()
        self.consumer.subscribe([self.events_topic], listener=_Rebalance(self))

    async def _check_co_partitioning(self) -> None:
        await self.consumer.topics()  # fetches the cluster's metadata
        counts = {
            topic: len(self.consumer.partitions_for_topic(topic) or ())
            for topic in (self.events_topic, self.determinations_topic, self.history_topic)
        }
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"input, determinations and history topics must have the same partition count,"
                f" found {counts}: run `painpath topics create`"
            )

    def request_stop(self) -> None:
        """Take no new batch; `run` returns once the batch in hand is committed."""
        self._stopping = True

    async def close(self) -> None:
        """Leave the group (the partitions move at once) and close the clients."""
        self._stopping = True
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def run(self) -> None:
        """Consume until stopped. Each loop: fetch, admit, maybe decide, flush, commit."""
        reevaluate_at = time.monotonic() + self.settings.classifier_reevaluate_seconds
        max_batch = self.settings.classifier_max_batch
        while not self._stopping:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=max_batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return
                raise
            async with self._lock:
                if self._stopping:
                    return
                if batches:
                    self._consume(batches)
                    # What a batch admitted lives as long as its partition: out of the cyclic
                    # collector's sight, or every collection walks the whole, growing state
                    # (measured: parsing took 15.4 us per event with a growing heap, 6.7 frozen).
                    gc.freeze()
                if time.monotonic() >= reevaluate_at:
                    reevaluate_at = time.monotonic() + self.settings.classifier_reevaluate_seconds
                    self._mark_all_dirty()
                    # Frozen objects are freed by reference counting; cycles among them only by
                    # a full collection, done here, once per re-evaluation period.
                    gc.unfreeze()
                    gc.collect()
                    gc.freeze()
                decided = await self._decide_dirty() if self._should_decide() else []
                self.metrics.dirty.set(len(self.dirty) + len(decided))
                await self._deliver(decided)
                self.metrics.dirty.set(len(self.dirty))

    # -- consuming -----------------------------------------------------------------------------

    def _consume(self, batches: dict[TopicPartition, list]) -> None:
        count, duplicates = 0, 0
        for tp, records in batches.items():
            state = self.owned.get(tp.partition)
            if state is None or not records:
                continue  # revoked while fetched: the next owner reads them
            admitted: list[bytes] = []
            first = records[0].offset
            for record in records:
                admission = self._admit(state, tp.partition, record)
                if admission is Admission.NEW:
                    admitted.append(record.value)
                elif admission is Admission.DUPLICATE:
                    duplicates += 1
            count += len(records)
            last = records[-1].offset
            state.next_offset = last + 1
            self.progress.processed(tp.partition, last)
            for chunk in _chunks(admitted):
                self._send(
                    self.history_topic,
                    encode_history(chunk),
                    key=f"{first}-{last}".encode(),
                    partition=tp.partition,
                )
            self._counted_new.inc(len(admitted))
        self._counted_duplicate.inc(duplicates)
        self.metrics.batch.observe(count)
        self.metrics.dirty.set(len(self.dirty))

    def _admit(self, state: PartitionState, partition: int, record) -> Admission | None:
        """Admit one record: NEW, DUPLICATE, or None for a dead letter."""
        read = read_record(record.key, record.value)
        if isinstance(read, Rejection):
            self._dead_letter(record, read)
            return None
        event, text = read
        history = state.patients.get(record.key)
        if history is None:
            history = state.patients[record.key] = PatientHistory()
        admission = history.admit(event, text)
        if admission is Admission.CONFLICT:
            self._dead_letter(record, Rejection(f"id: {CONFLICT_REASON}", "id", "conflict"))
            return None
        if admission is Admission.NEW:
            if state.quarantined and record.key in state.quarantined:
                state.quarantined.discard(record.key)  # a new event: decided again
                self.metrics.in_quarantine.set(self.quarantined_count())
            # The record's own trace context; our span is made when a determination is sent.
            parent = tracing.from_headers(record.headers)
            self._mark_dirty(record.key, partition, parent, record.timestamp)
        return admission

    def _mark_dirty(
        self, key: bytes, partition: int, parent: str | bytes | None, timestamp_ms: int | None
    ) -> None:
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()
        self.dirty[key] = Dirty(partition, parent, timestamp_ms)

    def _mark_all_dirty(self) -> None:
        traceparent = tracing.continue_trace(None)  # time passing is a cause of its own
        marked = 0
        for partition, state in self.owned.items():
            for key in state.patients:
                # A patient set aside waits for a new event: its decision would raise again.
                if key not in self.dirty and key not in state.quarantined:
                    self._mark_dirty(key, partition, traceparent, None)
                    marked += 1
        self.metrics.reevaluations.inc(marked)
        log.info(
            "reevaluating",
            patients=marked,
            partitions=len(self.owned),
            quarantined=self.quarantined_count(),
        )

    def _dead_letter(self, record, rejection: Rejection) -> None:
        headers = [
            *(record.headers or ()),
            (dead_letter.REASON, rejection.reason.encode()),
            (dead_letter.FIELD, rejection.field.encode()),
            (dead_letter.KIND, rejection.kind.encode()),
            (dead_letter.ORIGINAL_TOPIC, record.topic.encode()),
            (dead_letter.ORIGINAL_PARTITION, str(record.partition).encode()),
            (dead_letter.ORIGINAL_OFFSET, str(record.offset).encode()),
            (dead_letter.FAILED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        self._send(self.dlq_topic, record.value, key=record.key, headers=headers)
        self.metrics.events.labels("dead_letter").inc()
        self.metrics.dead_letters.labels(rejection.kind).inc()
        log.info(
            "dead_lettered",
            kind=rejection.kind,
            field=rejection.field,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            trace_id=tracing.trace_id_of(tracing.from_headers(record.headers)),
        )

    # -- deciding ------------------------------------------------------------------------------

    def lag(self) -> dict[int, int]:
        """Input records not yet processed, per owned partition (once a fetch told its end)."""
        lags = {}
        for partition, state in self.owned.items():
            tp = TopicPartition(self.events_topic, partition)
            highwater = self.consumer.highwater(tp)
            if highwater is None or state.next_offset is None:
                continue
            lags[partition] = self.progress.lag(partition, highwater, state.next_offset)
        return lags

    def _should_decide(self) -> bool:
        if not self.dirty:
            return False
        if sum(self.lag().values()) < CAUGHT_UP_RECORDS:
            return True
        waited = time.monotonic() - (self.dirty_since or time.monotonic())
        delay = self.settings.classifier_decision_delay_seconds
        if waited < delay:
            return False
        return decision_due(waited, delay, self.pass_cost.expected(self._dirty_events()))

    def _dirty_events(self) -> int:
        """The events in the histories of the dirty patients: what their pass will read.
        Counted at most once a second (it walks every dirty patient; a batch takes a fraction
        of a second): a second's admissions do not change the answer."""
        now = time.monotonic()
        if now - self._dirty_events_at[0] >= 1.0:
            self._dirty_events_at = (now, self._count_dirty_events())
        return self._dirty_events_at[1]

    def _count_dirty_events(self) -> int:
        events = 0
        for key, mark in self.dirty.items():
            state = self.owned.get(mark.partition)
            history = state.patients.get(key) if state is not None else None
            if history is not None:
                events += len(history.raw)
        return events

    async def _decide_dirty(self) -> list[Decided]:
        """Decide every dirty patient; return the determinations to publish (changed ones),
        already serialised: a pass over many patients keeps bytes, not object trees."""
        started = time.monotonic()
        dirty, self.dirty, self.dirty_since = self.dirty, {}, None
        self._dirty_events_at = (-1e9, 0)
        now = self.clock()
        changed = []
        events = 0
        for done, (key, mark) in enumerate(dirty.items(), start=1):
            state = self.owned.get(mark.partition)
            history = state.patients.get(key) if state is not None else None
            if history is not None:
                events += len(history.raw)
                try:  # the bulkhead: no rule's bug may stop the worker (see the module doc)
                    determination = evaluate(history.events, self.policy, now)
                    value = determination.model_dump_json().encode()
                except Exception as error:
                    self._quarantine(key, mark.partition, state, history, error, now)
                else:
                    self.parsed.touch(history)
                    self.metrics.decided.inc()
                    if mark.timestamp_ms is not None:
                        self.metrics.latency.observe(
                            max(0.0, time.time() - mark.timestamp_ms / 1000)
                        )
                    if determination.determination_id != history.published:
                        changed.append(
                            Decided(
                                key,
                                mark.partition,
                                value,
                                determination.determination_id,
                                determination.status.value,
                                mark.parent,
                            )
                        )
            if done % YIELD_EVERY == 0:
                gc.freeze()  # what the pass allocated so far stays out of the collector's way
                await asyncio.sleep(0)  # health and metrics stay answered during a long pass
        self.pass_cost.observe(events, time.monotonic() - started)
        self.metrics.dirty.set(len(self.dirty))
        return changed

    def _quarantine(
        self,
        key: bytes,
        partition: int,
        state: PartitionState,
        history: PatientHistory,
        error: Exception,
        as_of: datetime,
    ) -> None:
        """Set a patient aside: counted, logged and dead-lettered, never its id or the exception's
        message (it may quote a value); decided again on its next new event or a restore."""
        failure = DecisionFailure.of(error)
        state.quarantined.add(key)
        history.forget_parsed()  # parsed again if ever decided again; the cache never saw them
        self.metrics.quarantined.labels(failure.error).inc()
        self.metrics.in_quarantine.set(self.quarantined_count())
        headers = [
            (dead_letter.REASON, quarantine_reason(failure).encode()),
            (dead_letter.FIELD, QUARANTINE_FIELD.encode()),
            (dead_letter.KIND, QUARANTINE.encode()),
            (dead_letter.ORIGINAL_TOPIC, self.events_topic.encode()),
            (dead_letter.ORIGINAL_PARTITION, str(partition).encode()),
            *(
                [(dead_letter.ORIGINAL_OFFSET, str(state.next_offset).encode())]
                if state.next_offset is not None
                else []
            ),
            (dead_letter.FAILED_AT, datetime.now(UTC).isoformat().encode()),
        ]
        documents = quarantine_documents(list(history.raw), failure, self.policy.id, as_of)
        for document in documents:
            self._send(self.dlq_topic, document, key=key, headers=headers)
        self.metrics.dead_letters.labels(QUARANTINE).inc(len(documents))
        log.error(
            "patient_quarantined",
            error=failure.error,
            raised_in=failure.raised_in,
            partition=partition,
            events=len(history.raw),
        )

    def quarantined_count(self) -> int:
        """Patients of the owned partitions set aside now."""
        return sum(len(state.quarantined) for state in self.owned.values())

    # -- delivering ----------------------------------------------------------------------------

    def _send(self, topic: str, value: bytes, *, key, partition=None, headers=None) -> None:
        """Queue a send; `_flush` waits for its acknowledgement."""
        self._pending.append(
            asyncio.ensure_future(
                self.producer.send(topic, value, key=key, partition=partition, headers=headers)
            )
        )

    async def _flush(self) -> None:
        """Wait until the broker acknowledged every queued send (acks=all)."""
        if self._pending:
            pending, self._pending = self._pending, []
            deliveries = await asyncio.gather(*pending)  # queued in the producer's buffer
            await asyncio.gather(*deliveries)  # acknowledged by the broker

    def _offsets(self, *, decided_only: bool) -> dict[TopicPartition, int]:
        """The processed offsets not committed yet; with `decided_only`, only of partitions none
        of whose patients waits for a decision, so that a committed offset (the group's lag,
        which autoscaling and "settled" read) means decided and published."""
        waiting = {mark.partition for mark in self.dirty.values()} if decided_only else set()
        return {
            TopicPartition(self.events_topic, partition): state.next_offset
            for partition, state in self.owned.items()
            if state.next_offset is not None
            and state.next_offset != state.committed
            and partition not in waiting
        }

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit `offsets`; False when the group took the partitions meanwhile."""
        if not offsets:
            return True
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError):
            # A rebalance took the partitions: what was not committed is read again by their
            # next owner, and admitting it again changes nothing.
            self.metrics.commit_failures.inc()
            log.warning("commit_failed", partitions=len(offsets))
            return False
        for tp, offset in offsets.items():
            self.owned[tp.partition].committed = offset
        return True

    async def _deliver(self, decided: list[Decided]) -> None:
        """History and dead letters acknowledged, ownership checked, determinations published
        and acknowledged, then the offsets of what is decided committed.

        The ownership check commits the offsets already committed again: it fails for a worker
        that lost its partitions without knowing it (paused past its session timeout), which
        then publishes nothing, so it cannot repeat what the partitions' new owner, which
        re-decides every patient it restores, has published meanwhile. A crash at any point
        loses no determination for the same reason.
        """
        await self._flush()
        if decided:
            fence = {
                TopicPartition(self.events_topic, partition): state.committed or 0
                for partition, state in self.owned.items()
            }
            if not await self._commit(fence):
                return  # the next owner re-decides these patients
            for item in decided:
                traceparent = tracing.continue_trace(item.parent)
                self._send(
                    self.determinations_topic,
                    item.value,
                    key=item.key,
                    partition=item.partition,
                    headers=[
                        ("content-type", b"application/json"),
                        (tracing.TRACEPARENT, traceparent.encode()),
                    ],
                )
                self.owned[item.partition].patients[item.key].published = item.determination_id
                self.metrics.determinations.labels(item.status).inc()
                log.debug(
                    "determination_published",
                    status=item.status,
                    trace_id=tracing.trace_id_of(traceparent),
                )
            await self._flush()
        await self._commit(self._offsets(decided_only=True))

    # -- rebalancing ---------------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # the batch in hand is finished first
            if not self._stopping:
                # What was processed, decided or not: the next owner re-decides every patient.
                await self._commit(self._offsets(decided_only=False))
            for tp in revoked:
                if tp.topic == self.events_topic:
                    self.owned.pop(tp.partition, None)
            # Undecided patients of revoked partitions: their next owner re-decides them all.
            self.dirty = {
                key: mark for key, mark in self.dirty.items() if mark.partition in self.owned
            }
            self.parsed.clear()
            self.progress.forget()
            self.metrics.in_quarantine.set(self.quarantined_count())

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Every assigned partition's state is rebuilt, even one this worker had before: another
        worker may have owned it in between (a worker paused past its session timeout does not
        know it was replaced)."""
        async with self._lock:
            self.restoring = True
            try:
                committed = {
                    tp.partition: await self.consumer.committed(tp)
                    for tp in sorted(assigned)
                    if tp.topic == self.events_topic and tp.partition not in self.owned
                }
                if committed:
                    self.owned.update(await self._restore(committed))
            finally:
                self.restoring = False

    async def _restore(self, committed: dict[int, int | None]) -> dict[int, PartitionState]:
        """Rebuild the partitions' histories from the history topic and what was published
        from the determinations topic; every patient is then re-decided (dirty). All the
        partitions are read at once, by one reader."""
        started = time.monotonic()
        states = {
            partition: PartitionState(next_offset=offset, committed=offset)
            for partition, offset in committed.items()
        }
        events = dict.fromkeys(states, 0)
        published = dict.fromkeys(states, 0)
        # "earliest": should the history's first records ever be gone (retention changed by
        # hand), read from the first one kept, never silently from the end.
        reader = AIOKafkaConsumer(
            **self._options(),
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            auto_offset_reset="earliest",
        )
        await reader.start()
        try:
            async for partition, _, value in _read_partitions(reader, self.history_topic, states):
                state = states[partition]
                for text in decode_history(value):
                    try:
                        decoded = text.decode("utf-8")
                        event = parse_event(decoded)
                    except (UnicodeDecodeError, ContractViolation):
                        # Admitted once, so only a contract change can make it unreadable now.
                        log.error("history_event_unreadable", partition=partition)
                        continue
                    key = event.patient_id.encode()
                    history = state.patients.get(key)
                    if history is None:
                        history = state.patients[key] = PatientHistory()
                    history.admit(event, decoded)
                    events[partition] += 1
                gc.freeze()  # as after a batch: the collector must not walk the growing state
            async for partition, key, value in _read_partitions(
                reader, self.determinations_topic, states
            ):
                history = states[partition].patients.get(key)
                if history is not None:
                    history.published = json.loads(value)["determination_id"]
                    published[partition] += 1
        finally:
            await reader.stop()
        traceparent = tracing.continue_trace(None)
        for partition, state in states.items():
            for key in state.patients:
                self._mark_dirty(key, partition, traceparent, None)
        seconds = time.monotonic() - started
        self.metrics.restores.inc(len(states))
        self.metrics.restore_seconds.observe(seconds)
        for partition, state in states.items():
            log.info(
                "partition_restored",
                partition=partition,
                patients=len(state.patients),
                events=events[partition],
                determinations=published[partition],
            )
        log.info("restored", partitions=len(states), seconds=round(seconds, 3))
        return states

    # -- readiness -----------------------------------------------------------------------------

    def readiness(self) -> dict[str, object]:
        assigned = bool(self.owned) and self.consumer is not None
        waiting = sum(self.lag().values()) if assigned else 0
        progressing = not self.progress.stalled(waiting)
        ready = assigned and not self.restoring and progressing
        return {
            "ready": ready,
            "checks": {
                "partitions_assigned": assigned,
                "state_recovered": not self.restoring,
                "progressing": progressing,
                "lag": waiting,
                # Informative only: a patient set aside does not make the worker unready.
                "quarantined_patients": self.quarantined_count(),
            },
        }


async def _read_partitions(reader: AIOKafkaConsumer, topic: str, partitions):
    """(partition, key, value) of every record of `topic`'s `partitions`, each partition from
    its start to its end at the time of the call, in order within a partition. `reader` is a
    consumer outside any group; its assignment is replaced."""
    tps = [TopicPartition(topic, partition) for partition in partitions]
    end = await end_offsets(reader, tps)
    for tp in tps:
        reader.seek(tp, 0)
    reading = [tp for tp in tps if end[tp] > 0]
    while reading:
        batches = await reader.getmany(*reading, timeout_ms=500, max_records=10_000)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= end[tp]:
                    break
                yield tp.partition, record.key, record.value
        reading = [tp for tp in reading if await reader.position(tp) < end[tp]]


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, classifier: Classifier):
        self._classifier = classifier

    async def on_partitions_revoked(self, revoked):
        await self._classifier.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        await self._classifier.on_assigned(set(assigned))
