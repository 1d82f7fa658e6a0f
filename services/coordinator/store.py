"""PostgreSQL persistence of care plans and tasks (asyncpg).

Every task change goes through `Changes`, which writes an audit row (who, when, what, why) and an
outbox row (with the gap-free sequence) in the transaction that wrote the task, so that a change
is never stored without being published, nor published without being stored.

What the consumers receive is recorded by what it is, not by where it was read: a determination
by (patient, `determination_id`, `as_of`), an event by its patient and (source, id); the Kafka
offsets a determination was read at are kept as provenance only (the consumer group's committed
offsets are what resumes).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from services.coordinator.care_plan import OPEN_STATES
from shared import tracing

SYSTEM_ACTOR = "coordinator"
# Taken in every transaction that changes tasks: plans and schedules change one at a time, so
# that team capacity is never double-booked by two concurrent changes.
PLANNING_LOCK = 0x706C616E  # "plan"


class TaskView(BaseModel):
    """A task as the API, the stream and `care.tasks.v1` show it."""

    id: UUID
    patient_id: str
    key: str
    title: str
    description: str
    role: str
    priority: str
    prerequisites: list[str]
    reason: str
    determination_id: str
    state: str
    assignee: str | None
    assignee_fixed: bool
    created_on: date
    due_on: date
    scheduled_on: date | None
    late: bool
    done_on: date | None
    outcome: str | None
    cancel_reason: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class TaskChange(BaseModel):
    """One entry of the task stream: the change and the task after it."""

    sequence: int
    patient_sequence: int
    change: str
    actor: str
    reason: str | None
    at: datetime
    task: TaskView


TASK_COLUMNS = ", ".join(TaskView.model_fields)


def task_view(row: asyncpg.Record) -> TaskView:
    return TaskView.model_validate(dict(row))


async def lock_planning(connection: asyncpg.Connection) -> None:
    await connection.execute("SELECT pg_advisory_xact_lock($1)", PLANNING_LOCK)


DeterminationKey = tuple[str, str, datetime]  # (patient_id, determination_id, as_of)


@dataclass(frozen=True)
class ReceivedDetermination:
    """A determination as read from a record, and where it was read (provenance only)."""

    topic: str
    partition: int
    offset: int
    patient_id: str
    determination_id: str
    status: str
    as_of: datetime
    body: str  # the determination's JSON

    @property
    def key(self) -> DeterminationKey:
        """What the determination is: the decision (its id) and the instant it was made for."""
        return (self.patient_id, self.determination_id, self.as_of)


async def record_determinations(
    connection: asyncpg.Connection, received: list[ReceivedDetermination]
) -> dict[DeterminationKey, int]:
    """Record the determinations not recorded before (by `key`, whatever offset they were read
    at), in the order given; returns the row id of each one recorded now."""
    rows = await connection.fetch(
        """INSERT INTO determinations
               (topic, kafka_partition, kafka_offset, patient_id, determination_id, status,
                as_of, body)
           SELECT topic, kafka_partition, kafka_offset, patient_id, determination_id, status,
                  as_of, body::jsonb
           FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::text[], $5::text[],
                       $6::text[], $7::timestamptz[], $8::text[])
                WITH ORDINALITY AS received (topic, kafka_partition, kafka_offset, patient_id,
                                             determination_id, status, as_of, body, number)
           ORDER BY number
           ON CONFLICT (patient_id, determination_id, as_of) DO NOTHING
           RETURNING id, patient_id, determination_id, as_of""",
        *_columns(
            (
                item.topic,
                item.partition,
                item.offset,
                item.patient_id,
                item.determination_id,
                item.status,
                item.as_of,
                item.body,
            )
            for item in received
        ),
    )
    return {(row["patient_id"], row["determination_id"], row["as_of"]): row["id"] for row in rows}


def _columns(rows: Iterable[tuple]) -> list[list]:
    """Rows (at least one) as columns: the arrays of an `unnest`."""
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass(frozen=True)
class Followed:
    """The determination a patient's care plan follows: its decision and its instant."""

    determination_id: str
    as_of: datetime


async def current_determinations(
    connection: asyncpg.Connection, patient_ids: list[str]
) -> dict[str, Followed]:
    """The determination each of these patients' plans follows now (patients with no plan are
    left out)."""
    rows = await connection.fetch(
        """SELECT p.patient_id, d.determination_id, d.as_of FROM care_plans p
           JOIN determinations d ON d.id = p.current_determination
           WHERE p.patient_id = ANY($1::text[])""",
        patient_ids,
    )
    return {row["patient_id"]: Followed(row["determination_id"], row["as_of"]) for row in rows}


