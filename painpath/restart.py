"""What `painpath run` keeps of earlier runs, and what it replays after the local broker was lost.

The local broker keeps its log in memory, so every restart of the local stack loses the events
the database's rows came through. The database is kept: what people did (task completions,
outcomes, the audit trail) is never dropped by a restart; `painpath run --fresh` is the only way
to empty it. What is replayed after a broker loss is the run's simulated feed: the gateway's
claims of its events are released so that it publishes them again to the new broker (a claim
would answer "duplicate" and publish nothing); the classifier decides again, and the coordinator
recognises the decisions it already applied and keeps every task, outcome and audit row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import asyncpg


@dataclass(frozen=True)
class KeptState:
    tasks: int
    completed: int
    with_outcome: int
    audit_rows: int
    care_plans: int
    timeline_events: int
    claims: int  # the gateway's (source, id) claims of accepted events

    @property
    def anything(self) -> bool:
        return any((self.tasks, self.care_plans, self.timeline_events, self.claims))

    def describe(self) -> str:
        return (
            f"{self.tasks:,} tasks ({self.completed:,} completed, {self.with_outcome:,} with an"
            f" outcome), {self.audit_rows:,} audit rows, {self.care_plans:,} care plans,"
            f" {self.timeline_events:,} timeline events, {self.claims:,} accepted-event claims"
        )


async def kept_state(database_url: str) -> KeptState:
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            """SELECT (SELECT count(*) FROM tasks) AS tasks,
                      (SELECT count(*) FROM tasks WHERE state = 'completed') AS completed,
                      (SELECT count(*) FROM tasks WHERE outcome IS NOT NULL) AS with_outcome,
                      (SELECT count(*) FROM task_audit) AS audit_rows,
                      (SELECT count(*) FROM care_plans) AS care_plans,
                      (SELECT count(*) FROM patient_events) AS timeline_events,
                      (SELECT count(*) FROM gateway_accepted_events) AS claims"""
        )
    finally:
        await connection.close()
    return KeptState(**dict(row))


def feed_keys(feed: Path) -> tuple[list[str], list[str]]:
    """The (source, id) of every event of a JSON-lines file (lines that are no event skipped)."""
    sources, ids = [], []
    with feed.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            source, event_id = event.get("source"), event.get("id")
            if isinstance(source, str) and isinstance(event_id, str):
                sources.append(source)
                ids.append(event_id)
    return sources, ids


async def after_broker_loss(database_url: str, feed: Path | None) -> str:
    """Prepare the replay after the broker the database's events came through was lost; return
    what is replayed and what is not, for the console. (The place for `painpath replay`.)"""
    connection = await asyncpg.connect(database_url)
    try:
        claims = await connection.fetchval("SELECT count(*) FROM gateway_accepted_events")
        released = 0
        if feed is not None:
            sources, ids = feed_keys(feed)
            status = await connection.execute(
                """DELETE FROM gateway_accepted_events g
                   USING unnest($1::text[], $2::text[]) AS f(source, event_id)
                   WHERE g.source = f.source AND g.event_id = f.event_id""",
                sources,
                ids,
            )
            released = int(status.split()[-1])
    finally:
        await connection.close()
    said = (
        "the broker that held the earlier runs' events is gone (its log was in memory):"
        " the new one starts empty; "
    )
    if feed is None:
        said += "nothing is replayed (--patients 0)"
    else:
        said += (
            f"replaying the feed {feed.name}: released the gateway's claims of its"
            f" {released:,} accepted events so that they are published again"
            " (tasks, outcomes and the audit trail are kept; a decision the coordinator"
            " already applied changes nothing)"
        )
    others = claims - released
    if others:
        said += f"; {others:,} other accepted events were only in the lost broker: not replayed"
    return said
