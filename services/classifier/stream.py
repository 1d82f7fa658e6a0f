"""The streaming classifier: `pain.events.v1` in, `pain.determinations.v1` out.

A worker is one member of the consumer group `painpath-classifier`; start several and the
partitions are shared between them. The design, and why it is not a faust agent, is in the
README ("The streaming classifier"). This module wires the parts, each a module of its own:

- **Consuming** (here): records are fetched in batches (up to `CLASSIFIER_MAX_BATCH`), each read
  (`shared.contract.records.read_record`: the contract, the key, the partition) and admitted
  to its patient's history (`history.admit`: a duplicate changes nothing, a conflicting one is
  refused). Refused records go to `pain.events.dlq.v1` (`dead_letters`: the original, as
  much as fits, and headers naming the reason and where it came from).
- **Deciding** (`decisions`): a patient touched by a batch is dirty; dirty patients are decided
  at once when the worker has caught up, in spaced passes during a backfill. A determination is
  published, keyed by patient, on the partition of its input, only when its id differs from the
  last one published for that patient. A patient whose decision raises is set aside
  (quarantined): counted, logged without its id, dead-lettered, and every other patient goes on.
- **Delivery** (`delivery`): after each batch, dead letters and determinations are acknowledged
  by the broker (`acks=all`), with the ownership fence before determinations.
- **State** (`changelog`, `store`, `checkpoint`): each owned partition's histories live in
  memory, in a local RocksDB store, and in the changelog topic
  `painpath.classifier.changelog.v1`. A **checkpoint** writes one changelog record per patient
  changed since the previous checkpoint (its whole state), then a marker; once acknowledged, the
  local store is written, and only then are the input offsets the checkpoint covers committed.
  A checkpoint is taken when every dirty patient is decided (at most every
  `CLASSIFIER_CHECKPOINT_SECONDS`), at least every `CLASSIFIER_CHECKPOINT_MAX_SECONDS` during a
  backlog, when partitions are revoked and when the worker stops.
- **Restore** (`restore`): an assigned partition is rebuilt from its local store and the
  changelog's tail past it (the whole changelog for a worker that never held it), then the
  determinations published since the checkpoint; patients waiting for a decision at the
  checkpoint are decided again, every patient when the policy changed.
- **Time passing**: every `CLASSIFIER_REEVALUATE_SECONDS` all patients of the owned partitions
  are marked dirty: status changes at 90 and 365 days and when a trial reaches its minimum days.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from services.classifier import dead_letters
from services.classifier.checkpoint import changes, checkpoint_due, write_checkpoint
from services.classifier.decisions import (
    CAUGHT_UP_RECORDS,
    BacklogShare,
    Decided,
    Dirty,
    PassCost,
    decide,
    decision_due,
)
from services.classifier.delivery import Delivery, offset_of
from services.classifier.history import CONFLICT_REASON, Admission, PatientHistory
from services.classifier.metrics import Metrics
from services.classifier.partition import BACKFILL, LANES, LIVE, ParsedCache, PartitionState
from services.classifier.policy import Policy
from services.classifier.records import DecisionFailure
from services.classifier.restore import assign
from shared import tracing
from shared.contract.records import Rejection, read_record
from shared.kafka import client_options
from shared.logging import get_logger
from shared.loop_stall import TimeSlice
from shared.progress import Progress
from shared.settings import Settings
from shared.stack import Endpoints
from shared.topics import (
    CLASSIFIER_CHANGELOG,
    DETERMINATIONS,
    DETERMINATIONS_BACKFILL,
    EVENTS,
    EVENTS_BACKFILL,
    EVENTS_DLQ,
)

log = get_logger("painpath.classifier")

GROUP = "painpath-classifier"

__all__ = ["GROUP", "Classifier", "PartitionState"]


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
        self.backfill_topic = EVENTS_BACKFILL.full_name(prefix)
        # The input's lanes: the live topic and the backfill topic, co-partitioned, and the
        # determinations topic of each (a determination caused by backfill events alone goes
        # to the backfill one, never ahead of live ones).
        self.input_topics = {LIVE: self.events_topic, BACKFILL: self.backfill_topic}
        self.lane_of = {topic: lane for lane, topic in self.input_topics.items()}
        self.dlq_topic = EVENTS_DLQ.full_name(prefix)
        self.determinations_topic = DETERMINATIONS.full_name(prefix)
        self.output_topics = {
            LIVE: self.determinations_topic,
            BACKFILL: DETERMINATIONS_BACKFILL.full_name(prefix),
        }
        self.changelog_topic = CLASSIFIER_CHANGELOG.full_name(prefix)
        self.state_dir = settings.classifier_state_dir or (
            settings.painpath_state_dir / "classifier-state"
        )
        self.progress = Progress(settings.progress_watchdog_seconds)
        self.partitions: int | None = None  # of the input topic, once its metadata is known
        self.owned: dict[int, PartitionState] = {}
        self.dirty: dict[bytes, Dirty] = {}
        self.dirty_since: float | None = None
        # Dirty patients of records read within CLASSIFIER_LIVE_SECONDS of their broker
        # timestamp: live traffic, decided at once even while a backlog waits for its pass.
        self.live: set[bytes] = set()
        self._live_ms = settings.classifier_live_seconds * 1000
        self.pass_cost = PassCost()
        # The patients of the decision pass under way not decided yet: a pass is decided a slice
        # at a time (CLASSIFIER_DECISION_SLICE_SECONDS), so that live events wait for a slice
        # of it at most, never for a whole pass over a backfill's patients.
        self.passing: deque[bytes] = deque()
        self.backlog_share = BacklogShare(settings.classifier_backlog_share)
        self._dirty_events_at: tuple[float, int] = (-1e9, 0)  # (when counted, events)
        self.restoring = False
        self.parsed = ParsedCache(settings.classifier_cache_events)
        self._lock = asyncio.Lock()
        self.delivery = Delivery(self.metrics.commit_failures)
        self._last_checkpoint = time.monotonic()
        self._stopping = False
        self.consumer: AIOKafkaConsumer | None = None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        return self.delivery.producer

    @producer.setter
    def producer(self, producer) -> None:
        self.delivery.producer = producer

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
            group_instance_id=self.settings.classifier_group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=timeout_ms,
            heartbeat_interval_ms=max(100, timeout_ms // 3),
            fetch_max_wait_ms=self.settings.classifier_fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # Partition p of both lanes to the same member: one patient's state in one place.
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self.delivery.consumer = self.consumer
        await self.consumer.start()
        await self._check_co_partitioning()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.consumer.subscribe(list(self.input_topics.values()), listener=_Rebalance(self))

    async def _check_co_partitioning(self) -> None:
        await self.consumer.topics()  # fetches the cluster's metadata
        counts = {
            topic: len(self.consumer.partitions_for_topic(topic) or ())
            for topic in (
                *self.input_topics.values(),
                *self.output_topics.values(),
                self.changelog_topic,
            )
        }
        if len(set(counts.values())) != 1:
            raise RuntimeError(
                f"input (both lanes), determinations and changelog topics must have the same"
                f" partition count, found {counts}: run `painpath topics create`"
            )
        self.partitions = counts[self.events_topic]  # a record on another partition is refused

    def request_stop(self) -> None:
        """Take no new batch; `run` returns once the batch in hand is delivered."""
        self._stopping = True

    async def close(self) -> None:
        """Checkpoint and commit what was processed, leave the group (the partitions move at
        once), close the clients and the local stores."""
        self._stopping = True
        async with self._lock:
            if self.owned and self.consumer is not None and self.producer is not None:
                try:
                    await self._checkpoint()
                    await self.delivery.commit(self._offsets(decided_only=False))
                except Exception:  # the broker is gone: the next owner reads the changelog
                    log.warning("final_checkpoint_failed", exc_info=True)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        for state in self.owned.values():
            if state.store is not None:
                state.store.close()

    async def run(self) -> None:
        """Consume until stopped. Each loop: fetch, admit, maybe decide, deliver, maybe
        checkpoint and commit."""
        reevaluate_at = time.monotonic() + self.settings.classifier_reevaluate_seconds
        max_batch = self.settings.classifier_max_batch
        while not self._stopping:
            cpu = time.thread_time()
            try:
                batches = await self._fetch(max_batch)
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
                    await self._consume(batches)
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
                # Live events' patients first: they wait for no backlog and no pass.
                ready = self._live_ready() if self.live else set()
                decided = await self._decide_dirty(only=ready) if ready else []
                backlog = any(tp.topic == self.backfill_topic for tp in batches)
                if not self.backlog_share.idle_for(time.monotonic()):
                    if not self.passing:
                        self._begin_pass(self._pass_to_begin())
                    if self.passing:
                        decided += await self._decide_slice()
                        backlog = True
                self.metrics.dirty.set(len(self.dirty) + len(decided))
                delivered = await self._deliver(decided)
                if delivered and self._checkpoint_due() and await self._checkpoint():
                    await self._commit(self._offsets(decided_only=True))
                self.metrics.dirty.set(len(self.dirty))
                if backlog:
                    spent = time.thread_time() - cpu
                    self.metrics.backlog_idle.inc(self.backlog_share.spent(spent, time.monotonic()))

    async def _fetch(self, max_batch: int) -> dict[TopicPartition, list]:
        """The live lane first: what it has fetched (up to `max_batch`); then, when it has little,
        up to `CLASSIFIER_BACKFILL_BATCH` records of the backfill lane, so that a loop never holds
        a live event behind more backfill than that; waits (200 ms at most) only when neither
        lane has anything fetched and no decision pass is under way."""
        assigned = self.consumer.assignment()
        live = [tp for tp in assigned if tp.topic == self.events_topic]
        backfill = [tp for tp in assigned if tp.topic == self.backfill_topic]
        idle = self.backlog_share.idle_for(time.monotonic())
        if idle and live:  # fresh events arrive: the backlog waits its turn, live records not
            return await self.consumer.getmany(
                *live, timeout_ms=max(1, round(idle * 1000)), max_records=max_batch
            )
        slice_records = self.settings.classifier_backfill_batch
        batches = await self.consumer.getmany(*live, max_records=max_batch) if live else {}
        room = slice_records - sum(len(records) for records in batches.values())
        if backfill and room > 0:
            batches |= await self.consumer.getmany(*backfill, max_records=room)
        if batches or self.passing:  # a pass under way goes on at once
            return batches
        return await self.consumer.getmany(timeout_ms=200, max_records=slice_records)

    async def _consume(self, batches: dict[TopicPartition, list]) -> None:
        count, duplicates = 0, 0
        slices = TimeSlice()
        # Live before backfill: within a loop, a live record is admitted (and its patient marked)
        # before the backfill's.
        for tp, records in sorted(
            batches.items(), key=lambda item: item[0].topic != self.events_topic
        ):
            state = self.owned.get(tp.partition)
            lane = self.lane_of.get(tp.topic)
            if state is None or lane is None or not records:
                continue  # revoked while fetched: the next owner reads them
            # The end this fetch told, read before any await (a later fetch may move it).
            highwater = self.consumer.highwater(tp) if self.consumer is not None else None
            admitted = 0
            for record in records:
                admission = self._admit(state, tp.partition, lane, record)
                if admission is Admission.NEW:
                    admitted += 1
                elif admission is Admission.DUPLICATE:
                    duplicates += 1
                await slices.pause()
            count += len(records)
            last = records[-1].offset
            state.next_offset[lane] = last + 1
            if highwater is not None and highwater > last + 1:
                state.behind.add(lane)
            else:
                state.behind.discard(lane)
            self.progress.processed((lane, tp.partition), last)
            self._counted_new.inc(admitted)
        self._counted_duplicate.inc(duplicates)
        self.metrics.batch.observe(count)
        self.metrics.dirty.set(len(self.dirty))

    def _admit(self, state: PartitionState, partition: int, lane: str, record) -> Admission | None:
        """Admit one record: NEW, DUPLICATE, or None for a dead letter."""
        read = read_record(record.key, record.value, partition, self.partitions)
        if isinstance(read, Rejection):
            self._dead_letter(record, read)
            return None
        event, text = read
        history = state.patients.get(record.key)
        if history is None:
            history = state.patients[record.key] = PatientHistory(
                published=state.published_before.pop(record.key, None)
            )
        admission = history.admit(event, text)
        if admission is Admission.CONFLICT:
            self._dead_letter(record, Rejection(f"id: {CONFLICT_REASON}", "id", "conflict"))
            return None
        if admission is Admission.NEW:
            state.changed.add(record.key)
            if state.quarantined and record.key in state.quarantined:
                state.quarantined.discard(record.key)  # a new event: decided again
                self.metrics.in_quarantine.set(self.quarantined_count())
            # The record's own trace context; our span is made when a determination is sent.
            parent = tracing.from_headers(record.headers)
            self._mark_dirty(record.key, partition, parent, record.timestamp, lane)
            if lane == LIVE and self._is_live(record.timestamp):
                self.live.add(record.key)
                self.backlog_share.fresh(time.monotonic())
        return admission

    def _is_live(self, timestamp_ms: int | None) -> bool:
        """Read within CLASSIFIER_LIVE_SECONDS of its broker timestamp."""
        return (
            timestamp_ms is not None
            and self._live_ms > 0
            and time.time() * 1000 - timestamp_ms <= self._live_ms
        )

    def _mark_dirty(
        self,
        key: bytes,
        partition: int,
        parent: str | bytes | None,
        timestamp_ms: int | None,
        lane: str = LIVE,
    ) -> None:
        """Mark a patient to decide. Its determination goes to the backfill lane's topic only
        when every cause since its last decision was a backfill record (time passing and a
        restore are live causes)."""
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()
        before = self.dirty.get(key)
        backfill = lane == BACKFILL and (before is None or before.backfill)
        self.dirty[key] = Dirty(partition, parent, timestamp_ms, backfill)

    def _mark_all_dirty(self) -> None:
        traceparent = tracing.continue_trace(None)  # time passing is a cause of its own
        marked = 0
        now = datetime.now(UTC)
        for partition, state in self.owned.items():
            state.reevaluated_at = now
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
        letter = dead_letters.refused_record(record, rejection)
        self._send(self.dlq_topic, letter.value, key=letter.key, headers=letter.headers)
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
        """Input records not yet processed, per owned partition, both lanes (once a fetch told a
        lane's end)."""
        lags = {}
        for partition, state in self.owned.items():
            for lane, topic in self.input_topics.items():
                highwater = self.consumer.highwater(TopicPartition(topic, partition))
                position = state.next_offset[lane]
                if highwater is None or position is None:
                    continue
                lag = self.progress.lag((lane, partition), highwater, position)
                lags[partition] = lags.get(partition, 0) + lag
        return lags

    def _read_to_end(self, partition: int, lanes: tuple[str, ...] = LANES) -> bool:
        """Whether the last batch of each of these lanes of the partition reached the end its
        fetch told (a patient whose records wait in a later fetch would be decided on part of
        its history, and that determination replaced a moment later)."""
        state = self.owned.get(partition)
        return state is not None and not state.behind.intersection(lanes)

    def _live_ready(self) -> set[bytes]:
        """The live patients to decide now: those whose partition's live lane was read to the
        end its fetch told. The others wait, live still, for the rest of their records."""
        ready = set()
        for key in self.live:
            mark = self.dirty.get(key)
            if mark is not None and self._read_to_end(mark.partition, (LIVE,)):
                ready.add(key)
        return ready

    def _pass_to_begin(self) -> list[bytes]:
        """The patients a decision pass begins with now (none: no pass yet).

        Caught up (lag under `CAUGHT_UP_RECORDS`): at once, the dirty patients of the partitions
        read to the end their last fetches told; a partition with records already waiting in a
        later fetch keeps its patients for them (a replay read in several fetches must not be
        decided on part of each history), and once the first dirty patient has waited the
        decision delay, every one. During a backlog: every dirty patient, when `decision_due`.
        """
        if not self.dirty:
            return []
        waited = time.monotonic() - (self.dirty_since or time.monotonic())
        delay = self.settings.classifier_decision_delay_seconds
        if sum(self.lag().values()) < CAUGHT_UP_RECORDS:
            if waited >= delay:
                return list(self.dirty)
            return [key for key, mark in self.dirty.items() if self._read_to_end(mark.partition)]
        if waited < delay:
            return []
        if decision_due(waited, delay, self.pass_cost.expected(self._dirty_events())):
            return list(self.dirty)
        return []

    def _begin_pass(self, keys: list[bytes]) -> None:
        """A pass begins with `keys`; the wait of the patients left out goes on."""
        if not keys:
            return
        self.passing.extend(keys)
        if len(keys) == len(self.dirty):
            self.dirty_since = None  # from now: the first patient marked after the pass began
        self._dirty_events_at = (-1e9, 0)

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

    async def _decide_dirty(self, only: set[bytes] | None = None) -> list[Decided]:
        """Decide every dirty patient, or `only` those (`decisions.decide`); the changed
        determinations."""
        if only is None:
            dirty, self.dirty, self.dirty_since = self.dirty, {}, None
            self.passing.clear()
            self._dirty_events_at = (-1e9, 0)
        else:
            dirty = {key: self.dirty.pop(key) for key in only if key in self.dirty}
            if not self.dirty:
                self.dirty_since = None
        return await self._decide(dirty)

    async def _decide_slice(self) -> list[Decided]:
        """The next slice of the pass under way (a pass starts with the patients dirty then):
        patients whose histories add up to what `CLASSIFIER_DECISION_SLICE_SECONDS` decides at
        the pass's measured cost per event (one patient at least)."""
        if not self.passing:
            self._begin_pass(list(self.dirty))
        limit = self.settings.classifier_decision_slice_seconds / self.pass_cost.seconds_per_event
        chunk: dict[bytes, Dirty] = {}
        events = 0
        while self.passing and (not chunk or events < limit):
            key = self.passing.popleft()
            mark = self.dirty.pop(key, None)
            if mark is None:
                continue  # decided meanwhile (live), or its partition revoked
            chunk[key] = mark
            state = self.owned.get(mark.partition)
            history = state.patients.get(key) if state is not None else None
            events += len(history.raw) if history is not None else 0
        if not self.dirty:
            self.dirty_since = None
        return await self._decide(chunk)

    async def _decide(self, dirty: dict[bytes, Dirty]) -> list[Decided]:
        started = time.monotonic()
        live = self.live.intersection(dirty)
        self.live.difference_update(dirty)
        changed, events = await decide(
            dirty,
            self.owned,
            self.policy,
            self.clock(),
            # Live patients keep their parsed events for their next event; others only texts.
            decided=lambda key, history: self.parsed.decided(history, key in live),
            metrics=self.metrics,
            set_aside=self._quarantine,
        )
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
        self.parsed.drop(history)  # parsed again if ever decided again
        state.changed.add(key)  # set aside: a restore decides it again
        self.metrics.quarantined.labels(failure.error).inc()
        self.metrics.in_quarantine.set(self.quarantined_count())
        headers, documents = dead_letters.set_aside(
            list(history.raw),
            failure,
            self.policy.id,
            as_of,
            topic=self.events_topic,
            partition=partition,
            offset=state.next_offset[LIVE],
        )
        for document in documents:
            self._send(self.dlq_topic, document, key=key, headers=headers)
        self.metrics.dead_letters.labels(dead_letters.QUARANTINE).inc(len(documents))
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

    def _send(self, topic: str, value: bytes, *, key, partition=None, headers=None):
        return self.delivery.send(topic, value, key=key, partition=partition, headers=headers)

    async def _flush(self) -> None:
        await self.delivery.flush()

    def _fence(self) -> dict[TopicPartition, int]:
        return {
            TopicPartition(topic, partition): state.committed[lane] or 0
            for partition, state in self.owned.items()
            for lane, topic in self.input_topics.items()
        }

    def _offsets(self, *, decided_only: bool) -> dict[TopicPartition, int]:
        """The checkpointed offsets not committed yet; with `decided_only`, only of partitions
        none of whose patients waits for a decision, so that a committed offset (the group's
        lag, which autoscaling and "settled" read) means decided and published."""
        waiting = {mark.partition for mark in self.dirty.values()} if decided_only else set()
        return {
            TopicPartition(topic, partition): state.checkpointed[lane]
            for partition, state in self.owned.items()
            if state.checkpointed is not None and partition not in waiting
            for lane, topic in self.input_topics.items()
            if state.checkpointed.get(lane) is not None
            and state.checkpointed[lane] != state.committed[lane]
        }

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit `offsets`; False when the group took the partitions meanwhile."""
        if not await self.delivery.commit(offsets):
            return False
        for tp, offset in offsets.items():
            self.owned[tp.partition].committed[self.lane_of[tp.topic]] = offset
        return True

    async def _deliver(self, decided: list[Decided]) -> bool:
        """Dead letters acknowledged, ownership checked, determinations published and
        acknowledged. False when the fence failed (the partitions are someone else's now: the
        next owner re-decides these patients, and this worker writes nothing more).

        A crash at any point loses no determination: what was not checkpointed is re-delivered,
        and what was published but not checkpointed is read back by the next restore.
        """
        await self._flush()
        if not decided:
            return True
        if not await self._commit(self._fence()):
            return False
        sent = {}
        for item in decided:
            traceparent = tracing.continue_trace(item.parent)
            lane = BACKFILL if item.backfill else LIVE
            sent[(lane, item.partition)] = self._send(
                self.output_topics[lane],
                item.value,
                key=item.key,
                partition=item.partition,
                headers=[
                    ("content-type", b"application/json"),
                    (tracing.TRACEPARENT, traceparent.encode()),
                ],
            )
            state = self.owned[item.partition]
            state.patients[item.key].published = item.determination_id
            state.changed.add(item.key)
            self.metrics.determinations.labels(item.status).inc()
            log.debug(
                "determination_published",
                status=item.status,
                trace_id=tracing.trace_id_of(traceparent),
            )
        await self._flush()
        for (lane, partition), last in sent.items():
            self.owned[partition].determinations_offset[lane] = offset_of(last) + 1
        return True

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        return checkpoint_due(
            self.owned,
            waiting=bool(self.dirty),
            since=time.monotonic() - self._last_checkpoint,
            every=self.settings.classifier_checkpoint_seconds,
            at_least_every=self.settings.classifier_checkpoint_max_seconds,
        )

    async def _checkpoint(self) -> bool:
        """A checkpoint of every owned partition with changes (`checkpoint.write`), behind the
        ownership fence; the caller commits the offsets it covers. False when the fence failed:
        nothing was written."""
        started = self._last_checkpoint = time.monotonic()
        if not any(changes(state) for state in self.owned.values()):
            return True
        if not await self._commit(self._fence()):
            return False
        records = await write_checkpoint(
            self.owned,
            waiting=self.dirty.keys(),
            policy=self.policy.id,
            send=lambda value, key, partition: self._send(
                self.changelog_topic, value, key=key, partition=partition
            ),
            flush=self._flush,
        )
        self.metrics.checkpoints.inc()
        self.metrics.changelog_records.inc(records)
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
        return True

    # -- rebalancing ---------------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # the batch in hand is finished first
            # Waiting patients are in the checkpoint: the next owner decides them.
            if not self._stopping and await self._checkpoint():
                await self._commit(self._offsets(decided_only=False))
            for tp in revoked:
                if tp.topic in self.lane_of:  # both lanes of a partition go together
                    state = self.owned.pop(tp.partition, None)
                    if state is not None and state.store is not None:
                        state.store.close()
            # Undecided patients of revoked partitions: their next owner decides them.
            self.dirty = {
                key: mark for key, mark in self.dirty.items() if mark.partition in self.owned
            }
            self.live = {key for key in self.live if key in self.dirty}
            self.parsed.clear()
            self.progress.forget()
            self.metrics.in_quarantine.set(self.quarantined_count())

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Every assigned partition's state is restored, from its local store and the
        changelog's tail: another worker may have owned it in between (a worker paused past
        its session timeout does not know it was replaced)."""
        async with self._lock:
            self.restoring = True
            try:
                _check_lanes_together(assigned, self.input_topics)
                committed = {
                    tp.partition: {
                        lane: await self.consumer.committed(TopicPartition(topic, tp.partition))
                        for lane, topic in self.input_topics.items()
                    }
                    for tp in sorted(assigned)
                    if tp.topic == self.events_topic and tp.partition not in self.owned
                }
                if committed:
                    self.owned.update(await self._restore(committed))
            finally:
                self.restoring = False

    async def _restore(self, committed: dict[int, dict]) -> dict[int, PartitionState]:
        """The assigned partitions' states (`restore.assign`); every one marked to decide
        again is dirty, and a partition without a checkpoint is read again from its start."""
        started = time.monotonic()
        states, restored = await assign(
            committed,
            options=self._options(),
            state_dir=self.state_dir,
            events_topic=self.events_topic,
            changelog_topic=self.changelog_topic,
            determinations_topics=self.output_topics,
            policy=self.policy.id,
            reevaluate_seconds=self.settings.classifier_reevaluate_seconds,
        )
        traceparent = tracing.continue_trace(None)
        for partition, result in restored.items():
            if result.replay:
                for topic in self.input_topics.values():
                    self.consumer.seek(TopicPartition(topic, partition), 0)
                self.metrics.replays.inc()
            for key in result.dirty:
                self._mark_dirty(key, partition, traceparent, None)
            for source, count in result.counts.items():
                self.metrics.restored_records.labels(source).inc(count)
        seconds = time.monotonic() - started
        self.metrics.restores.inc(len(states))
        self.metrics.restore_seconds.observe(seconds)
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


def _check_lanes_together(assigned: set[TopicPartition], topics: dict[str, str]) -> None:
    """Partition p of every lane, or of none: another assignor than the range one (which gives
    co-partitioned topics' partitions together) would split a patient's state."""
    by_topic = {
        topic: {tp.partition for tp in assigned if tp.topic == topic} for topic in topics.values()
    }
    if len({frozenset(partitions) for partitions in by_topic.values()}) > 1:
        raise RuntimeError(
            f"the input lanes' partitions were assigned apart ({by_topic}): every member of the"
            " group must use the range assignor"
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, classifier: Classifier):
        self._classifier = classifier

    async def on_partitions_revoked(self, revoked):
        await self._classifier.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        await self._classifier.on_assigned(set(assigned))
