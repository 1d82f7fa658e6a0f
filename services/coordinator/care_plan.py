"""The care plan a determination calls for, how it changes, and a task's life.

`plan_for` is a pure function of a determination and the templates. `reconcile` compares the
plan wanted now with the tasks a patient already has: it adds what is newly called for and
cancels open tasks no longer called for. Nothing is ever deleted, and a completed task stays
completed: the care it stands for was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from services.coordinator.templates import (
    NO_CLASSIFICATION,
    PlanTemplates,
    Priority,
    Role,
    TaskTemplate,
)
from shared.contract import Determination, Status


@dataclass(frozen=True)
class TaskSpec:
    """One task a determination calls for, with the one-line reason it is called for."""

    key: str
    title: str
    description: str
    role: Role
    priority: Priority
    due_days: int
    prerequisites: tuple[str, ...]
    reason: str


def plan_for(determination: Determination, templates: PlanTemplates) -> list[TaskSpec]:
    """The tasks `determination` calls for under `templates`, in the templates' order.

    A task's prerequisites are those of its template that are in this plan too; a prerequisite
    not called for is looked through to its own prerequisites, so that the order the templates
    set between the tasks that remain is kept.
    """
    called = [task for task in templates.tasks if _applies(task, determination)]
    in_plan = {task.key for task in called}
    by_key = {task.key: task for task in templates.tasks}
    return [
        TaskSpec(
            key=task.key,
            title=task.title,
            description=task.description,
            role=task.role,
            priority=task.priority,
            due_days=task.due_days,
            prerequisites=_prerequisites_in_plan(task, in_plan, by_key),
            reason=_reason(task, determination),
        )
        for task in called
    ]


def _classification(determination: Determination) -> str:
    if determination.classification is None:
        return NO_CLASSIFICATION
    return determination.classification.value


def _classified(determination: Determination) -> str:
    if determination.classification is None:
        return "no classification"
    return f"classification is {determination.classification.value}"


def _applies(task: TaskTemplate, determination: Determination) -> bool:
    when = task.when
    if determination.status not in when.statuses:
        return False
    if when.classifications and _classification(determination) not in when.classifications:
        return False
    if when.missing and not set(when.missing) & set(determination.missing_assessments):
        return False
    if when.trial_outcomes:
        outcomes = {trial.outcome for trial in determination.trials}
        return bool(set(when.trial_outcomes) & outcomes)
    return True


def _prerequisites_in_plan(
    task: TaskTemplate, in_plan: set[str], by_key: dict[str, TaskTemplate]
) -> tuple[str, ...]:
    found: list[str] = []
    pending = list(task.prerequisites)
    seen: set[str] = set()
    while pending:
        key = pending.pop(0)
        if key in seen:
            continue
        seen.add(key)
        if key in in_plan:
            found.append(key)
        else:
            pending.extend(by_key[key].prerequisites)
    return tuple(found)


def _reason(task: TaskTemplate, determination: Determination) -> str:
    when = task.when
    parts: list[str] = []
    if when.missing:
        missing = [part.value for part in determination.missing_assessments if part in when.missing]
        parts.append(f"assessment incomplete: {', '.join(missing)} missing")
    for outcome in when.trial_outcomes:
        drugs = dict.fromkeys(
            trial.drug for trial in determination.trials if trial.outcome is outcome
        )
        if drugs:
            trials = "trials" if len(drugs) > 1 else "trial"
            parts.append(f"{outcome.value} {trials} of {', '.join(drugs)}")
    if not parts:
        parts.append(f"status is {determination.status.value}")
    if when.classifications:
        parts.append(_classified(determination))
    return "; ".join(parts)


def situation(determination: Determination) -> str:
    """The determination in the words a cancelled task's reason uses, e.g. `status is responding`.

    For the refractory statuses it adds what the templates choose by: the classification, and the
    missing assessment parts of a suspected case.
    """
    text = f"status is {determination.status.value}"
    if determination.status is Status.REFRACTORY_CONFIRMED:
        text += f", {_classified(determination)}"
    elif determination.status is Status.REFRACTORY_SUSPECTED:
        missing = ", ".join(part.value for part in determination.missing_assessments)
        text += f", missing {missing}" if missing else ", nothing missing"
        text += f", {_classified(determination)}"
    return text


class TaskState(StrEnum):
    """Where a task is in its life; `completed` and `cancelled` are final."""

    PROPOSED = "proposed"
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN_STATES = frozenset({TaskState.PROPOSED, TaskState.ACCEPTED, TaskState.IN_PROGRESS})


@dataclass(frozen=True)
class ExistingTask:
    """A task the patient already has, as far as reconciling the plan needs to know it."""

    key: str
    state: TaskState

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TaskState(self.state))


@dataclass(frozen=True)
class PlanChange:
    """What to do to a patient's tasks: tasks to create, and open tasks to cancel with a reason."""

    add: list[TaskSpec] = field(default_factory=list)
    cancel: list[tuple[str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the plan is already what the determination calls for."""
        return not self.add and not self.cancel


def reconcile(
    existing: Sequence[ExistingTask],
    wanted: Sequence[TaskSpec],
    determination: Determination | None = None,
) -> PlanChange:
    """The change that turns the `existing` tasks into the `wanted` plan.

    Adds each wanted task with no open or completed task of its key (a cancelled one is created
    anew), in the order wanted. Cancels each open task no longer wanted, once per key, by key;
    the reason names `determination` (see `situation`) when given. Completed and cancelled tasks
    are never touched, and an open task still wanted is kept as it is.
    """
    kept = {task.key for task in existing if task.state is not TaskState.CANCELLED}
    wanted_keys = {spec.key for spec in wanted}
    why = situation(determination) if determination is not None else "the plan changed"
    unwanted = {
        task.key for task in existing if task.state in OPEN_STATES and task.key not in wanted_keys
    }
    return PlanChange(
        add=[spec for spec in wanted if spec.key not in kept],
        cancel=[(key, f"no longer called for: {why}") for key in sorted(unwanted)],
    )


class TaskAction(StrEnum):
    """What a team member can do to a task."""

    ACCEPT = "accept"
    START = "start"
    COMPLETE = "complete"
    CANCEL = "cancel"
    REASSIGN = "reassign"


TRANSITIONS: dict[tuple[TaskState, TaskAction], TaskState] = {
    (TaskState.PROPOSED, TaskAction.ACCEPT): TaskState.ACCEPTED,
    (TaskState.ACCEPTED, TaskAction.START): TaskState.IN_PROGRESS,
    (TaskState.IN_PROGRESS, TaskAction.COMPLETE): TaskState.COMPLETED,
    (TaskState.PROPOSED, TaskAction.CANCEL): TaskState.CANCELLED,
    (TaskState.ACCEPTED, TaskAction.CANCEL): TaskState.CANCELLED,
    (TaskState.IN_PROGRESS, TaskAction.CANCEL): TaskState.CANCELLED,
    # Reassigning changes who, not where the task is.
    (TaskState.PROPOSED, TaskAction.REASSIGN): TaskState.PROPOSED,
    (TaskState.ACCEPTED, TaskAction.REASSIGN): TaskState.ACCEPTED,
    (TaskState.IN_PROGRESS, TaskAction.REASSIGN): TaskState.IN_PROGRESS,
}

_WHAT_NEXT: dict[tuple[TaskState, TaskAction], str] = {
    (TaskState.PROPOSED, TaskAction.START): "accept it first",
    (TaskState.PROPOSED, TaskAction.COMPLETE): "accept and start it first",
    (TaskState.ACCEPTED, TaskAction.COMPLETE): "start it first",
    (TaskState.ACCEPTED, TaskAction.ACCEPT): "it is accepted already",
    (TaskState.IN_PROGRESS, TaskAction.ACCEPT): "it is under way already",
    (TaskState.IN_PROGRESS, TaskAction.START): "it is under way already",
}

_FINAL: dict[TaskState, str] = {
    TaskState.COMPLETED: "it is closed; the care it stands for was given",
    TaskState.CANCELLED: "it is closed; a new task is created if it is called for again",
}


class IllegalTransition(ValueError):
    """An action a task's state does not allow; the message says why and what to do instead."""


def transition(state: TaskState | str, action: TaskAction | str) -> TaskState:
    """The state a task in `state` moves to by `action`; IllegalTransition if it cannot."""
    if state not in set(TaskState):
        raise IllegalTransition(f"`{state}` is not a task state: one of {', '.join(TaskState)}")
    if action not in set(TaskAction):
        raise IllegalTransition(f"`{action}` is not an action: one of {', '.join(TaskAction)}")
    state, action = TaskState(state), TaskAction(action)
    moved = TRANSITIONS.get((state, action))
    if moved is None:
        why = _FINAL.get(state) or _WHAT_NEXT[(state, action)]
        raise IllegalTransition(f"cannot {action.value} a task that is {state.value}: {why}")
    return moved
