"""When, and by whom, each open care-plan task is done: the team's calendar as a pure function.

The team is configuration (`plans/roster-default.toml`): who holds which role, how many tasks each
takes on in an ISO week, and on which days. `schedule` places tasks, most pressing first, on the
earliest day their prerequisites, the person's working days and weekly capacity allow. It is
deterministic: the same tasks, roster, day and bookings give the same schedule, whatever their
order. Re-running it as tasks finish (or finish late) moves what waits on them.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, StringConstraints, model_validator

from services.coordinator.care_plan import OPEN_STATES, TaskState
from services.coordinator.templates import PLANS, Priority, Role
from shared.data_files import load_data_file

DEFAULT_ROSTER_PATH = PLANS / "roster-default.toml"

# How far ahead a task is looked for a free day before it is reported as having none.
HORIZON_DAYS = 366

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Week = tuple[int, int]
"""An ISO week: (ISO year, ISO week number), as `iso_week` gives it."""

PersonId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]

# FHIR's order, most pressing first.
_URGENCY = {Priority.STAT: 0, Priority.ASAP: 1, Priority.URGENT: 2, Priority.ROUTINE: 3}


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Person(_Data):
    """A member of the pain team and the share of care-plan work they take on."""

    id: PersonId
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    role: Role
    weekly_capacity: PositiveInt
    working_days: list[Weekday] = Field(min_length=1)

    @model_validator(mode="after")
    def _days_once(self) -> Person:
        if len(set(self.working_days)) != len(self.working_days):
            raise ValueError("working_days: a day is listed twice")
        return self

    def works_on(self, day: date) -> bool:
        """True when `day` is one of this person's working days."""
        return WEEKDAYS[day.weekday()] in self.working_days


class Roster(_Data):
    """The pain team, as configured for a site."""

    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    people: list[Person] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_once(self) -> Roster:
        seen: set[str] = set()
        for index, person in enumerate(self.people):
            if person.id in seen:
                raise ValueError(f"people[{index}].id: `{person.id}` is listed twice")
            seen.add(person.id)
        return self

    def person(self, person_id: str) -> Person | None:
        """The person with this id, or None when the roster has nobody by that id."""
        return next((person for person in self.people if person.id == person_id), None)


class RosterError(ValueError):
    """A roster file that cannot be used; the message names the file, the field and why."""


def load_roster(path: Path | str | None = None) -> Roster:
    """Load and validate a roster file (TOML); without a path, `roster-default`.

    Raises RosterError for a missing, unreadable or invalid file, naming each bad field.
    """
    path = Path(path) if path is not None else DEFAULT_ROSTER_PATH
    return load_data_file(path, Roster, RosterError, "roster")


def iso_week(day: date) -> Week:
    """The ISO week `day` falls in, the unit weekly capacity and bookings are counted in."""
    year, week, _ = day.isocalendar()
    return (year, week)


@dataclass(frozen=True)
class SchedulingTask:
    """A care-plan task as scheduling sees it.

    `due_days` counts from `created`; `prerequisites` are task ids; `assignee` is a person id that
    is kept when given; `done_on` is the day a completed task was done, and is required for it.
    """

    task_id: str
    role: Role
    priority: Priority
    created: date
    due_days: int
    prerequisites: tuple[str, ...] = ()
    state: TaskState = TaskState.PROPOSED
    assignee: str | None = None
    done_on: date | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "state", TaskState(self.state))
        object.__setattr__(self, "prerequisites", tuple(self.prerequisites))
        if self.state is TaskState.COMPLETED and self.done_on is None:
            raise ValueError(f"task {self.task_id}: a completed task needs done_on")

    @property
    def due(self) -> date:
        """The day the task is due."""
        return self.created + timedelta(days=self.due_days)


@dataclass(frozen=True)
class Slot:
    """When and by whom a task is done, or, with `date` and `assignee` None, why it cannot be.

    `late` is True when the slot is after the task's due date: capacity, prerequisites or a due
    date already past left no earlier day.
    """

    date: date | None
    assignee: str | None
    late: bool
    problem: str | None = None

    @property
    def scheduled(self) -> bool:
        """True when the task has a day and a person."""
        return self.date is not None


