"""The outbox notifier's LISTEN connection on the real PostgreSQL: lost, re-established, woken.

The notifier polls every 30 s here and waiters give up after 20 s, so a wait that returns within
10 s can only have been woken: by a NOTIFY, or by the notifier reconnecting. The shared server is
never stopped (other tests use it): the notifier's backend is terminated instead, and an outage is
a database refusing connections (`ALLOW_CONNECTIONS false`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from services.coordinator.relay import NOTIFIER_APPLICATION_NAME, NOTIFY_CHANNEL, OutboxNotifier
from tests.integration.test_coordinator import coordinator  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

POLL_SECONDS = 30.0  # longer than any wait below: a wait that returns early was woken
WAIT_SECONDS = 20.0
WOKEN_WITHIN = 10.0
DEADLINE = 15.0


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another connection to the test's database."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def notifier(database_url: str) -> AsyncIterator[OutboxNotifier]:
    notifier = OutboxNotifier(database_url, poll_seconds=POLL_SECONDS)
    await notifier.start()
    yield notifier
    await notifier.stop()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.05)


async def notifier_pids(admin: asyncpg.Connection) -> list[int]:
    """The backends of the notifier's LISTEN connections in this test's database."""
    rows = await admin.fetch(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = $1""",
        NOTIFIER_APPLICATION_NAME,
    )
    return [row["pid"] for row in rows]


async def terminate_notifier(admin: asyncpg.Connection) -> int:
    pids = await notifier_pids(admin)
    assert len(pids) == 1, pids
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pids[0])
    return pids[0]


async def listening_again(admin: asyncpg.Connection, notifier: OutboxNotifier, old: int) -> None:
    async def relistening() -> bool:
        pids = await notifier_pids(admin)
        return notifier.listening and bool(pids) and old not in pids

    await until(relistening, "the notifier listens on a new connection")


async def start_waiting(notifier: OutboxNotifier) -> asyncio.Task:
    waiting = asyncio.create_task(notifier.wait(timeout=WAIT_SECONDS))
    await asyncio.sleep(0)  # the waiter's first step runs: it now waits for the next change
    assert not waiting.done()
    return waiting


async def test_a_notify_wakes_a_waiter(notifier, admin):
    loop = asyncio.get_running_loop()
    assert notifier.listening
    waiting = await start_waiting(notifier)
    started = loop.time()
    await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    await waiting
    assert loop.time() - started < WOKEN_WITHIN


async def test_listens_again_after_its_backend_is_terminated(notifier, admin):
    loop = asyncio.get_running_loop()
    old = await terminate_notifier(admin)
    await listening_again(admin, notifier, old)

    waiting = await start_waiting(notifier)
    started = loop.time()
    await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    await waiting
    assert loop.time() - started < WOKEN_WITHIN, "the NOTIFY after reconnecting was not heard"

    old = await terminate_notifier(admin)  # and again: it is not a one-off
    await listening_again(admin, notifier, old)
    waiting = await start_waiting(notifier)
    started = loop.time()
    await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    await waiting
    assert loop.time() - started < WOKEN_WITHIN


async def test_waiters_are_woken_once_it_has_reconnected(notifier, admin):
    loop = asyncio.get_running_loop()
    waiting = await start_waiting(notifier)
    started = loop.time()
    await terminate_notifier(admin)  # no NOTIFY at all: only the reconnection can wake it
    await waiting
    assert loop.time() - started < WOKEN_WITHIN
    assert notifier.listening, "woken before the LISTEN connection was back"


async def test_keeps_trying_while_the_database_refuses_connections(stack, notifier, admin):
    """A change written while the notifier cannot listen is not left to the next poll."""
    loop = asyncio.get_running_loop()
    database = await admin.fetchval("SELECT current_database()")
    server = await asyncpg.connect(stack.database_url)  # a database cannot lock itself out
    await server.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        waiting = await start_waiting(notifier)
        await terminate_notifier(admin)

        async def lost() -> bool:
            return not notifier.listening

        await until(lost, "the notifier sees its connection lost")
        await asyncio.sleep(2.0)  # an outage long enough for attempts to fail and back off
        assert not notifier.listening
        await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")  # a change nobody listens for
        await asyncio.sleep(0.2)
        assert not waiting.done(), "woken while no connection was listening"
    finally:
        await server.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await server.close()

    allowed = loop.time()
    await waiting
    assert loop.time() - allowed < WOKEN_WITHIN
    assert notifier.listening
    assert len(await notifier_pids(admin)) == 1


async def test_stop_closes_the_connection(database_url, admin):
    notifier = OutboxNotifier(database_url, poll_seconds=POLL_SECONDS)
    await notifier.start()
    assert len(await notifier_pids(admin)) == 1
    await notifier.stop()
    assert not notifier.listening

    async def gone() -> bool:
        return not await notifier_pids(admin)

    await until(gone, "the notifier's backend ends")
    await notifier.stop()  # twice is harmless


async def test_start_raises_when_the_database_cannot_be_reached(database_url):
    missing = database_url.replace("/test_", "/missing_", 1)
    assert missing != database_url
    notifier = OutboxNotifier(missing, poll_seconds=POLL_SECONDS)
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await notifier.start()
    assert not notifier.listening
    await notifier.stop()


async def test_the_coordinator_reports_listening_and_stays_ready(coordinator, admin):
    async def listening_gauge() -> str:
        metrics = (await coordinator.get("/metrics")).text
        (line,) = [
            line
            for line in metrics.splitlines()
            if line.startswith("painpath_coordinator_notifier_listening ")
        ]
        return line.split()[1]

    assert await listening_gauge() == "1.0"
    old = await terminate_notifier(admin)

    async def relistening() -> bool:
        pids = await notifier_pids(admin)
        return bool(pids) and old not in pids and await listening_gauge() == "1.0"

    await until(relistening, "the coordinator's notifier listens again")
    ready = (await coordinator.get("/readyz")).json()
    assert ready["ready"], ready


async def test_its_periodic_checks_leave_a_healthy_connection_alone(database_url, admin):
    loop = asyncio.get_running_loop()
    notifier = OutboxNotifier(database_url, poll_seconds=POLL_SECONDS, check_seconds=0.05)
    await notifier.start()
    try:
        (pid,) = await notifier_pids(admin)
        await asyncio.sleep(0.5)  # some ten checks
        assert notifier.listening
        assert await notifier_pids(admin) == [pid]
        waiting = await start_waiting(notifier)
        started = loop.time()
        await admin.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        await waiting
        assert loop.time() - started < WOKEN_WITHIN
    finally:
        await notifier.stop()
