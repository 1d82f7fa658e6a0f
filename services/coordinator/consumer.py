"""Consumes a topic batch by batch, each fetched batch applied in one database transaction.

What a record is (a determination's decision and instant, an event's patient and (source, id))
is written in the transaction that applies it, and the Kafka offsets are committed only after that
transaction: a re-delivery, a crash anywhere between the two commits, or the same records read
again from a topic whose offsets restarted, finds them applied and changes nothing. A database
outage is waited out with backoff: the whole batch is retried (its transaction rolled back, none
of it applied, or committed and then found applied), never skipped. What counts as an outage
(`DATABASE_DOWN`) includes what asyncpg raises when the server stops under a connection: a
statement cut short (`AdminShutdownError`, the server shutting down), and the pool failing to
release a connection it lost (`InternalClientError`). Anything else escapes `run`: its
supervisor (`shared.supervision`) stops the process, never a consumer dead in a live process.
A commit the broker refuses (a rebalance) is logged and the loop goes on: the next commit
covers those offsets, or the partition's next owner finds the records applied.

`stop` asks for a graceful stop: the batch being applied is finished, the offsets of what was
applied are committed, and `run` returns; records fetched but not yet applied are left to the
next consumer of the partition.

A consumer of the backfill lane runs `behind` a live one: it starts no batch while the live
consumer holds records it fetched and has not applied yet, or is applying them (`busy`). A live
batch then waits for a backfill one (for the planning lock, or the event loop) at most once: the
one the backfill consumer began in the instant between two live batches. So that this wait is
short, while the live consumer is active (it fetched records within `ACTIVE_SECONDS`) a backfill
batch is cut to about `slice_seconds` at the cost per record its earlier batches measured, and
after each one it waits as long as keeps its time to `backlog_share` of the whole (half: as
long again), leaving the machine's CPU (the database's included) to the live path; with no live
traffic it takes its whole `max_records`, at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from enum import Enum

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from shared.logging import get_logger
from shared.progress import Progress

log = get_logger("painpath.coordinator.consumer")

MAX_BACKOFF = 10.0
DATABASE_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. releasing to the pool a connection the server dropped
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,  # the server stopping terminated the statement
    asyncpg.CrashShutdownError,
)


MAX_RECORDS = 500  # per fetch, hence per transaction
# Per fetch of the backfill lane's determinations (each may be a new care plan to schedule).
BACKFILL_MAX_RECORDS = 50
# A consumer that fetched records this recently is active: a backfill behind it takes slices.
ACTIVE_SECONDS = 1.0


class Outcome(Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    CONFLICT = "conflict"  # a patient's (source, id) kept already with other content: first wins
    UNREADABLE = "unreadable"  # a determination that cannot be read
    # recorded, not followed: as of an earlier instant than the one the patient's plan follows
    SUPERSEDED = "superseded"
    REFUSED = "refused"  # an event the classifier refuses too (contract, key, partition, size)


# Applies a batch (the records in the order to apply them) in one transaction; one outcome per
# record, in the same order.
ApplyBatch = Callable[[list[ConsumerRecord]], Awaitable[list[Outcome]]]


class BatchConsumer:
    def __init__(
        self,
        name: str,
        consumer: AIOKafkaConsumer,
        apply: ApplyBatch,
        progress: Progress,
        on_outcome: Callable[[Outcome, float], None] | None = None,
        *,
        max_records: int = MAX_RECORDS,
        behind: BatchConsumer | None = None,
        slice_seconds: float = 0.05,
        backlog_share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self._consumer = consumer
        self._apply = apply
        self.progress = progress
        self._on_outcome = on_outcome or (lambda outcome, seconds: None)
        self._max_records = max_records
        self._behind = behind
        self._slice_seconds = slice_seconds
        self._backlog_share = backlog_share
        self._clock = clock
        self.seconds_per_record: float | None = None  # measured over this consumer's batches
        self.last_records_at = -1e9  # when a fetch last brought records (`clock`)
        self.database_ok = True
        self.retries = 0
        self.waiting_behind = False  # records in hand, held back while `behind` is busy
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()  # set while not `busy`
        self._idle.set()

    def stop(self) -> None:
        """Finish the batch being applied, commit, and return from `run` (see the module)."""
        self._stopping.set()

    @property
    def busy(self) -> bool:
        """Records fetched and not applied yet, or being applied (until their commit)."""
        return not self._idle.is_set()

    @property
    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    async def lag(self) -> dict[TopicPartition, int]:
        """Records not yet processed, per assigned partition (once a fetch told its end)."""
        lags = {}
        for partition in self._consumer.assignment():
            highwater = self._consumer.highwater(partition)
            if highwater is not None:
                position = await self._consumer.position(partition)
                lags[partition] = self.progress.lag(partition, highwater, position)
        return lags

    def readiness(self, lag: int) -> str:
        """`/readyz`'s check of this consumer, given its lag: "ok", or "failing: " and why. One
        waiting behind a busy live consumer is not stalled: the live one is progressing."""
        if not self.assigned:
            return "failing: no partitions assigned"
        if not self.database_ok:
            return "failing: waiting for the database"
        if self.progress.stalled(lag) and not self.waiting_behind:
            idle = self.progress.idle_seconds()
            return f"failing: {lag} records wait, none processed for {idle:.0f} s"
        return "ok"

    async def run(self) -> None:
        """Consume until `stop` (then return) or cancellation (then applied records whose
        offsets were not committed yet are delivered again, and found applied)."""
        while not self._stopping.is_set():
            batch = await self._fetch()
            # Partition by partition, each in offset order: a patient's records are in order.
            records = [record for items in batch.values() for record in items]
            if not records:
                continue
            self.last_records_at = self._clock()
            self._idle.clear()
            try:
                if not await self._wait_behind():
                    break  # stopping: these records are left to the next consumer
                started = self._clock()
                try:
                    outcomes = await self._apply_batch(records)
                except _Stopped:
                    break
                took = self._clock() - started
                self._measured(len(records), took)
                now = time.time()
                for record, outcome in zip(records, outcomes, strict=True):
                    partition = TopicPartition(record.topic, record.partition)
                    self.progress.processed(partition, record.offset)
                    self._on_outcome(outcome, max(0.0, now - record.timestamp / 1000))
                offsets = {tp: items[-1].offset + 1 for tp, items in batch.items() if items}
                try:
                    await self._consumer.commit(offsets)
                except KafkaError as error:  # applied: a later commit, or the next owner, does
                    log.warning("commit_failed", consumer=self.name, error=type(error).__name__)
            finally:
                self._idle.set()
            pause = self.pause_after(took)
            if pause:
                await self._unless_stopping(asyncio.sleep(pause))
        structlog.contextvars.clear_contextvars()  # the last record's trace is not this line's
        log.info("consumer_stopped", consumer=self.name)

    async def _fetch(self) -> dict:
        """The next records, or none as soon as a stop is asked for (records fetched meanwhile
        are left to the next consumer)."""
        fetch = await self._unless_stopping(
            self._consumer.getmany(timeout_ms=1000, max_records=self.batch_size())
        )
        return {} if fetch is None else fetch.result()

    async def _unless_stopping(self, awaitable) -> asyncio.Future | None:
        """`awaitable`, done; or None, and it cancelled, when a stop is asked for first."""
        work = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            work.cancel()
            await asyncio.gather(work, stopping, return_exceptions=True)
        return None if work.cancelled() else work

    def batch_size(self) -> int:
        """Records to ask for next: `max_records`, or, behind an active live consumer, what
        `slice_seconds` applies at the measured cost per record (one at least)."""
        behind, per_record = self._behind, self.seconds_per_record
        if behind is None or per_record is None or per_record <= 0:
            return self._max_records
        if self._clock() - behind.last_records_at > ACTIVE_SECONDS:
            return self._max_records
        return max(1, min(self._max_records, int(self._slice_seconds / per_record)))

    def pause_after(self, seconds: float) -> float:
        """After a batch that took `seconds`: how long to wait before the next one (behind an
        active live consumer, what keeps this consumer to `backlog_share` of the time; else 0)."""
        behind = self._behind
        if behind is None or self._backlog_share >= 1:
            return 0.0
        if self._clock() - behind.last_records_at > ACTIVE_SECONDS:
            return 0.0
        return seconds * (1 - self._backlog_share) / self._backlog_share

    def _measured(self, records: int, seconds: float) -> None:
        per_record = seconds / records
        known = self.seconds_per_record
        self.seconds_per_record = per_record if known is None else (known + per_record) / 2

    async def _wait_behind(self) -> bool:
        """Wait while the consumer this one runs behind is busy; False if a stop came first."""
        behind = self._behind
        if behind is None or not behind.busy:
            return True
        self.waiting_behind = True
        try:
            while behind.busy and not self._stopping.is_set():
                await self._unless_stopping(behind._idle.wait())
        finally:
            self.waiting_behind = False
        return not self._stopping.is_set()

    async def _apply_batch(self, records: list[ConsumerRecord]) -> list[Outcome]:
        delay = 0.5
        while True:
            structlog.contextvars.clear_contextvars()
            try:
                outcomes = await self._apply(records)
                self.database_ok = True
                return outcomes
            except DATABASE_DOWN:
                self.database_ok = False
                if self._stopping.is_set():  # not applied: its offsets are not committed
                    raise _Stopped from None
                self.retries += 1
                log.warning(
                    "database_unavailable_retrying",
                    consumer=self.name,
                    delay_s=delay,
                    records=len(records),
                )
                with suppress(TimeoutError):  # a stop cuts the wait short
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                delay = min(delay * 2, MAX_BACKOFF)


class _Stopped(Exception):
    """A stop was asked for while the database was unavailable: the batch was not applied."""