def schedule(
    tasks: Sequence[SchedulingTask],
    roster: Roster,
    today: date,
    booked: Mapping[tuple[str, Week], int] | None = None,
) -> dict[str, Slot]:
    """A slot for every open task (proposed, accepted, in progress), by task id.

    - Completed and cancelled tasks get no slot; a completed prerequisite holds its dependants
      until its `done_on`, a cancelled one holds nothing.
    - An open task is placed on or after `today` and the day after each open prerequisite's slot.
    - Most pressing first: priority (stat, asap, urgent, then routine), then due date, then
      task id; a prerequisite is as pressing as the most pressing task waiting on it.
    - Each task takes the earliest day on which someone can do it: its fixed assignee, otherwise
      whoever of its role works that day and has the most capacity left in that ISO week (tie:
      person id). A person never has more slots in a week than `weekly_capacity`, counting
      `booked`: slots already taken by (person id, `iso_week`) for work not among `tasks`.
    - A task nobody can do (no one of its role, an assignee not in the roster, no free day within
      `HORIZON_DAYS`) gets a Slot with no date and no assignee and a `problem`; so does every task
      waiting on it, or on a prerequisite that is not among `tasks`.

    Raises ValueError when two tasks share an id.
    """
    by_id: dict[str, SchedulingTask] = {}
    for task in tasks:
        if by_id.setdefault(task.task_id, task) is not task:
            raise ValueError(f"task {task.task_id} is given twice")
    booked = booked or {}
    open_ids = sorted(task_id for task_id, task in by_id.items() if task.state in OPEN_STATES)

    earliest = {task_id: today for task_id in open_ids}
    waiting_on: dict[str, set[str]] = {task_id: set() for task_id in open_ids}
    dependants: dict[str, list[str]] = {task_id: [] for task_id in open_ids}
    slots: dict[str, Slot] = {}
    for task_id in open_ids:
        for prerequisite in sorted(set(by_id[task_id].prerequisites)):
            before = by_id.get(prerequisite)
            if before is None:
                slots[task_id] = _unscheduled(f"waits on {prerequisite}, which is not a task given")
            elif before.state is TaskState.COMPLETED and before.done_on is not None:
                earliest[task_id] = max(earliest[task_id], before.done_on)
            elif before.state in OPEN_STATES:
                waiting_on[task_id].add(prerequisite)
                dependants[prerequisite].append(task_id)

    pressing = _pressing(open_ids, by_id, dependants)
    used: dict[tuple[str, Week], int] = dict(booked)
    ready = [(pressing[task_id], task_id) for task_id in open_ids if not waiting_on[task_id]]
    heapq.heapify(ready)
    while ready:
        _, task_id = heapq.heappop(ready)
        if task_id in slots:
            continue
        slot = _place(by_id[task_id], earliest[task_id], roster, used)
        slots[task_id] = slot
        if slot.date is None or slot.assignee is None:
            continue
        week_key = (slot.assignee, iso_week(slot.date))
        used[week_key] = used.get(week_key, 0) + 1
        for dependant in dependants[task_id]:
            earliest[dependant] = max(earliest[dependant], slot.date + timedelta(days=1))
            waiting_on[dependant].discard(task_id)
            if not waiting_on[dependant]:
                heapq.heappush(ready, (pressing[dependant], dependant))

    for task_id in open_ids:
        if task_id not in slots:
            # Waiting on a task with no slot, directly or through a prerequisite cycle.
            blocker = min(waiting_on[task_id])
            slots[task_id] = _unscheduled(f"waits on {blocker}, which has no slot")
    return {task_id: slots[task_id] for task_id in open_ids}


def _pressing(
    open_ids: list[str], by_id: dict[str, SchedulingTask], dependants: dict[str, list[str]]
) -> dict[str, tuple[int, date]]:
    """Each open task's (urgency, due date), raised to that of the most pressing task waiting on
    it, so that a routine prerequisite of an urgent task is not left behind other routine work."""
    pressing: dict[str, tuple[int, date]] = {}
    visiting: set[str] = set()

    def visit(task_id: str) -> tuple[int, date]:
        if task_id in pressing:
            return pressing[task_id]
        task = by_id[task_id]
        key = (_URGENCY[task.priority], task.due)
        visiting.add(task_id)
        for dependant in dependants[task_id]:
            if dependant not in visiting:
                key = min(key, visit(dependant))
        visiting.discard(task_id)
        pressing[task_id] = key
        return key

    for task_id in open_ids:
        visit(task_id)
    return pressing


def _place(
    task: SchedulingTask, earliest: date, roster: Roster, used: Mapping[tuple[str, Week], int]
) -> Slot:
    if task.assignee is not None:
        person = roster.person(task.assignee)
        if person is None:
            return _unscheduled(f"assignee {task.assignee} is not in the roster")
        candidates = [person]
    else:
        candidates = sorted(
            (person for person in roster.people if person.role is task.role),
            key=lambda person: person.id,
        )
        if not candidates:
            return _unscheduled(f"no {task.role.value} in the roster")
    for offset in range(HORIZON_DAYS):
        day = earliest + timedelta(days=offset)
        week = iso_week(day)
        free = [
            (person.weekly_capacity - used.get((person.id, week), 0), person.id)
            for person in candidates
            if person.works_on(day)
        ]
        free = [(left, person_id) for left, person_id in free if left > 0]
        if free:
            _, person_id = min(free, key=lambda choice: (-choice[0], choice[1]))
            return Slot(date=day, assignee=person_id, late=day > task.due)
    return _unscheduled(f"no free day within {HORIZON_DAYS} days of {earliest.isoformat()}")


def _unscheduled(problem: str) -> Slot:
    return Slot(date=None, assignee=None, late=False, problem=problem)
