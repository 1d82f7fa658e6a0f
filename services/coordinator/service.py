"""The coordinator's service layer: determinations and people's actions become task changes.

Each entry point is one database transaction that takes the planning lock, so plans, schedules
and the team's capacity change one at a time; every task change it makes is audited and queued
in the outbox by `store.Changes`. A consumed batch of records is one such transaction, its
determinations applied in order exactly as each would be in a transaction of its own.
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
from shared import tracing
from shared.contract import Determination, parse_event
from shared.contract.records import Rejection, read_record
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
        # The partition count of each event topic (`pain.events.v1`, `pain.events.backfill.v1`,
        # by their names on the broker), once the consumers know it: a record on another
        # partition than its key's is refused, as the classifier refuses it.
        self.event_partitions: dict[str, int] = {}

    async def timeline(self, patient_id: str, as_of: datetime) -> Timeline | None:
        """The patient's timeline as of `as_of`, or None when nothing is known of the patient.

        Its status changes are read from every determination recorded (those superseded by a
        later instant too, the history as it was known), ordered by `as_of`, then by arrival;
        what takes the policy (trial names and outcomes) comes from the determination the care
        plan follows.
        """
        rows = await self.pool.fetch(
            "SELECT body FROM patient_events WHERE patient_id = $1 ORDER BY received_at",
            patient_id,
        )
        determinations = await self.pool.fetch(
            """SELECT d.as_of, d.received_at, d.status, d.determination_id,
                      d.id = p.current_determination AS followed, d.body
               FROM determinations d LEFT JOIN care_plans p USING (patient_id)
               WHERE d.patient_id = $1 ORDER BY d.as_of, d.id""",
            patient_id,
        )
        if not rows and not determinations:
            return None
        followed = [row for row in determinations if row["followed"]] or determinations[-1:]
        current = Determination.model_validate_json(followed[0]["body"]) if followed else None
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

    async def determination_records(self, records: list[ConsumerRecord]) -> list[Outcome]:
        """Apply records of `pain.determinations.v1` or `pain.determinations.backfill.v1`, in
        order, in one transaction."""
        read = [(record, _read_determination(record)) for record in records]
        items = [(record, found) for record, found in read if found is not None]
        applied = iter(await self._in_one_transaction(items, self._apply_determinations, True))
        return [Outcome.UNREADABLE if found is None else next(applied) for _, found in read]

    async def event_records(self, records: list[ConsumerRecord]) -> list[Outcome]:
        """Keep records of `pain.events.v1` or `pain.events.backfill.v1` for the patients'
        timelines (first one wins, whichever topic it came from), in one transaction. What the
        classifier refuses (`shared.contract.records.read_record`: the contract, the key, the
        partition of the record's own topic) is refused here too, never kept."""
        read = [
            (record, _read_event(record, self.event_partitions.get(record.topic)))
            for record in records
        ]
        items = [(record, found) for record, found in read if found is not None]
        kept = iter(await self._in_one_transaction(items, _keep_events, False))
        return [Outcome.REFUSED if found is None else next(kept) for _, found in read]

    async def _in_one_transaction(self, items: list, apply, planning: bool) -> list[Outcome]:
        """`apply` all `items` in one transaction. When the database refuses one of them (a
        value it cannot store), the transaction is rolled back and they are applied again one
        by one, each in a savepoint: the refused ones are logged and skipped, never the rest."""
        if not items:
            return []
        async with self.pool.acquire() as connection:
            try:
                async with connection.transaction():
                    if planning:
                        await store.lock_planning(connection)
                    return await apply(connection, items)
            except UNSTORABLE:
                pass
            outcomes: list[Outcome] = []
            async with connection.transaction():
                if planning:
                    await store.lock_planning(connection)
                for item in items:
                    try:
                        async with connection.transaction():  # a savepoint
                            outcomes.extend(await apply(connection, [item]))
                    except UNSTORABLE:
                        record = item[0]
                        log.error(  # never the value: it may hold a patient's data
                            "record_unstorable",
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                        )
                        outcomes.append(Outcome.UNREADABLE)
            return outcomes

    async def _apply_determinations(
        self,
        connection: asyncpg.Connection,
        items: list[tuple[ConsumerRecord, tuple[Determination, store.ReceivedDetermination]]],
    ) -> list[Outcome]:
        """Bring the patients' plans in line with determinations, one after the other in order,
        as if each were applied in a transaction of its own.

        A determination already recorded (by what it is: `ReceivedDetermination.key`) changes
        nothing; any other is recorded, then judged by `follow` against what the plan follows
        at that point (an earlier record of the batch included).
        """
        received = [found for _, (_, found) in items]
        recorded = await store.record_determinations(connection, received)
        patients = list(dict.fromkeys(found.patient_id for found in received))
        current = await store.current_determinations(connection, patients)
        outcomes: list[Outcome] = []
        follows: dict[str, int] = {}
        to_apply: list[tuple[ConsumerRecord, Determination]] = []
        for record, (determination, found) in items:
            row = recorded.pop(found.key, None)  # a repeat later in the batch finds it gone
            if row is None:
                outcomes.append(Outcome.ALREADY_APPLIED)
                continue
            outcome = follow(current.get(found.patient_id), found)
            outcomes.append(outcome)
            if outcome is Outcome.SUPERSEDED:
                continue
            follows[found.patient_id] = row
            current[found.patient_id] = store.Followed(found.determination_id, found.as_of)
            if outcome is Outcome.APPLIED:
                to_apply.append((record, determination))
        if follows:
            await store.set_current_determinations(connection, follows, self.templates.id)
        tasks = await store.tasks_of_patients(
            connection, list(dict.fromkeys(d.patient_id for _, d in to_apply))
        )
        changes = store.Changes(connection)
        today = self.today()
        bookings = store.Bookings(connection)  # one read for the batch, if a plan changes
        for record, determination in to_apply:
            tracing.bind(tracing.continue_trace(tracing.from_headers(record.headers)))
            patient_id = determination.patient_id
            if patient_id not in tasks:  # changed by an earlier determination of this batch
                tasks[patient_id] = await store.patient_tasks(connection, patient_id)
            if await self._apply_determination(
                connection, changes, bookings, determination, tasks[patient_id], today
            ):
                del tasks[patient_id]
        await changes.flush()
        return outcomes

    async def _apply_determination(
        self,
        connection: asyncpg.Connection,
        changes: store.Changes,
        bookings: store.Bookings,
        determination: Determination,
        existing: list[TaskView],
        today: date,
    ) -> bool:
        """Bring one patient's plan in line with a determination; False if nothing changed."""
        patient_id = determination.patient_id
        change = reconcile(
            [ExistingTask(task.key, TaskState(task.state)) for task in existing],
            plan_for(determination, self.templates),
            determination,
        )
        if change.empty:  # most determinations change no plan: nothing to reschedule
            return False
        # One instant per determination, as when each had a transaction (and a now()) of its own.
        at = await connection.fetchval("SELECT clock_timestamp()")
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
                    "created_at": at,
                    "updated_at": at,
                },
            )
            bookings.replace((), (task,))
            await changes.save(task, "created", SYSTEM_ACTOR, spec.reason)
        open_by_key = {task.key: task for task in existing if task.state in OPEN_STATES}
        for key, reason in change.cancel:
            task = open_by_key[key]
            cancelled = await store.update_task(
                connection,
                task.id,
                {"state": TaskState.CANCELLED.value, "cancel_reason": reason},
            )
            bookings.replace((task,), (cancelled,))
            await changes.save(cancelled, "cancelled", SYSTEM_ACTOR, reason, task.state)
        await self._reschedule(connection, changes, bookings, patient_id, today)
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
            changes = store.Changes(connection)
            await changes.save(
                changed,
                action.value,
                actor,
                reason or outcome,
                task.state,
                {"assignee": changed.assignee} if action is TaskAction.REASSIGN else None,
            )
            if action in (TaskAction.COMPLETE, TaskAction.CANCEL, TaskAction.REASSIGN):
                await self._reschedule(
                    connection, changes, store.Bookings(connection), task.patient_id, self.today()
                )
            await changes.flush()
            return await self._task(connection, task.id)

    async def _task(self, connection: asyncpg.Connection, task_id: UUID) -> TaskView:
        row = await connection.fetchrow(
            f"SELECT {store.TASK_COLUMNS} FROM tasks WHERE id = $1", task_id
        )
        return store.task_view(row)

    async def _reschedule(
        self,
        connection: asyncpg.Connection,
        changes: store.Changes,
        bookings: store.Bookings,
        patient_id: str,
        today: date,
    ) -> None:
        """Schedule the patient's open tasks around everyone else's bookings.

        Only this patient's tasks can move: other patients' slots are fixed bookings. What
        moves is told to `bookings`, which the next patient of the transaction is scheduled
        against.
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
            await bookings.excluding(tasks),
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
            bookings.replace((task,), (moved,))
            if slot.date is None:
                reason = f"not scheduled: {slot.problem}"
            else:
                late = " (after its due date)" if slot.late else ""
                reason = f"scheduled for {slot.date.isoformat()}{late}"
            await changes.save(moved, "scheduled", SYSTEM_ACTOR, reason, task.state)


def follow(current: store.Followed | None, found: store.ReceivedDetermination) -> Outcome:
    """What a determination newly recorded does to the plan that follows `current` (None: the
    patient has no plan yet).

    The later instant wins: one as of an earlier instant than `current`'s (a backfill
    determination applied after a newer live one) is SUPERSEDED: kept in the history, not
    followed. Otherwise the plan follows it: it is APPLIED, or ALREADY_APPLIED when its decision
    is the one followed (the same decision re-sent, e.g. by a restarted classifier: no task
    changes). At an equal instant the one applied later is followed.
    """
    if current is None:
        return Outcome.APPLIED
    if found.as_of < current.as_of:
        return Outcome.SUPERSEDED
    if found.determination_id == current.determination_id:
        return Outcome.ALREADY_APPLIED
    return Outcome.APPLIED


# What the database may refuse to store of a record that was read: a NUL in a text, an escape
# jsonb does not take (DataError), a key too long for its index (ProgramLimitExceededError).
UNSTORABLE = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


def _read_determination(
    record: ConsumerRecord,
) -> tuple[Determination, store.ReceivedDetermination] | None:
    """A determination record read and validated, or None (logged, without its content)."""
    try:
        body = json.loads(record.value)
        if not (isinstance(body, dict) and body.keys() >= REQUIRED):
            raise ValueError("not a determination")
        determination = Determination.model_validate(body)
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        # a classifier bug, not a patient's event: say where it is, go on
        log.error(
            "determination_unreadable",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return None
    return determination, store.ReceivedDetermination(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        patient_id=determination.patient_id,
        determination_id=determination.determination_id,
        status=determination.status.value,
        as_of=determination.as_of,
        body=json.dumps(body),
    )


def _read_event(record: ConsumerRecord, partitions: int | None) -> store.ReceivedEvent | None:
    """The event of a record as the classifier reads it, or None when the classifier refuses it
    (and dead-letters it with the reason): logged here by kind and place, never its content."""
    read = read_record(record.key, record.value, record.partition, partitions)
    if isinstance(read, Rejection):
        log.info(
            "event_refused",
            kind=read.kind,
            field=read.field,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        return None
    event, text = read
    return store.ReceivedEvent(
        source=event.source,
        event_id=event.id,
        patient_id=event.patient_id,
        type=event.type,
        time=event.time,
        body=text,
    )


async def _keep_events(
    connection: asyncpg.Connection, items: list[tuple[ConsumerRecord, store.ReceivedEvent]]
) -> list[Outcome]:
    """Keep each event not kept yet; a repeat is already applied when its content is the same,
    a conflict (logged; the first one stays) when not."""
    first: dict[store.EventKey, int] = {}
    for number, (_, event) in enumerate(items):
        first.setdefault(event.key, number)
    kept = await store.keep_events(connection, [items[number][1] for number in first.values()])
    outcomes: list[Outcome | None] = [None] * len(items)
    repeats = []
    for number, (_, event) in enumerate(items):
        if first[event.key] == number and event.key in kept:
            outcomes[number] = Outcome.APPLIED
        else:
            repeats.append(number)
    if repeats:
        same = await store.same_as_kept(connection, [items[number][1] for number in repeats])
        for number, equal in zip(repeats, same, strict=True):
            outcomes[number] = Outcome.ALREADY_APPLIED if equal else Outcome.CONFLICT
            if not equal:
                record = items[number][0]
                log.warning(
                    "event_conflicting",  # the patient's (source, id) kept with other content
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                )
    return outcomes
