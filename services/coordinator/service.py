"""The coordinator's service layer: determinations and people's actions become task changes.

Each entry point is one database transaction that takes the planning lock, so plans, schedules
and the team's capacity change one at a time; every task change it makes is audited and queued
in the outbox by `store.save_change`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta
from uuid import UUID

import asyncpg
from aiokafka import ConsumerRecord

from services.coordinator import store
from services.coordinator.care_plan import (
    OPEN_STATES,
    ExistingTask,
    TaskAction,
    TaskState,
    plan_for,
    reconcile,
    transition,
)
from services.coordinator.consumer import Outcome
from services.coordinator.scheduling import Roster, SchedulingTask, schedule
from services.coordinator.store import SYSTEM_ACTOR, TaskView
from services.coordinator.templates import PlanTemplates
from services.coordinator.timeline import StatusChange, Timeline, build_timeline
from shared.contract import ContractViolation, Determination, parse_event
from shared.logging import get_logger

log = get_logger("painpath.coordinator")


REQUIRED = frozenset({"patient_id", "determination_id", "status", "as_of"})


class TaskNotFound(LookupError):
    pass


class InvalidAction(ValueError):
    """The action is legal for the task's state but its details are not (e.g. an unknown person)."""


class Coordinator:
    def __init__(
        self,
        pool: asyncpg.Pool | None,
        templates: PlanTemplates,
        roster: Roster,
        today: Callable[[], date],
    ):
        self.pool = pool
        self.templates = templates
        self.roster = roster
        self.today = today

    async def determination_record(self, record: ConsumerRecord) -> Outcome:
        """Apply one record of `pain.determinations.v1`."""
        try:
            body = json.loads(record.value)
            readable = isinstance(body, dict) and body.keys() >= REQUIRED
        except ValueError:
            readable = False
        if not readable:  # a classifier bug, not a patient's event: say where it is, go on
            log.error(
                "determination_unreadable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            return Outcome.UNREADABLE
        applied = await self.apply_determination(record, body)
        return Outcome.APPLIED if applied else Outcome.ALREADY_APPLIED

    async def event_record(self, record: ConsumerRecord) -> Outcome:
        """Keep one record of `pain.events.v1` for the patient's timeline (first one wins)."""
        try:
            event = parse_event(record.value)
        except ContractViolation:
            return Outcome.UNREADABLE  # the classifier dead-letters it with the reason
        try:
            inserted = await self._keep_event(event, record)
        except asyncpg.DataError:  # the database cannot store it: never let it stop the stream
            log.error(
                "event_unstorable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            return Outcome.UNREADABLE
        return Outcome.APPLIED if inserted else Outcome.ALREADY_APPLIED

    async def _keep_event(self, event, record: ConsumerRecord) -> bool:
        return await self.pool.fetchval(
            """INSERT INTO patient_events (source, event_id, patient_id, type, time, body)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (source, event_id) DO NOTHING RETURNING true""",
            event.source,
            event.id,
            event.patient_id,
            event.type,
            event.time,
            record.value.decode(),
        )

    async def timeline(self, patient_id: str, as_of: datetime) -> Timeline | None:
        """The patient's timeline as of `as_of`, or None when nothing is known of the patient."""
        rows = await self.pool.fetch(
            "SELECT body FROM patient_events WHERE patient_id = $1 ORDER BY received_at",
            patient_id,
        )
        determinations = await self.pool.fetch(
            """SELECT as_of, received_at, status, determination_id, body FROM determinations
               WHERE patient_id = $1 ORDER BY id""",
            patient_id,
        )
        if not rows and not determinations:
            return None
        current = (
            Determination.model_validate_json(determinations[-1]["body"])
            if determinations
            else None
        )
        return build_timeline(
            patient_id,
            [parse_event(row["body"]) for row in rows],
            as_of,
            current.trials if current is not None else [],
            [
                StatusChange(
                    as_of=row["as_of"],
                    received_at=row["received_at"],
                    status=row["status"],
                    determination_id=row["determination_id"],
                )
                for row in determinations
            ],
        )

    async def apply_determination(self, record: ConsumerRecord, body: dict) -> bool:
        """Bring the patient's plan in line with a determination; False if already applied."""
        determination = Determination.model_validate(body)
        patient_id = determination.patient_id
        async with self.pool.acquire() as connection, connection.transaction():
            await store.lock_planning(connection)
            recorded = await store.record_determination(
                connection, record.topic, record.partition, record.offset, body
            )
            if recorded is None:
                return False
            await store.set_current_determination(
                connection, patient_id, recorded, self.templates.id
            )
            existing = await store.patient_tasks(connection, patient_id)
            change = reconcile(
                [ExistingTask(task.key, TaskState(task.state)) for task in existing],
                plan_for(determination, self.templates),
                determination,
            )
            today = self.today()
            for spec in change.add:
                task = await store.insert_task(
                    connection,
                    {
                        "patient_id": patient_id,
                        "key": spec.key,
                        "title": spec.title,
                        "description": spec.description,
                        "role": str(spec.role),
                        "priority": str(spec.priority),
                        "prerequisites": list(spec.prerequisites),
                        "reason": spec.reason,
                        "determination_id": determination.determination_id,
                        "state": TaskState.PROPOSED.value,
                        "created_on": today,
                        "due_on": today + timedelta(days=spec.due_days),
                    },
                )
                await store.save_change(connection, task, "created", SYSTEM_ACTOR, spec.reason)
            open_by_key = {task.key: task for task in existing if task.state in OPEN_STATES}
            for key, reason in change.cancel:
                task = open_by_key[key]
                cancelled = await store.update_task(
                    connection,
                    task.id,
                    {"state": TaskState.CANCELLED.value, "cancel_reason": reason},
                )
                await store.save_change(
                    connection, cancelled, "cancelled", SYSTEM_ACTOR, reason, task.state
                )
            if not change.empty:  # most determinations change no plan: nothing to reschedule
                await self._reschedule(connection, patient_id, today)
                log.info(
                    "plan_changed",
                    patient_id=patient_id,  # pseudonymised by the log filter
                    added=len(change.add),
                    cancelled=len(change.cancel),
                )
        return True

    async def act(
        self,
        task_id: UUID,
        action: TaskAction,
        actor: str,
        *,
        outcome: str | None = None,
        reason: str | None = None,
        assignee: str | None = None,
    ) -> TaskView:
        """A person's action on a task. Raises TaskNotFound, IllegalTransition, InvalidAction."""
        async with self.pool.acquire() as connection, connection.transaction():
            await store.lock_planning(connection)
            row = await connection.fetchrow(
                f"SELECT {store.TASK_COLUMNS} FROM tasks WHERE id = $1 FOR UPDATE", task_id
            )
            if row is None:
                raise TaskNotFound(str(task_id))
            task = store.task_view(row)
            state = transition(task.state, action)
            updates: dict[str, object] = {"state": state.value}
            if action is TaskAction.ACCEPT:
                updates["assignee_fixed"] = True  # the person it was scheduled for took it
            elif action is TaskAction.COMPLETE:
                if not outcome:
                    raise InvalidAction("completing a task needs its outcome")
                updates |= {"outcome": outcome, "done_on": self.today()}
            elif action is TaskAction.CANCEL:
                if not reason:
                    raise InvalidAction("cancelling a task needs a reason")
                updates["cancel_reason"] = reason
            elif action is TaskAction.REASSIGN:
                person = self.roster.person(assignee) if assignee else None
                if person is None or str(person.role) != task.role:
                    raise InvalidAction(f"reassigning needs a person of the role {task.role}")
                updates |= {"assignee": person.id, "assignee_fixed": True}
            changed = await store.update_task(connection, task.id, updates)
            await store.save_change(
                connection,
                changed,
                action.value,
                actor,
                reason or outcome,
                task.state,
                {"assignee": changed.assignee} if action is TaskAction.REASSIGN else None,
            )
            if action in (TaskAction.COMPLETE, TaskAction.CANCEL, TaskAction.REASSIGN):
                await self._reschedule(connection, task.patient_id, self.today())
            return await self._task(connection, task.id)

    async def _task(self, connection: asyncpg.Connection, task_id: UUID) -> TaskView:
        row = await connection.fetchrow(
            f"SELECT {store.TASK_COLUMNS} FROM tasks WHERE id = $1", task_id
        )
        return store.task_view(row)

    async def _reschedule(
        self, connection: asyncpg.Connection, patient_id: str, today: date
    ) -> None:
        """Schedule the patient's open tasks around everyone else's bookings.

        Only this patient's tasks can move: other patients' slots are fixed bookings.
        """
        tasks = await store.patient_tasks(connection, patient_id)
        current: dict[str, TaskView] = {}
        for task in tasks:  # by key, the latest task that is open or done counts
            if task.state != TaskState.CANCELLED:
                current[task.key] = task
        slots = schedule(
            [
                SchedulingTask(
                    task_id=str(task.id),
                    role=task.role,
                    priority=task.priority,
                    created=task.created_on,
                    due_days=(task.due_on - task.created_on).days,
                    prerequisites=tuple(
                        str(current[key].id) for key in task.prerequisites if key in current
                    ),
                    state=task.state,
                    assignee=task.assignee if task.assignee_fixed else None,
                    done_on=task.done_on,
                )
                for task in current.values()
            ],
            self.roster,
            today,
            await store.bookings(connection, patient_id),
        )
        for task in current.values():
            slot = slots.get(str(task.id))
            if slot is None or task.state not in OPEN_STATES:
                continue
            if (slot.date, slot.assignee, slot.late) == (
                task.scheduled_on,
                task.assignee,
                task.late,
            ):
                continue
            moved = await store.update_task(
                connection,
                task.id,
                {"scheduled_on": slot.date, "assignee": slot.assignee, "late": slot.late},
            )
            if slot.date is None:
                reason = f"not scheduled: {slot.problem}"
            else:
                late = " (after its due date)" if slot.late else ""
                reason = f"scheduled for {slot.date.isoformat()}{late}"
            await store.save_change(
                connection, moved, "scheduled", SYSTEM_ACTOR, reason, task.state
            )
