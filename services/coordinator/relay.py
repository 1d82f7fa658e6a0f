"""The outbox relay: publishes task changes from PostgreSQL to `care.tasks.v1`, in order.

One relay publishes at a time, whatever the number of coordinator instances (a session advisory
lock; the others wait as standbys). Rows are sent in sequence order, keyed by patient, and marked
published only after the broker acknowledged them: a crash in between publishes them again
(at-least-once), and consumers drop what they saw by its `sequence` header.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.logging import get_logger

log = get_logger("painpath.coordinator.relay")

RELAY_LOCK = 0x72656C61  # "rela"
NOTIFY_CHANNEL = "painpath_outbox"
BATCH = 500


class OutboxNotifier:
    """Wakes waiters when a task change is written (LISTEN/NOTIFY), and at least every second."""

    def __init__(self, database_url: str, poll_seconds: float = 1.0):
        self._database_url = database_url
        self._poll_seconds = poll_seconds
        self._changed = asyncio.Condition()
        self._connection: asyncpg.Connection | None = None

    async def start(self) -> None:
        self._connection = await asyncpg.connect(self._database_url)
        await self._connection.add_listener(NOTIFY_CHANNEL, self._on_notify)

    async def stop(self) -> None:
        if self._connection is not None:
            with suppress(Exception):
                await self._connection.close()

    def _on_notify(self, *args) -> None:
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, timeout: float | None = None) -> None:
        """Until a change is notified, or the poll interval (or `timeout`) passes."""
        with suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait(), timeout or self._poll_seconds)


class OutboxRelay:
    def __init__(
        self,
        database_url: str,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topic: str,
        notifier: OutboxNotifier,
    ):
        self._database_url = database_url
        self._pool = pool
        self._producer = producer
        self._topic = topic
        self._notifier = notifier
        self.published = 0
        self.active = False

    async def run(self) -> None:
        """Relay until cancelled; reconnects after database or broker failures."""
        while True:
            try:
                await self._run_while_leader()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.active = False
                log.warning("relay_failed_retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _run_while_leader(self) -> None:
        leader = await asyncpg.connect(self._database_url)
        try:
            while not await leader.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                await asyncio.sleep(2.0)
            self.active = True
            log.info("relay_leading")
            while True:
                if await self.publish_pending() < BATCH:
                    await self._notifier.wait()
        finally:
            self.active = False
            with suppress(Exception):
                await leader.close()  # releases the advisory lock

    async def publish_pending(self) -> int:
        """Publish the oldest unpublished changes (one batch); return how many."""
        rows = await self._pool.fetch(
            """SELECT sequence, patient_id, payload, traceparent FROM outbox
               WHERE published_at IS NULL ORDER BY sequence LIMIT $1""",
            BATCH,
        )
        if not rows:
            return 0
        sends = [
            await self._producer.send(
                self._topic,
                key=row["patient_id"].encode(),
                value=row["payload"].encode(),
                headers=[
                    ("content-type", b"application/json"),
                    ("sequence", str(row["sequence"]).encode()),
                    *([("traceparent", row["traceparent"].encode())] if row["traceparent"] else []),
                ],
            )
            for row in rows
        ]
        await asyncio.gather(*sends)
        await self._pool.execute(
            "UPDATE outbox SET published_at = now() WHERE sequence = ANY($1::bigint[])",
            [row["sequence"] for row in rows],
        )
        self.published += len(rows)
        return len(rows)
