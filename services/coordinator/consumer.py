"""Consumes a topic record by record, each applied in one database transaction.

What identifies a record (its offset, or the event's (source, id)) is written in the transaction
that applies it, and the Kafka offset is committed only after that transaction: a re-delivery, or
a crash anywhere between the two commits, finds the record already applied and changes nothing.
A database outage is waited out with backoff: the record is retried, never skipped.

`stop` asks for a graceful stop: the record being applied is finished, the offsets of what was
applied are committed, and `run` returns; records fetched but not yet applied are left to the
next consumer of the partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from enum import Enum

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from shared import tracing
from shared.logging import get_logger
from shared.progress import Progress

log = get_logger("painpath.coordinator.consumer")

MAX_BACKOFF = 10.0
DATABASE_DOWN = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


class Outcome(Enum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    UNREADABLE = "unreadable"


Apply = Callable[[ConsumerRecord], Awaitable[Outcome]]


class RecordConsumer:
    def __init__(
        self,
        name: str,
        consumer: AIOKafkaConsumer,
        apply: Apply,
        progress: Progress,
        on_outcome: Callable[[Outcome, float], None] | None = None,
    ):
        self.name = name
        self._consumer = consumer
        self._apply = apply
        self.progress = progress
        self._on_outcome = on_outcome or (lambda outcome, seconds: None)
        self.database_ok = True
        self.retries = 0
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the record being applied, commit, and return from `run` (see the module)."""
        self._stopping.set()

    @property
    def assigned(self) -> bool:
        return bool(self._consumer.assignment())

    async def lag(self) -> dict[int, int]:
        """Records not yet processed, per assigned partition (once a fetch told its end)."""
        lags = {}
        for partition in self._consumer.assignment():
            highwater = self._consumer.highwater(partition)
            if highwater is not None:
                position = await self._consumer.position(partition)
                lags[partition.partition] = self.progress.lag(
                    partition.partition, highwater, position
                )
        return lags

    async def run(self) -> None:
        """Consume until `stop` (then return) or cancellation (then applied records whose
        offsets were not committed yet are delivered again, and found applied)."""
        while not self._stopping.is_set():
            batch = await self._fetch()
            for partition, records in batch.items():
                done = None
                for record in records:
                    if self._stopping.is_set():
                        break
                    try:
                        outcome = await self._handle(record)
                    except _Stopped:
                        break
                    done = record.offset
                    self.progress.processed(record.partition, record.offset)
                    self._on_outcome(outcome, max(0.0, time.time() - record.timestamp / 1000))
                if done is not None:
                    await self._consumer.commit({partition: done + 1})
        structlog.contextvars.clear_contextvars()  # the last record's trace is not this line's
        log.info("consumer_stopped", consumer=self.name)

    async def _fetch(self) -> dict:
        """The next records, or none as soon as a stop is asked for."""
        fetch = asyncio.ensure_future(self._consumer.getmany(timeout_ms=1000, max_records=500))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((fetch, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            fetch.cancel()  # records it fetched meanwhile are left to the next consumer
            await asyncio.gather(fetch, stopping, return_exceptions=True)
        if fetch.cancelled():
            return {}
        return fetch.result()

    async def _handle(self, record: ConsumerRecord) -> Outcome:
        structlog.contextvars.clear_contextvars()
        tracing.bind(tracing.continue_trace(tracing.from_headers(record.headers)))
        delay = 0.5
        while True:
            try:
                outcome = await self._apply(record)
                self.database_ok = True
                return outcome
            except DATABASE_DOWN:
                self.database_ok = False
                if self._stopping.is_set():  # not applied: its offset is not committed
                    raise _Stopped from None
                self.retries += 1
                log.warning("database_unavailable_retrying", consumer=self.name, delay_s=delay)
                with suppress(TimeoutError):  # a stop cuts the wait short
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                delay = min(delay * 2, MAX_BACKOFF)


class _Stopped(Exception):
    """A stop was asked for while the database was unavailable: the record was not applied."""