async def set_current_determinations(
    connection: asyncpg.Connection, current: dict[str, int], templates: str
) -> None:
    """Point each patient's care plan at a determination row (creating the plans that are new)."""
    await connection.execute(
        """INSERT INTO care_plans (patient_id, templates, current_determination)
           SELECT patient_id, $3, current_determination
           FROM unnest($1::text[], $2::bigint[]) AS current (patient_id, current_determination)
           ON CONFLICT (patient_id) DO UPDATE
           SET current_determination = excluded.current_determination,
               templates = excluded.templates, updated_at = now()""",
        list(current),
        list(current.values()),
        templates,
    )


async def tasks_of_patients(
    connection: asyncpg.Connection, patient_ids: list[str]
) -> dict[str, list[TaskView]]:
    """`patient_tasks` of several patients in one query (each patient asked for has a list)."""
    rows = await connection.fetch(
        f"""SELECT {TASK_COLUMNS} FROM tasks WHERE patient_id = ANY($1::text[])
            ORDER BY patient_id, created_at, key""",
        patient_ids,
    )
    found: dict[str, list[TaskView]] = {patient_id: [] for patient_id in patient_ids}
    for row in rows:
        found[row["patient_id"]].append(task_view(row))
    return found


# (patient_id, source, id): the contract's idempotency key, within one patient's stream (a
# (source, id) in two patients' streams is two events, as the classifier admits them).
EventKey = tuple[str, str, str]


@dataclass(frozen=True)
class ReceivedEvent:
    source: str
    event_id: str
    patient_id: str
    type: str
    time: datetime
    body: str  # the event's JSON as received

    @property
    def key(self) -> EventKey:
        return (self.patient_id, self.source, self.event_id)


async def keep_events(connection: asyncpg.Connection, events: list[ReceivedEvent]) -> set[EventKey]:
    """Keep the events whose (patient, source, id) is not kept yet (the first of a key given wins);
    returns the keys of those kept now. `received_at` is each one's own (the timeline's order),
    not the transaction's."""
    rows = await connection.fetch(
        """INSERT INTO patient_events (source, event_id, patient_id, type, time, body,
                                      received_at)
           SELECT source, event_id, patient_id, type, time, body::jsonb, clock_timestamp()
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                       $6::text[])
                WITH ORDINALITY AS received (source, event_id, patient_id, type, time, body,
                                             number)
           ORDER BY number
           ON CONFLICT (patient_id, source, event_id) DO NOTHING
           RETURNING patient_id, source, event_id""",
        *_columns((e.source, e.event_id, e.patient_id, e.type, e.time, e.body) for e in events),
    )
    return {(row["patient_id"], row["source"], row["event_id"]) for row in rows}


async def same_as_kept(connection: asyncpg.Connection, events: list[ReceivedEvent]) -> list[bool]:
    """For each event, whether the event kept under its (patient, source, id) has the same
    content (as JSON values: key order, spacing and a number's spelling do not count)."""
    rows = await connection.fetch(
        """SELECT received.number, kept.body = received.body::jsonb AS same
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                WITH ORDINALITY AS received (patient_id, source, event_id, body, number)
           JOIN patient_events kept USING (patient_id, source, event_id)""",
        *_columns((e.patient_id, e.source, e.event_id, e.body) for e in events),
    )
    same = {row["number"]: row["same"] for row in rows}
    return [same.get(number, False) for number in range(1, len(events) + 1)]


async def patient_tasks(connection: asyncpg.Connection, patient_id: str) -> list[TaskView]:
    rows = await connection.fetch(
        f"SELECT {TASK_COLUMNS} FROM tasks WHERE patient_id = $1 ORDER BY created_at, key",
        patient_id,
    )
    return [task_view(row) for row in rows]


async def insert_task(connection: asyncpg.Connection, values: dict[str, Any]) -> TaskView:
    columns = ", ".join(values)
    placeholders = ", ".join(f"${number}" for number in range(1, len(values) + 1))
    row = await connection.fetchrow(
        f"INSERT INTO tasks ({columns}) VALUES ({placeholders}) RETURNING {TASK_COLUMNS}",
        *values.values(),
    )
    return task_view(row)


async def update_task(
    connection: asyncpg.Connection, task_id: UUID, values: dict[str, Any]
) -> TaskView:
    # clock_timestamp(), not now(): one transaction may apply many determinations in turn.
    assignments = ", ".join(f"{column} = ${number}" for number, column in enumerate(values, 2))
    row = await connection.fetchrow(
        f"""UPDATE tasks SET {assignments}, version = version + 1, updated_at = clock_timestamp()
            WHERE id = $1 RETURNING {TASK_COLUMNS}""",
        task_id,
        *values.values(),
    )
    return task_view(row)


