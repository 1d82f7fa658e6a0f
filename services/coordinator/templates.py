"""Care-plan templates as a versioned, validated data file.

The code holds the rule (a template applies when its `when` matches a determination); the file
under `plans/` holds which tasks a refractory-pain patient gets, for whom, how soon and in what
order. `load_templates()` returns `default-v1`; a changed plan needs a new file and a new id.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from shared.contract import AssessmentPart, Classification, Status, TrialOutcome
from shared.data_files import load_data_file

PLANS = Path(__file__).parent / "plans"
DEFAULT_TEMPLATES_PATH = PLANS / "default-v1.toml"

NO_CLASSIFICATION = "none"

Key = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Role(StrEnum):
    """A member of the multidisciplinary pain team a task is for."""

    PAIN_SPECIALIST = "pain_specialist"
    PHYSICAL_THERAPIST = "physical_therapist"
    PAIN_PSYCHOLOGIST = "pain_psychologist"
    PHARMACIST = "pharmacist"
    INTERVENTIONALIST = "interventionalist"
    CARE_COORDINATOR = "care_coordinator"


class Priority(StrEnum):
    """How soon a task must be acted on: the FHIR Task priorities, least pressing first."""

    ROUTINE = "routine"
    URGENT = "urgent"
    ASAP = "asap"
    STAT = "stat"


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Data):
    """The determinations a task is called for by.

    Every condition given must hold; within one condition, any listed value will do. An empty
    list is no condition, so `classifications = []` means any classification (or none).
    """

    statuses: list[Status] = Field(min_length=1)
    classifications: list[str] = []
    missing: list[AssessmentPart] = []
    trial_outcomes: list[TrialOutcome] = []

    @field_validator("classifications")
    @classmethod
    def _known_classifications(cls, values: list[str]) -> list[str]:
        known = [c.value for c in Classification] + [NO_CLASSIFICATION]
        for value in values:
            if value not in known:
                raise ValueError(f"`{value}` is not one of {', '.join(known)}")
        return values


class TaskTemplate(_Data):
    """One task of a care plan: what, for whom, how soon, after what, and when it is called for."""

    key: Key
    title: Text
    description: Text
    role: Role
    priority: Priority = Priority.ROUTINE
    due_days: NonNegativeInt
    prerequisites: list[Key] = []
    when: When


class PlanTemplates(_Data):
    """A complete, validated set of care-plan templates, in the order tasks are listed in a plan."""

    id: Name
    tasks: list[TaskTemplate] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> PlanTemplates:
        by_key: dict[str, TaskTemplate] = {}
        for index, task in enumerate(self.tasks):
            if by_key.setdefault(task.key, task) is not task:
                raise ValueError(f"tasks[{index}].key: `{task.key}` is listed twice")
        for index, task in enumerate(self.tasks):
            for key in task.prerequisites:
                if key not in by_key:
                    raise ValueError(f"tasks[{index}].prerequisites: `{key}` is not a task key")
        cycle = _prerequisite_cycle(self.tasks)
        if cycle:
            raise ValueError(f"tasks: prerequisite cycle {' -> '.join(cycle)}")
        for index, task in enumerate(self.tasks):
            for key in task.prerequisites:
                # A dependant starts the day after its prerequisite at the earliest, so one due
                # on or before its prerequisite would be late in every plan.
                if task.due_days <= by_key[key].due_days:
                    raise ValueError(
                        f"tasks[{index}].due_days: {task.due_days} is not after prerequisite "
                        f"`{key}` (due_days {by_key[key].due_days})"
                    )
        return self

    def task(self, key: str) -> TaskTemplate:
        """The template of a task key; KeyError for a key these templates do not have."""
        for task in self.tasks:
            if task.key == key:
                return task
        raise KeyError(key)


def _prerequisite_cycle(tasks: list[TaskTemplate]) -> list[str]:
    """The keys of one prerequisite cycle, first key repeated at the end; empty when acyclic."""
    prerequisites = {task.key: task.prerequisites for task in tasks}
    finished: set[str] = set()
    path: list[str] = []

    def visit(key: str) -> list[str]:
        if key in path:
            return [*path[path.index(key) :], key]
        if key in finished:
            return []
        path.append(key)
        for prerequisite in prerequisites[key]:
            cycle = visit(prerequisite)
            if cycle:
                return cycle
        path.pop()
        finished.add(key)
        return []

    for task in tasks:
        cycle = visit(task.key)
        if cycle:
            return cycle
    return []


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file, the field and why."""


def load_templates(path: Path | str | None = None) -> PlanTemplates:
    """Load and validate a care-plan template file; without a path, `default-v1`.

    Raises TemplateError for a missing, unreadable or invalid file, naming each bad field; unknown
    fields, unknown prerequisite keys and prerequisite cycles are refused.
    """
    path = Path(path) if path is not None else DEFAULT_TEMPLATES_PATH
    return load_data_file(path, PlanTemplates, TemplateError, "care-plan templates")
