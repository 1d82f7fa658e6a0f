"""`painpath replay --since T`: publish again what the gateway accepted since T.

For operators after a Kafka disaster (a cluster lost, a topic deleted, the local broker, which
keeps its log in memory, restarted), and run by `painpath run` at start when it finds the
broker's events topic empty while the database holds accepted events. See
`services/gateway/replay.py` for what is published and why it is safe to run twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from services.gateway.replay import ReplayResult, count_kept, replay
from shared.kafka import client_options, end_offsets, reliable_producer
from shared.settings import Settings
from shared.stack import Endpoints
from shared.topics import EVENTS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def replay_with_progress(
    settings: Settings,
    endpoints: Endpoints,
    since: datetime,
    reason: str,
    operator: str | None = None,
    show: bool = True,
) -> ReplayResult:
    """The replay, with a progress bar on the console."""
    topic = EVENTS.full_name(settings.kafka_topic_prefix)
    connection = await asyncpg.connect(endpoints.database_url)
    try:
        kept, _ = await count_kept(connection, since)
    finally:
        await connection.close()
    producer = reliable_producer(settings, endpoints.bootstrap_servers)
    await producer.start()
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, disable=not show) as bar:
            task = bar.add_task("events", total=kept)
            return await replay(
                endpoints.database_url,
                producer,
                topic,
                since,
                reason=reason,
                operator=operator,
                progress=lambda done: bar.advance(task, done),
            )
    finally:
        await producer.stop()


async def events_on_broker(settings: Settings, bootstrap_servers: str) -> int:
    """Records on the events topic (every partition's end offset, from a fetch's high-water
    mark: the local broker's ListOffsets is short)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings, bootstrap_servers), enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = EVENTS.full_name(settings.kafka_topic_prefix)
        partitions = [TopicPartition(name, p) for p in range(EVENTS.partitions)]
        return sum((await end_offsets(consumer, partitions)).values())
    finally:
        await consumer.stop()


async def _oldest_kept(database_url: str) -> datetime | None:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT min(accepted_at) FROM gateway_accepted_events WHERE record_value IS NOT NULL"
        )
    finally:
        await connection.close()


def replay_after_broker_loss(
    settings: Settings, endpoints: Endpoints, echo: Callable[[str], None]
) -> ReplayResult | None:
    """At `painpath run`'s start (topics created, database migrated, no service started yet):
    when the events topic is empty while the gateway kept accepted events, the broker lost its
    log (the local broker keeps it in memory): publish every kept event again. None when
    nothing was lost."""
    oldest = asyncio.run(_oldest_kept(endpoints.database_url))
    if oldest is None:
        return None
    if asyncio.run(events_on_broker(settings, endpoints.bootstrap_servers)) > 0:
        return None
    echo(
        "the broker's events topic is empty but the gateway kept accepted events: the broker"
        f" lost its log; replaying every event accepted since {oldest:%Y-%m-%d %H:%M:%S} UTC"
    )
    result = asyncio.run(
        replay_with_progress(
            settings, endpoints, oldest, reason="painpath run: broker loss detected at start"
        )
    )
    echo(
        f"replayed {result.published} accepted events in {result.seconds:.1f} s"
        + (
            f" ({result.not_kept} accepted before records were kept: not replayable)"
            if result.not_kept
            else ""
        )
    )
    return result
