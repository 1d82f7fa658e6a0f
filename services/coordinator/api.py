"""The coordinators' HTTP API: tasks, transitions, patients, the task stream and FHIR Task.

Bearer tokens carry a role: `admin` and `coordinator` see and act on every task; a clinician
role (`pain_specialist`, `physical_therapist`, ...) sees and acts on its role's tasks only.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from services.coordinator import store
from services.coordinator.care_plan import IllegalTransition, TaskAction
from services.coordinator.fhir import fhir_task
from services.coordinator.relay import OutboxNotifier
from services.coordinator.service import Coordinator, InvalidAction, TaskNotFound
from services.coordinator.store import TaskView
from services.coordinator.timeline import Timeline
from shared.settings import ApiToken

ALL_TASKS = frozenset({"admin", "coordinator"})
HEARTBEAT_SECONDS = 15.0
PAGE_MAX = 200


class Caller(BaseModel):
    name: str
    role: str

    @property
    def sees_all(self) -> bool:
        return self.role in ALL_TASKS

    def may_see(self, task: TaskView) -> bool:
        return self.sees_all or task.role == self.role


class TaskPage(BaseModel):
    items: list[TaskView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class Completion(BaseModel):
    outcome: str = Field(min_length=1, description="What was done or found")


class Cancellation(BaseModel):
    reason: str = Field(min_length=1)


class Reassignment(BaseModel):
    assignee: str = Field(min_length=1, description="A person of the task's role in the roster")


class AuditEntry(BaseModel):
    """One change of a task: who, when, what, why."""

    at: datetime
    actor: str
    change: str
    from_state: str | None
    to_state: str
    reason: str | None
    details: dict[str, Any]


class DeterminationSummary(BaseModel):
    determination_id: str
    status: str
    as_of: str
    received_at: str


class PatientView(BaseModel):
    patient_id: str
    determination: dict[str, Any]
    history: list[DeterminationSummary]
    templates: str
    tasks: list[TaskView]


def _authenticate(tokens: list[ApiToken]):
    async def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
        scheme, _, presented = (authorization or "").partition(" ")
        found = None
        for token in tokens:  # every token compared, in constant time
            if hmac.compare_digest(presented.encode(), token.token.get_secret_value().encode()):
                found = token
        if scheme.lower() != "bearer" or not presented or found is None:
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        return Caller(name=found.name, role=found.role)

    return caller


def _cursor(task: TaskView) -> str:
    return base64.urlsafe_b64encode(f"{task.due_on.isoformat()}|{task.id}".encode()).decode()


def _parse_cursor(cursor: str) -> tuple[date, UUID]:
    try:
        due_on, task_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return date.fromisoformat(due_on), UUID(task_id)
    except ValueError:
        raise HTTPException(422, "cursor: not a cursor this API gave") from None


def create_router(
    coordinator: Coordinator, notifier: OutboxNotifier, tokens: list[ApiToken]
) -> APIRouter:
    router = APIRouter()
    authenticated = Depends(_authenticate(tokens))

    async def visible_task(task_id: UUID, caller: Caller) -> TaskView:
        row = await coordinator.pool.fetchrow(
            f"SELECT {store.TASK_COLUMNS} FROM tasks WHERE id = $1", task_id
        )
        if row is None:
            raise HTTPException(404, "no such task")
        task = store.task_view(row)
        if not caller.may_see(task):
            raise HTTPException(403, f"this task belongs to the {task.role} role")
        return task

    @router.get("/v1/tasks", response_model=TaskPage, summary="Tasks, filtered and paginated")
    async def list_tasks(
        caller: Caller = authenticated,
        role: str | None = None,
        assignee: str | None = None,
        state: str | None = None,
        patient_id: str | None = None,
        due_before: date | None = None,
        limit: int = Query(50, ge=1, le=PAGE_MAX),
        cursor: str | None = None,
    ) -> TaskPage:
        if not caller.sees_all:
            if role not in (None, caller.role):
                raise HTTPException(403, f"your role sees the {caller.role} tasks only")
            role = caller.role
        conditions, values = [], []
        for column, value in (
            ("role", role),
            ("assignee", assignee),
            ("state", state),
            ("patient_id", patient_id),
        ):
            if value is not None:
                values.append(value)
                conditions.append(f"{column} = ${len(values)}")
        if due_before is not None:
            values.append(due_before)
            conditions.append(f"due_on < ${len(values)}")
        if cursor is not None:
            values.extend(_parse_cursor(cursor))
            conditions.append(f"(due_on, id) > (${len(values) - 1}, ${len(values)})")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await coordinator.pool.fetch(
            f"SELECT {store.TASK_COLUMNS} FROM tasks {where} ORDER BY due_on, id LIMIT {limit + 1}",
            *values,
        )
        items = [store.task_view(row) for row in rows[:limit]]
        return TaskPage(items=items, next_cursor=_cursor(items[-1]) if len(rows) > limit else None)

    @router.get("/v1/tasks/{task_id}", response_model=TaskView, summary="One task")
    async def get_task(task_id: UUID, caller: Caller = authenticated) -> TaskView:
        return await visible_task(task_id, caller)

    @router.get(
        "/v1/tasks/{task_id}/history",
        response_model=list[AuditEntry],
        summary="The task's audit trail: who changed what, when and why",
    )
    async def task_history(task_id: UUID, caller: Caller = authenticated) -> list[AuditEntry]:
        task = await visible_task(task_id, caller)
        rows = await coordinator.pool.fetch(
            """SELECT at, actor, change, from_state, to_state, reason, details
               FROM task_audit WHERE task_id = $1 ORDER BY id""",
            task.id,
        )
        return [AuditEntry(**{**dict(row), "details": json.loads(row["details"])}) for row in rows]

    async def act(task_id: UUID, caller: Caller, action: TaskAction, **details) -> TaskView:
        task = await visible_task(task_id, caller)
        if action in (TaskAction.CANCEL, TaskAction.REASSIGN) and not caller.sees_all:
            raise HTTPException(403, f"only a coordinator may {action.value} a task")
        try:
            return await coordinator.act(task.id, action, caller.name, **details)
        except IllegalTransition as illegal:
            raise HTTPException(409, str(illegal)) from None
        except InvalidAction as invalid:
            raise HTTPException(422, str(invalid)) from None
        except TaskNotFound:
            raise HTTPException(404, "no such task") from None

    @router.post("/v1/tasks/{task_id}/accept", response_model=TaskView, summary="Accept")
    async def accept(task_id: UUID, caller: Caller = authenticated) -> TaskView:
        return await act(task_id, caller, TaskAction.ACCEPT)

    @router.post("/v1/tasks/{task_id}/start", response_model=TaskView, summary="Start")
    async def start(task_id: UUID, caller: Caller = authenticated) -> TaskView:
        return await act(task_id, caller, TaskAction.START)

    @router.post("/v1/tasks/{task_id}/complete", response_model=TaskView, summary="Complete")
    async def complete(task_id: UUID, body: Completion, caller: Caller = authenticated) -> TaskView:
        return await act(task_id, caller, TaskAction.COMPLETE, outcome=body.outcome)

    @router.post("/v1/tasks/{task_id}/cancel", response_model=TaskView, summary="Cancel")
    async def cancel(task_id: UUID, body: Cancellation, caller: Caller = authenticated) -> TaskView:
        return await act(task_id, caller, TaskAction.CANCEL, reason=body.reason)

    @router.post("/v1/tasks/{task_id}/reassign", response_model=TaskView, summary="Reassign")
    async def reassign(
        task_id: UUID, body: Reassignment, caller: Caller = authenticated
    ) -> TaskView:
        return await act(task_id, caller, TaskAction.REASSIGN, assignee=body.assignee)

    @router.get(
        "/v1/patients/{patient_id}",
        response_model=PatientView,
        summary="A patient's current determination, its history, the care plan and its tasks",
    )
    async def patient(patient_id: str, caller: Caller = authenticated) -> PatientView:
        pool = coordinator.pool
        plan = await pool.fetchrow(
            """SELECT p.templates, d.body FROM care_plans p
               JOIN determinations d ON d.id = p.current_determination
               WHERE p.patient_id = $1""",
            patient_id,
        )
        if plan is None:
            raise HTTPException(404, "no determination for this patient")
        history = await pool.fetch(
            """SELECT DISTINCT ON (determination_id)
                      determination_id, status, as_of, received_at, id
               FROM determinations WHERE patient_id = $1 ORDER BY determination_id, id""",
            patient_id,
        )
        tasks = await store.patient_tasks(pool, patient_id)
        return PatientView(
            patient_id=patient_id,
            determination=json.loads(plan["body"]),
            history=[
                DeterminationSummary(
                    determination_id=row["determination_id"],
                    status=row["status"],
                    as_of=row["as_of"].isoformat(),
                    received_at=row["received_at"].isoformat(),
                )
                for row in sorted(history, key=lambda row: (row["as_of"], row["id"]))
            ],
            templates=plan["templates"],
            tasks=[task for task in tasks if caller.may_see(task)],
        )

    @router.get(
        "/v1/patients/{patient_id}/timeline",
        response_model=Timeline,
        summary="Scores, trials with dose steps, side effects and status changes, for plotting",
    )
    async def timeline(patient_id: str, caller: Caller = authenticated) -> Timeline:
        found = await coordinator.timeline(patient_id, datetime.now(UTC))
        if found is None:
            raise HTTPException(404, "nothing is known of this patient")
        return found

    @router.get(
        "/v1/stream",
        summary="Task changes as server-sent events, resumable with Last-Event-ID",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream(
        request: Request,
        caller: Caller = authenticated,
        role: str | None = None,
        last_event_id: Annotated[int | None, Header()] = None,
        since: Annotated[int | None, Query(description="Like Last-Event-ID")] = None,
    ) -> StreamingResponse:
        if not caller.sees_all:
            if role not in (None, caller.role):
                raise HTTPException(403, f"your role sees the {caller.role} tasks only")
            role = caller.role
        after = last_event_id if last_event_id is not None else since
        if after is None:  # a new subscriber starts with what happens from now on
            after = await coordinator.pool.fetchval("SELECT value FROM outbox_counter")
        return StreamingResponse(
            _events(request, coordinator.pool, notifier, after, role),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/fhir/r4/Task/{task_id}", summary="A task as a FHIR R4 Task resource")
    async def fhir(task_id: UUID, caller: Caller = authenticated):
        from fastapi.responses import JSONResponse

        task = await visible_task(task_id, caller)
        return JSONResponse(fhir_task(task), media_type="application/fhir+json")

    return router


async def _events(
    request: Request, pool: asyncpg.Pool, notifier: OutboxNotifier, after: int, role: str | None
) -> AsyncIterator[str]:
    """Every change after `after`, in sequence order, then each new one as it is committed.

    Reading committed rows `sequence > after` never skips one: sequences are taken under a row
    lock held to commit, so a smaller sequence can never commit after a larger one is visible.
    """
    yield "retry: 2000\n\n"
    quiet = 0.0
    while not await request.is_disconnected():
        rows = await pool.fetch(
            """SELECT sequence, change, payload FROM outbox
               WHERE sequence > $1 AND ($2::text IS NULL OR role = $2)
               ORDER BY sequence LIMIT 500""",
            after,
            role,
        )
        for row in rows:
            yield f"id: {row['sequence']}\nevent: {row['change']}\ndata: {row['payload']}\n\n"
            after = row["sequence"]
        if rows:
            quiet = 0.0
            continue
        await notifier.wait()
        quiet += 1.0
        if quiet >= HEARTBEAT_SECONDS:
            quiet = 0.0
            yield ": keep-alive\n\n"
