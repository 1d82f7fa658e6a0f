"""What the local system holds after a replay: the summary `painpath run` prints."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from services.coordinator.app import BACKFILL_GROUP, TIMELINE_BACKFILL_GROUP, TIMELINE_GROUP
from services.coordinator.app import GROUP as COORDINATOR_GROUP
from shared.consumer_group import group_status
from shared.kafka import group_lag
from shared.settings import Settings
from shared.topics import DETERMINATIONS, DETERMINATIONS_BACKFILL, EVENTS, EVENTS_BACKFILL

# Besides the classifier group's status (both lanes): what the coordinator's four groups have
# not committed yet of the topics they read.
LAGS = (
    (COORDINATOR_GROUP, DETERMINATIONS),
    (BACKFILL_GROUP, DETERMINATIONS_BACKFILL),
    (TIMELINE_GROUP, EVENTS),
    (TIMELINE_BACKFILL_GROUP, EVENTS_BACKFILL),
)


@dataclass
class SystemSummary:
    patients_by_status: dict[str, int] = field(default_factory=dict)
    tasks_by_role_and_state: dict[tuple[str, str], int] = field(default_factory=dict)
    slowest_event_to_task_seconds: float | None = None


async def wait_until_settled(
    settings: Settings,
    bootstrap_servers: str,
    database_url: str,
    timeout: float = 900,
    interval: float = 1.0,
) -> float:
    """Until the classifier and coordinator consumed everything, of both lanes, and the outbox
    is published, looking every `interval` seconds. The classifier's part is its group's status
    as a whole (`shared.consumer_group`): no lag, and every partition owned (a worker lost
    meanwhile leaves its partitions unowned until the group rebalances); then `LAGS`.

    Returns the seconds waited; raises TimeoutError after `timeout`.
    """
    prefix = settings.kafka_topic_prefix
    started = time.monotonic()
    while True:
        classifiers = await group_status(settings, bootstrap_servers)
        behind = classifiers.lag + len(classifiers.unowned)
        for group, topic in LAGS:
            behind += await group_lag(settings, bootstrap_servers, f"{prefix}{group}", topic)
        connection = await asyncpg.connect(database_url)
        try:
            behind += await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
        finally:
            await connection.close()
        if behind == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{behind} records still in flight after {timeout:.0f} s")
        await asyncio.sleep(interval)


async def summarize(database_url: str) -> SystemSummary:
    connection = await asyncpg.connect(database_url)
    try:
        statuses = await connection.fetch(
            """SELECT d.status, count(*) FROM care_plans p
               JOIN determinations d ON d.id = p.current_determination GROUP BY 1 ORDER BY 1"""
        )
        tasks = await connection.fetch(
            "SELECT role, state, count(*) FROM tasks GROUP BY 1, 2 ORDER BY 1, 2"
        )
        # From the gateway's acceptance of the newest event a determination was made from, to
        # the task that determination created (gateway and coordinator share the local database).
        slowest = await connection.fetchval(
            """SELECT max(extract(epoch FROM t.created_at - evidence.accepted))
               FROM tasks t
               JOIN LATERAL (SELECT body FROM determinations
                             WHERE determination_id = t.determination_id
                             ORDER BY id LIMIT 1) d ON true
               JOIN LATERAL (SELECT max(g.accepted_at) AS accepted
                             FROM jsonb_to_recordset(d.body -> 'evidence_event_ids')
                                  AS e(source text, id text)
                             JOIN gateway_accepted_events g
                               ON g.source = e.source AND g.event_id = e.id) evidence ON true"""
        )
    finally:
        await connection.close()
    return SystemSummary(
        patients_by_status={row[0]: row[1] for row in statuses},
        tasks_by_role_and_state={(row[0], row[1]): row[2] for row in tasks},
        slowest_event_to_task_seconds=float(slowest) if slowest is not None else None,
    )
