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
from shared.supervision import Loops

log = get_logger("painpath.coordinator.relay")

RELAY_LOCK = 0x72656C61  # "rela"
NOTIFY_CHANNEL = "painpath_outbox"
BATCH = 500
# The LISTEN connection's name in `pg_stat_activity`, for operators (and the tests).
NOTIFIER_APPLICATION_NAME = "painpath-outbox-notifier"
# The LISTEN connection is re-established after 0.5 s, then 1, 2, 4... up to 10 s between
# attempts; the delay starts again from 0.5 s once a connection has stayed up for 10 s.
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
CHECK_SECONDS = 5.0  # how often the supervisor checks that an idle LISTEN connection answers
CHECK_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0


class OutboxNotifier:
    """Wakes waiters when a task change is written (LISTEN/NOTIFY), and at least every poll.

    A supervisor task keeps the LISTEN connection up. It notices a lost connection at once
    (asyncpg's termination listener: PostgreSQL restarted, the backend was terminated) or within
    `check_seconds` (a `SELECT 1` that fails or does not answer: a half-open connection), then
    reconnects with capped exponential backoff. While disconnected, waiters fall back to polling;
    once reconnected they are all woken, so a change written meanwhile is not left to the next poll.
    """

    def __init__(
        self, database_url: str, poll_seconds: float = 1.0, check_seconds: float = CHECK_SECONDS
    ):
        self._database_url = database_url
        self._poll_seconds = poll_seconds
        self._check_seconds = check_seconds
        # One event per generation: waking sets it and starts the next one, so a waiter wakes
        # once per change notified after it started waiting.
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self._supervisor: asyncio.Task | None = None

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up (False: waiters are polling)."""
        connection = self._connection
        return connection is not None and not connection.is_closed() and not self._lost.is_set()

    async def start(self, loops: Loops | None = None) -> None:
        """Connect and LISTEN, then keep the connection up until `stop`.

        Raises if the database cannot be reached now, as the coordinator's other start-up steps do
        (migrations, the pool): it starts only with its database, and is restarted otherwise.
        """
        if self._supervisor is not None:
            return
        await self._connect()
        if loops is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="outbox-notifier")
        else:  # the process's loops: a death of this one stops the process
            self._supervisor = loops.start("outbox-notifier", self._supervise, restart=True)

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            try:
                await supervisor
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stop() itself was cancelled, not only the supervisor
            except Exception:
                log.warning("notifier_supervisor_failed", exc_info=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            await _close(connection)

    async def wait(self, timeout: float | None = None) -> None:
        """Until a change is notified, or the poll interval (or `timeout`) passes."""
        changed = self._changed
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout or self._poll_seconds):
                await changed.wait()

    def _wake_all(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _on_notify(self, *args) -> None:
        self._wake_all()

    def _on_terminated(self, connection: asyncpg.Connection) -> None:
        if connection is self._connection:
            self._lost.set()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(
            self._database_url,
            timeout=CONNECT_TIMEOUT_SECONDS,
            server_settings={"application_name": NOTIFIER_APPLICATION_NAME},
        )
        try:
            connection.add_termination_listener(self._on_terminated)
            await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            connection.terminate()
            raise
        self._lost.clear()
        self._connection = connection

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RECONNECT_INITIAL_SECONDS
        while True:
            connected_at = loop.time()
            await self._until_lost()
            lost_at = loop.time()
            if lost_at - connected_at >= RECONNECT_MAX_SECONDS:
                delay = RECONNECT_INITIAL_SECONDS  # a connection that flaps keeps backing off
            connection, self._connection = self._connection, None
            log.warning("notifier_connection_lost", polling_every_seconds=self._poll_seconds)
            if connection is not None:
                connection.terminate()  # closed already, or not answering: nothing to say to it
            attempts = 0
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                attempts += 1
                try:
                    await self._connect()
                    break
                except Exception as exc:  # any failure is retried; only its type is logged
                    log.warning(
                        "notifier_reconnect_failed",
                        attempt=attempts,
                        error=type(exc).__name__,
                        retry_in_seconds=delay,
                    )
            log.info(
                "notifier_reconnected",
                attempts=attempts,
                down_seconds=round(loop.time() - lost_at, 2),
            )
            self._wake_all()  # what was written while disconnected is not left to the next poll

    async def _until_lost(self) -> None:
        """Return once the LISTEN connection is lost, or no longer answers."""
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._check_seconds):
                    await self._lost.wait()
                return
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                    await connection.execute("SELECT 1")
            except Exception:  # whatever the failure, the connection is replaced
                return


async def _close(connection: asyncpg.Connection) -> None:
    """Close gracefully if the server answers, else drop the socket."""
    try:
        await connection.close(timeout=CLOSE_TIMEOUT_SECONDS)
    except Exception:  # the connection is discarded either way
        connection.terminate()


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
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask `run` to return once what is in the outbox now is published (when leading).

        Asked after the consumers stopped, so that nothing they wrote is left for the next
        instance: the batch being sent is finished, then the outbox is drained."""
        self._stopping.set()

    async def run(self) -> None:
        """Relay until `stop` or cancelled; reconnects after database or broker failures."""
        while not self._stopping.is_set():
            try:
                await self._run_while_leader()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.active = False
                if self._stopping.is_set():
                    log.warning("relay_failed_stopping", exc_info=True)
                    return
                log.warning("relay_failed_retrying", exc_info=True)
                await self._pause(1.0)
        log.info("relay_stopped", published=self.published)

    async def _run_while_leader(self) -> None:
        leader = await asyncpg.connect(self._database_url)
        try:
            while not await leader.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                if await self._pause(2.0):
                    return  # a standby has nothing to hand over
            self.active = True
            log.info("relay_leading")
            while True:
                # Read before publishing: a stop asked for meanwhile still gets one more pass.
                stopping = self._stopping.is_set()
                if await self.publish_pending() < BATCH:
                    if stopping:
                        return
                    await self._wait_for_change()
        finally:
            self.active = False
            with suppress(Exception):
                await leader.close()  # releases the advisory lock

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds`, less if a stop is asked for; True when stopping."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()

    async def _wait_for_change(self) -> None:
        """Until the notifier wakes the relay (a change, or its poll interval) or a stop."""
        waits = [
            asyncio.ensure_future(self._notifier.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

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
