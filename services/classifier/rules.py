"""The policy's rules put together: a determination per patient from events, a policy and T.

A pure function of its inputs: no I/O, no clock. Each rule lives in the module named after it
(`scores`, `pain_duration`, `trials`, `trial_adequacy`, `intolerance`, `trial_outcome`,
`drug_failure`, `combinations`, `assessment`, `treatment_criteria`, `status`); the events that
count as of T and each trial's course are contract-level code (`shared.contract.evidence`,
`shared.contract.trials`), shared with the coordinator's timeline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from services.classifier.assessment import assessment
from services.classifier.combinations import combination_trials
from services.classifier.determination import determination_id
from services.classifier.drug_failure import drug_failures
from services.classifier.pain_duration import pain_duration
from services.classifier.policy import Policy
from services.classifier.scores import Scores, current_pain, figure
from services.classifier.status import decide_status
from services.classifier.treatment_criteria import treatment_criteria
from services.classifier.trial_outcome import JudgedTrial, judge_trial
from services.classifier.trials import trial_histories
from shared.contract import (
    ConditionRecorded,
    Determination,
    Event,
    EventRef,
    ScoreRecorded,
    Trial,
)
from shared.contract.evidence import events_as_of, require_aware


def evaluate(events: Iterable[Event], policy: Policy, as_of: datetime) -> Determination:
    """The determination of ONE patient as of `as_of` under `policy`.

    Only events with `time` <= `as_of` count; duplicates and retracted events are dropped first
    (see `evidence`). The same set of events, policy and instant always give the same
    determination, in any arrival order. Raises ValueError for no events, events of more than one
    patient, or an `as_of` without an offset.
    """
    require_aware(as_of)
    events = list(events)
    patients = {event.data.patient_id for event in events}
    if len(patients) != 1:
        raise ValueError(f"evaluate takes the events of one patient, got {len(patients)}")
    (patient_id,) = patients

    evidence = events_as_of(events, as_of)
    scores = Scores([event for event in evidence if isinstance(event, ScoreRecorded)])
    conditions = [event for event in evidence if isinstance(event, ConditionRecorded)]
    histories = trial_histories(evidence, as_of, policy)
    first_start = min((trial.started_at for trial in histories), default=None)

    duration = pain_duration(conditions, scores, first_start, as_of, policy)
    pain_now = current_pain(scores, as_of, policy)
    trials = [judge_trial(trial, scores, policy) for trial in histories]
    failures = drug_failures(trials)
    combinations = combination_trials(trials, scores, policy)
    assessed = assessment(evidence, policy)
    criteria = treatment_criteria(
        assessed.classification,
        duration.days,
        failures.drugs,
        failures.classes,
        combinations.failed_count,
        pain_now.value,
        policy,
    )
    status, status_reason = decide_status(duration, trials, criteria, assessed)

    decision = {
        "policy": policy.id,
        "patient_id": patient_id,
        "status": status,
        "classification": assessed.classification,
        "failed_drugs": failures.drugs,
        "failed_classes": failures.classes,
        "combination_failed": combinations.failed_count > 0,
        "missing_assessments": assessed.missing,
        # The contract validated each source and id when the event was admitted.
        "evidence_event_ids": [
            EventRef.model_construct(source=event.source, id=event.id) for event in evidence
        ],
        "trials": [_trial_entry(trial) for trial in trials],
    }
    return Determination(
        **decision,
        as_of=as_of,
        pain_start=duration.start,
        pain_days=duration.days,
        current_pain=figure(pain_now.value),
        criteria=criteria.name,
        criteria_met=criteria.met,
        combinations=combinations.trials,
        reasons=[
            status_reason,
            duration.reason,
            pain_now.reason,
            *(trial.reason for trial in trials),
            *failures.reasons,
            *combinations.reasons,
            *assessed.reasons,
            *criteria.reasons,
        ],
        determination_id=determination_id(**decision),
    )


def classify_all(events: Iterable[Event], policy: Policy, as_of: datetime) -> list[Determination]:
    """One determination per patient (sorted by `patient_id`), each from that patient's events
    alone: a retraction only reaches events of its own patient, as in a stream keyed by patient."""
    by_patient: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_patient[event.data.patient_id].append(event)
    return [evaluate(by_patient[patient], policy, as_of) for patient in sorted(by_patient)]


def _trial_entry(trial: JudgedTrial) -> Trial:
    history, drug, period = trial.history, trial.history.drug, trial.period
    dose = history.doses[-1]
    return Trial(
        trial_id=history.trial_id,
        drug=history.name,
        in_formulary=drug is not None,
        drug_class=drug.drug_class if drug is not None else None,
        started_at=history.started_at,
        stopped_at=history.stopped_at,
        stop_reason=history.stop_reason,
        daily_dose=dose.daily_dose,
        dose_unit=dose.unit,
        minimum_dose=drug.minimum_dose if drug is not None else None,
        minimum_dose_unit=drug.unit if drug is not None else None,
        minimum_days=drug.minimum_days if drug is not None else None,
        adequate_from=period.start if period is not None else None,
        adequate_until=period.end if period is not None else None,
        baseline=figure(trial.baseline),
        on_treatment=figure(trial.on_treatment),
        reduction=figure(trial.reduction),
        outcome=trial.outcome,
    )
