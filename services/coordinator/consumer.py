"""Consumes `pain.determinations.v1`: each record applied in one database transaction.

The record's (topic, partition, offset) is written in the transaction that changes the plan, and
the Kafka offset is committed only after that transaction: a re-delivery, or a crash anywhere
between the two commits, finds the record already applied and changes nothing.
A database outage is waited out with backoff (the record is retried, never skipped).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from shared.logging import get_logger

log = get_logger("painpath.coordinator.consumer")

Apply = Callable[[ConsumerRecord, dict], Awaitable[bool]]
MAX_BACKOFF = 10.0
REQUIRED = frozenset({"patient_id", "determination_id", "status", "as_of"})


class DeterminationConsumer:
    def __init__(self, consumer: AIOKafkaConsumer, apply: Apply):
        self._consumer = consumer
        self._apply = apply
        self.applied = 0
        self.skipped = 0
        self.unreadable = 0
        self.last_progress = time.monotonic()
        self.database_ok = True

    async def run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000, max_records=500)
            for partition, records in batch.items():
                for record in records:
                    await self._handle(record)
                await self._consumer.commit({partition: records[-1].offset + 1})
            self.last_progress = time.monotonic()

    async def _handle(self, record: ConsumerRecord) -> None:
        try:
            body = json.loads(record.value)
            readable = isinstance(body, dict) and body.keys() >= REQUIRED
        except ValueError:
            readable = False
        if not readable:
            # A classifier bug, not a patient's event: count it, say where it is, go on.
            self.unreadable += 1
            log.error(
                "determination_unreadable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            return
        delay = 0.5
        while True:
            try:
                applied = await self._apply(record, body)
                self.database_ok = True
                break
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError,
            ):
                self.database_ok = False
                log.warning("database_unavailable_retrying", delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
        if applied:
            self.applied += 1
        else:
            self.skipped += 1
