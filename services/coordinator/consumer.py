"""Consumes a topic record by record, each applied in one database transaction.

What identifies a record (its offset, or the event's (source, id)) is written in the transaction
that applies it, and the Kafka offset is committed only after that transaction: a re-delivery, or
a crash anywhere between the two commits, finds the record already applied and changes nothing.
A database outage is waited out with backoff: the record is retried, never skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000, max_records=500)
            for partition, records in batch.items():
                for record in records:
                    outcome = await self._handle(record)
                    self.progress.processed(record.partition, record.offset)
                    self._on_outcome(outcome, max(0.0, time.time() - record.timestamp / 1000))
                await self._consumer.commit({partition: records[-1].offset + 1})

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
                self.retries += 1
                log.warning("database_unavailable_retrying", consumer=self.name, delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
