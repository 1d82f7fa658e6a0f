"""Replay: publish again what the gateway accepted, after a broker lost its log.

Every claim the gateway commits keeps the exact record it published (key, value, headers) until
the retention sweep forgets it (`GATEWAY_IDEMPOTENCY_RETENTION_DAYS`). After a Kafka disaster
(the local broker is memory-only: its death loses every topic) those records are the only copy
of what was answered 202. `replay` reads the claims accepted at or after `since` in acceptance
order (the request's transaction time, then the event's place in its request) and publishes
each one again, as it was, to `pain.events.v1` with `acks=all`, page by page.

It is idempotent: consumers deduplicate an event by (source, id) and its content, so a record
that survived the disaster, or a replay run twice, changes nothing downstream. Each replay is
audited (`gateway_replays`: who, why, from when, how many); logs carry counts only.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.logging import SafeMessage, get_logger

log = get_logger(__name__)

PAGE = 1000
SEND_TIMEOUT = 60.0


class ReplayFailed(SafeMessage, RuntimeError):
    """The broker did not acknowledge a page of the replay: run it again (it is idempotent)."""


@dataclass
class ReplayResult:
    published: int = 0
    not_kept: int = 0  # claims made before the gateway kept records: nothing to publish
    seconds: float = 0.0
    replay_id: int | None = None


async def count_kept(connection: asyncpg.Connection, since: datetime) -> tuple[int, int]:
    """(records kept, claims without a record) accepted at or after `since`."""
    row = await connection.fetchrow(
        """SELECT count(record_value) AS kept, count(*) - count(record_value) AS not_kept
           FROM gateway_accepted_events WHERE accepted_at >= $1""",
        since,
    )
    return row["kept"], row["not_kept"]


async def replay(
    database_url: str,
    producer: AIOKafkaProducer,
    topic: str,
    since: datetime,
    *,
    reason: str,
    operator: str | None = None,
    progress: Callable[[int], None] | None = None,
    page: int = PAGE,
) -> ReplayResult:
    """Publish every kept record accepted at or after `since`, in acceptance order.

    `progress(n)` is called after each page the broker acknowledged, with its size.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = ReplayResult()
    connection = await asyncpg.connect(database_url)
    try:
        kept, result.not_kept = await count_kept(connection, since)
        result.replay_id = await connection.fetchval(
            """INSERT INTO gateway_replays (operator, reason, since, topic, not_kept)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            operator or _operator(),
            reason,
            since,
            topic,
            result.not_kept,
        )
        log.info(
            "replay_started", replay_id=result.replay_id, events=kept, not_kept=result.not_kept
        )
        after: tuple | None = None
        while True:
            rows = await _page(connection, since, after, page)
            if not rows:
                break
            await _publish(producer, topic, rows)
            result.published += len(rows)
            last = rows[-1]
            after = (last["accepted_at"], last["batch_position"], last["source"], last["event_id"])
            await connection.execute(
                "UPDATE gateway_replays SET published = $2 WHERE id = $1",
                result.replay_id,
                result.published,
            )
            if progress is not None:
                progress(len(rows))
        await connection.execute(
            "UPDATE gateway_replays SET finished_at = now() WHERE id = $1", result.replay_id
        )
    finally:
        await connection.close()
    result.seconds = loop.time() - started
    log.info(
        "replay_finished",
        replay_id=result.replay_id,
        published=result.published,
        not_kept=result.not_kept,
        seconds=round(result.seconds, 2),
    )
    return result


async def _page(
    connection: asyncpg.Connection, since: datetime, after: tuple | None, size: int
) -> list[asyncpg.Record]:
    """The next `size` kept records in acceptance order, after the key `after` (keyset paging:
    the index on (accepted_at, batch_position, source, event_id) serves it)."""
    columns = """accepted_at, batch_position, source, event_id, record_key, record_value,
                 header_names, header_values"""
    if after is None:
        return await connection.fetch(
            f"""SELECT {columns} FROM gateway_accepted_events
                WHERE accepted_at >= $1 AND record_value IS NOT NULL
                ORDER BY accepted_at, batch_position, source, event_id LIMIT $2""",
            since,
            size,
        )
    return await connection.fetch(
        f"""SELECT {columns} FROM gateway_accepted_events
            WHERE accepted_at >= $1 AND record_value IS NOT NULL
              AND (accepted_at, batch_position, source, event_id) > ($2, $3, $4, $5)
            ORDER BY accepted_at, batch_position, source, event_id LIMIT $6""",
        since,
        *after,
        size,
    )


async def _publish(producer: AIOKafkaProducer, topic: str, rows: list[asyncpg.Record]) -> None:
    try:
        # send() in order: one patient's events keep their order within its partition.
        sends = [
            await producer.send(
                topic,
                key=row["record_key"],
                value=row["record_value"],
                headers=list(
                    zip(row["header_names"] or [], row["header_values"] or [], strict=True)
                ),
            )
            for row in rows
        ]
        await asyncio.wait_for(asyncio.gather(*sends), SEND_TIMEOUT)
    except Exception as exc:
        raise ReplayFailed("the event broker did not acknowledge the replay: run it again") from exc


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
