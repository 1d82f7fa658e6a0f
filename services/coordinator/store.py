"""PostgreSQL persistence of care plans and tasks (asyncpg).

Every task change goes through `save_change`, which writes the task, an audit row (who, when,
what, why) and an outbox row (with the gap-free sequence) in the caller's transaction, so that a
change is never stored without being published, nor published without being stored.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel

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


async def record_determination(
    connection: asyncpg.Connection,
    topic: str,
    partition: int,
    offset: int,
    body: dict[str, Any],
) -> int | None:
    """Record a consumed determination; None when this record was already processed."""
    return await connection.fetchval(
        """INSERT INTO determinations
               (topic, kafka_partition, kafka_offset, patient_id, determination_id, status,
                as_of, body)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING
           RETURNING id""",
        topic,
        partition,
        offset,
        body["patient_id"],
        body["determination_id"],
        body["status"],
        datetime.fromisoformat(body["as_of"]),
        json.dumps(body),
    )


async def set_current_determination(
    connection: asyncpg.Connection, patient_id: str, determination: int, templates: str
) -> None:
    await connection.execute(
        """INSERT INTO care_plans (patient_id, templates, current_determination)
           VALUES ($1, $2, $3)
           ON CONFLICT (patient_id) DO UPDATE
           SET current_determination = excluded.current_determination,
               templates = excluded.templates, updated_at = now()""",
        patient_id,
        templates,
        determination,
    )


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
    assignments = ", ".join(f"{column} = ${number}" for number, column in enumerate(values, 2))
    row = await connection.fetchrow(
        f"""UPDATE tasks SET {assignments}, version = version + 1, updated_at = now()
            WHERE id = $1 RETURNING {TASK_COLUMNS}""",
        task_id,
        *values.values(),
    )
    return task_view(row)


async def save_change(
    connection: asyncpg.Connection,
    task: TaskView,
    change: str,
    actor: str,
    reason: str | None = None,
    from_state: str | None = None,
    details: dict[str, Any] | None = None,
) -> TaskChange:
    """Audit and queue one change of `task` (already written) for the task stream."""
    await connection.execute(
        """INSERT INTO task_audit (task_id, actor, change, from_state, to_state, reason, details)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        task.id,
        actor,
        change,
        from_state,
        task.state,
        reason,
        json.dumps(details or {}),
    )
    sequence = await connection.fetchval(
        "UPDATE outbox_counter SET value = value + 1 RETURNING value"
    )
    patient_sequence = await connection.fetchval(
        """INSERT INTO patient_sequences (patient_id, value) VALUES ($1, 1)
           ON CONFLICT (patient_id) DO UPDATE SET value = patient_sequences.value + 1
           RETURNING value""",
        task.patient_id,
    )
    entry = TaskChange(
        sequence=sequence,
        patient_sequence=patient_sequence,
        change=change,
        actor=actor,
        reason=reason,
        at=task.updated_at,
        task=task,
    )
    await connection.execute(
        """INSERT INTO outbox (sequence, patient_id, patient_sequence, task_id, role, change,
                               payload, traceparent)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        sequence,
        task.patient_id,
        patient_sequence,
        task.id,
        task.role,
        change,
        entry.model_dump_json(),
        tracing.current(),
    )
    await connection.execute("SELECT pg_notify('painpath_outbox', $1)", str(sequence))
    return entry


async def bookings(connection: asyncpg.Connection, excluding_patient: str) -> dict:
    """Task slots already booked per (person, ISO year-week), outside one patient's plan."""
    rows = await connection.fetch(
        """SELECT assignee, scheduled_on FROM tasks
           WHERE assignee IS NOT NULL AND scheduled_on IS NOT NULL
             AND state IN ('proposed', 'accepted', 'in_progress') AND patient_id <> $1""",
        excluding_patient,
    )
    booked: dict[tuple[str, tuple[int, int]], int] = {}
    for row in rows:
        year, week, _ = row["scheduled_on"].isocalendar()
        key = (row["assignee"], (year, week))
        booked[key] = booked.get(key, 0) + 1
    return booked
