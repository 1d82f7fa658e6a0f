"""Determinations and scheduling tasks as the coordinator's tests need them, built in one line."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, date, datetime

from services.coordinator.care_plan import TaskState
from services.coordinator.scheduling import Person, Roster, SchedulingTask
from services.coordinator.templates import Priority, Role
from shared.contract import (
    AssessmentPart,
    Classification,
    Determination,
    DoseUnit,
    Status,
    Trial,
    TrialOutcome,
)

AS_OF = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
MONDAY = date(2025, 3, 3)
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


def trial(drug: str, outcome: TrialOutcome, trial_id: str | None = None) -> Trial:
    return Trial(
        trial_id=trial_id or f"trial-{drug}",
        drug=drug,
        in_formulary=True,
        drug_class=None,
        started_at=datetime(2024, 6, 1, tzinfo=UTC),
        stopped_at=None,
        stop_reason=None,
        daily_dose=300,
        dose_unit=DoseUnit.MG,
        minimum_dose=1200,
        minimum_dose_unit=DoseUnit.MG,
        minimum_days=28,
        adequate_from=None,
        adequate_until=None,
        baseline=None,
        on_treatment=None,
        reduction=None,
        outcome=outcome,
    )


def determination(
    status: Status,
    classification: Classification | None = None,
    missing: Sequence[AssessmentPart] = (),
    trials: Sequence[Trial] = (),
) -> Determination:
    sample = Determination(
        patient_id="patient-coordinator-test",
        status=status,
        as_of=AS_OF,
        policy="default-v1",
        pain_start=date(2023, 1, 1),
        pain_days=792,
        current_pain=7,
        classification=classification,
        failed_drugs=[],
        failed_classes=[],
        combination_failed=False,
        criteria="default",
        criteria_met=status in (Status.REFRACTORY_SUSPECTED, Status.REFRACTORY_CONFIRMED),
        missing_assessments=list(missing),
        trials=list(trials),
        combinations=[],
        reasons=[],
        evidence_event_ids=[],
        determination_id="unidentified",
    )
    return identified(sample)


def identified(sample: Determination) -> Determination:
    """The determination with an id of its content: to the coordinator an id is opaque, the same
    decision has the same one and another decision another (the classifier derives its own)."""
    content = sample.model_dump_json(exclude={"determination_id", "as_of"})
    return sample.model_copy(
        update={"determination_id": hashlib.sha256(content.encode()).hexdigest()}
    )


def confirmed(classification: Classification) -> Determination:
    return determination(Status.REFRACTORY_CONFIRMED, classification)


def suspected(
    *missing: AssessmentPart,
    classification: Classification | None = None,
    trials: Sequence[Trial] = (),
) -> Determination:
    return determination(Status.REFRACTORY_SUSPECTED, classification, missing, trials)


def person(
    person_id: str,
    role: Role,
    weekly_capacity: int = 10,
    working_days: Sequence[str] = WEEKDAYS,
) -> Person:
    return Person(
        id=person_id,
        name=person_id.replace("-", " ").title(),
        role=role,
        weekly_capacity=weekly_capacity,
        working_days=list(working_days),
    )


def roster(*people: Person) -> Roster:
    return Roster(id="test-roster", people=list(people))


def task(
    task_id: str,
    role: Role = Role.PAIN_SPECIALIST,
    *,
    priority: Priority = Priority.ROUTINE,
    created: date = MONDAY,
    due_days: int = 28,
    prerequisites: Sequence[str] = (),
    state: TaskState = TaskState.PROPOSED,
    assignee: str | None = None,
    done_on: date | None = None,
) -> SchedulingTask:
    return SchedulingTask(
        task_id=task_id,
        role=role,
        priority=priority,
        created=created,
        due_days=due_days,
        prerequisites=tuple(prerequisites),
        state=state,
        assignee=assignee,
        done_on=done_on,
    )
