"""A patient's timeline for the dashboard: scores, trials with dose steps, side effects, statuses.

Built with the contract-level code the classifier decides with (`shared.contract.evidence`
drops duplicates and retracted events; `shared.contract.trials` rebuilds each trial's dose
steps), so the plot shows exactly the evidence the determinations were made from. What takes the
policy comes from the current determination: each trial's outcome and the name it is judged
under (its formulary name); a trial the determination does not know yet (its events came first)
shows the name sent, folded, and no outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from shared.contract import Event, ScoreRecorded, SideEffectReported, Trial
from shared.contract.evidence import events_as_of
from shared.contract.trials import fold_drug_name, trial_courses


class ScorePoint(BaseModel):
    time: datetime
    score: float  # on the 0-10 scale
    instrument: str


class DoseStepView(BaseModel):
    """The daily dose from `from` until the next step or the trial's end."""

    start: datetime = Field(serialization_alias="from")
    daily_dose: float
    dose_unit: str


class TrialBar(BaseModel):
    trial_id: str
    drug: str
    started_at: datetime
    stopped_at: datetime | None
    stop_reason: str | None
    outcome: str | None
    doses: list[DoseStepView]


class SideEffectMark(BaseModel):
    time: datetime
    effect: str
    severity: str
    intolerable: bool
    trial_id: str | None
    drug: str | None


class StatusChange(BaseModel):
    as_of: datetime
    received_at: datetime
    status: str
    determination_id: str


class Timeline(BaseModel):
    patient_id: str
    scores: list[ScorePoint]
    trials: list[TrialBar]
    side_effects: list[SideEffectMark]
    determinations: list[StatusChange]


def status_changes(determinations: Iterable[StatusChange]) -> list[StatusChange]:
    """The determinations at which the status changed, in the order given (the coordinator's:
    by `as_of`, then by arrival; one superseded by a later instant, applied after it, takes its
    place by its instant)."""
    changes: list[StatusChange] = []
    for determination in determinations:
        if not changes or changes[-1].status != determination.status:
            changes.append(determination)
    return changes


def build_timeline(
    patient_id: str,
    events: Sequence[Event],
    as_of: datetime,
    judged: Sequence[Trial],
    determinations: Iterable[StatusChange],
) -> Timeline:
    """The timeline as of `as_of`; `judged`: the current determination's trials."""
    evidence = events_as_of(events, as_of)
    by_id = {trial.trial_id: trial for trial in judged}
    return Timeline(
        patient_id=patient_id,
        scores=[
            ScorePoint(time=e.time, score=e.data.score_0_10, instrument=e.data.instrument.value)
            for e in evidence
            if isinstance(e, ScoreRecorded)
        ],
        trials=[
            TrialBar(
                trial_id=course.trial_id,
                drug=(
                    by_id[course.trial_id].drug
                    if course.trial_id in by_id
                    else fold_drug_name(course.start.data.drug)
                ),
                started_at=course.started_at,
                stopped_at=course.stopped_at,
                stop_reason=course.stop_reason.value if course.stop_reason else None,
                outcome=by_id[course.trial_id].outcome.value if course.trial_id in by_id else None,
                doses=[
                    DoseStepView(start=step.at, daily_dose=step.daily_dose, dose_unit=step.unit)
                    for step in course.doses
                ],
            )
            for course in trial_courses(evidence, as_of)
        ],
        side_effects=[
            SideEffectMark(
                time=e.time,
                effect=e.data.effect,
                severity=e.data.severity.value,
                intolerable=e.data.intolerable,
                trial_id=e.data.trial_id,
                drug=e.data.drug,
            )
            for e in evidence
            if isinstance(e, SideEffectReported)
        ],
        determinations=status_changes(determinations),
    )