class Changes:
    """The task changes of one transaction: each audited (who, when, what, why) and queued in the
    outbox with its sequences, all written by `flush` in a few statements before the commit.

    `sequence` is gap-free: the counter's row is locked at the first change (and stays locked to
    the commit, so transactions commit in sequence order), then counted on here.
    """

    def __init__(self, connection: asyncpg.Connection):
        self._connection = connection
        self._sequence: int | None = None
        self._patient_sequences: dict[str, int] = {}
        self._audit: list[tuple] = []
        self._outbox: list[tuple] = []

    async def save(
        self,
        task: TaskView,
        change: str,
        actor: str,
        reason: str | None = None,
        from_state: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> TaskChange:
        """Audit and queue one change of `task` (already written) for the task stream."""
        if self._sequence is None:
            self._sequence = await self._connection.fetchval(
                "SELECT value FROM outbox_counter FOR UPDATE"
            )
        patient_id = task.patient_id
        if patient_id not in self._patient_sequences:
            self._patient_sequences[patient_id] = (
                await self._connection.fetchval(
                    "SELECT value FROM patient_sequences WHERE patient_id = $1", patient_id
                )
                or 0
            )
        self._sequence += 1
        self._patient_sequences[patient_id] += 1
        entry = TaskChange(
            sequence=self._sequence,
            patient_sequence=self._patient_sequences[patient_id],
            change=change,
            actor=actor,
            reason=reason,
            at=task.updated_at,
            task=task,
        )
        self._audit.append(
            (task.id, actor, change, from_state, task.state, reason, json.dumps(details or {}))
        )
        self._outbox.append(
            (
                entry.sequence,
                patient_id,
                entry.patient_sequence,
                task.id,
                task.role,
                change,
                entry.model_dump_json(),
                tracing.current(),
            )
        )
        return entry

    async def flush(self) -> None:
        """Write the changes saved since the last flush (in the caller's transaction)."""
        if not self._outbox:
            return
        await self._connection.executemany(
            """INSERT INTO task_audit (task_id, actor, change, from_state, to_state, reason,
                                       details)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            self._audit,
        )
        await self._connection.execute("UPDATE outbox_counter SET value = $1", self._sequence)
        await self._connection.executemany(
            """INSERT INTO patient_sequences (patient_id, value) VALUES ($1, $2)
               ON CONFLICT (patient_id) DO UPDATE SET value = excluded.value""",
            list(self._patient_sequences.items()),
        )
        await self._connection.executemany(
            """INSERT INTO outbox (sequence, patient_id, patient_sequence, task_id, role, change,
                                   payload, traceparent)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            self._outbox,
        )
        await self._connection.execute(
            "SELECT pg_notify('painpath_outbox', $1)", str(self._sequence)
        )
        self._audit, self._outbox = [], []


BookingKey = tuple[str, tuple[int, int]]  # (person id, ISO (year, week))
_OPEN = tuple(sorted(state.value for state in OPEN_STATES))


def booked_by(tasks: Iterable[TaskView]) -> Counter[BookingKey]:
    """The slots these tasks take: open ones with a person and a day, per (person, ISO week)."""
    counts: Counter[BookingKey] = Counter()
    for task in tasks:
        if task.assignee is not None and task.scheduled_on is not None and task.state in _OPEN:
            year, week, _ = task.scheduled_on.isocalendar()
            counts[(task.assignee, (year, week))] += 1
    return counts


class Bookings:
    """The team's booked slots per (person, ISO week) as one transaction sees them: read from the
    database at the first `excluding`, then kept in step by `replace` with every task the
    transaction changes (it holds the planning lock: nobody else changes tasks meanwhile). A
    batch of determinations reschedules patient after patient against one read, instead of
    reading every other patient's open tasks for each (a read that grows with the team's open
    tasks, paid once per rescheduled patient: quadratic in a backfill)."""

    def __init__(self, connection: asyncpg.Connection):
        self._connection = connection
        self._counts: Counter[BookingKey] | None = None

    async def excluding(self, tasks: Iterable[TaskView]) -> dict[BookingKey, int]:
        """The slots booked outside `tasks` (one patient's tasks as they are stored now)."""
        if self._counts is None:
            self._counts = await _booked_slots(self._connection)
        return dict(self._counts - booked_by(tasks))  # what falls to 0 is dropped

    def replace(self, before: Iterable[TaskView], after: Iterable[TaskView]) -> None:
        """Tasks stored as `before` are now stored as `after` (a task new: `before` empty). Not
        read yet: nothing to do, the read will see the change."""
        if self._counts is not None:
            self._counts.subtract(booked_by(before))
            self._counts.update(booked_by(after))
            self._counts = +self._counts


async def _booked_slots(connection: asyncpg.Connection) -> Counter[BookingKey]:
    """Every open task's slot, counted in the database (one row per person and week)."""
    rows = await connection.fetch(
        """SELECT assignee, date_trunc('week', scheduled_on::timestamp)::date AS monday,
                  count(*) AS slots
           FROM tasks
           WHERE assignee IS NOT NULL AND scheduled_on IS NOT NULL AND state = ANY($1::text[])
           GROUP BY 1, 2""",
        list(_OPEN),
    )
    counts: Counter[BookingKey] = Counter()
    for row in rows:
        year, week, _ = row["monday"].isocalendar()
        counts[(row["assignee"], (year, week))] += row["slots"]
    return counts
