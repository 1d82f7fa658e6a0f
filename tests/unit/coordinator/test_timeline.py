"""The timeline shows the evidence the determinations were made from, without the classifier.

The coordinator builds it from contract-level code and the current determination alone; these
tests hold it to what the classifier itself sees (its rules are imported here, in a test only).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from coordinator_samples import determination, trial

from painpath.simulate import simulate
from services.classifier.offline import read_histories
from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from services.classifier.trials import trial_histories
from services.coordinator.timeline import StatusChange, build_timeline
from shared.contract import Status, TrialOutcome, parse_event
from shared.contract.evidence import events_as_of
from tests.samples import valid_event

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
PATIENT = "pt-timeline-unit"


def test_over_a_cohort_the_trials_are_the_classifier_s_with_its_names_and_outcomes():
    lines = [line if isinstance(line, str) else json.dumps(line) for line in simulate(60, 7)]
    histories, _ = read_histories(lines)
    policy = load_policy()
    renamed = 0
    for history in histories.values():
        decided = evaluate(history.events, policy, AS_OF)
        timeline = build_timeline(decided.patient_id, history.events, AS_OF, decided.trials, [])
        expected = trial_histories(events_as_of(history.events, AS_OF), AS_OF, policy)
        outcomes = {t.trial_id: t.outcome.value for t in decided.trials}
        assert [
            (
                bar.trial_id,
                bar.drug,
                bar.started_at,
                bar.stopped_at,
                bar.stop_reason,
                bar.outcome,
                [(d.start, d.daily_dose, d.dose_unit) for d in bar.doses],
            )
            for bar in timeline.trials
        ] == [
            (
                t.trial_id,
                t.name,
                t.started_at,
                t.stopped_at,
                t.stop_reason.value if t.stop_reason else None,
                outcomes[t.trial_id],
                [(step.at, step.daily_dose, step.unit) for step in t.doses],
            )
            for t in expected
        ]
        renamed += sum(t.name != t.drug_name for t in expected)
    assert renamed  # some trials are known by another name than the one sent (RXCUI, case)


def _events(*raw: dict) -> list:
    return [parse_event(event) for event in raw]


def test_a_trial_the_determination_does_not_know_yet_shows_the_name_sent_folded():
    started = valid_event(
        "pain.trial.started.v1",
        patient_id=PATIENT,
        trial_id="t-lido",
        drug="Lidocaine 5% medicated plaster",
        rxnorm="6387",
        daily_dose=1,
        dose_unit="patch",
        time="2026-03-01T09:00:00Z",
    )
    events = _events(started)

    before = build_timeline(PATIENT, events, AS_OF, [], [])
    judged = trial("lidocaine", TrialOutcome.IN_PROGRESS, "t-lido")
    after = build_timeline(PATIENT, events, AS_OF, [judged], [])

    assert [(bar.drug, bar.outcome) for bar in before.trials] == [
        ("lidocaine_5%_medicated_plaster", None)
    ]
    assert [(bar.drug, bar.outcome) for bar in after.trials] == [("lidocaine", "in_progress")]


def test_duplicates_and_retractions_are_dropped_as_the_contract_says():
    started = valid_event(
        "pain.trial.started.v1", patient_id=PATIENT, trial_id="t-1", time="2026-01-02T09:00:00Z"
    )
    raised = valid_event(
        "pain.trial.dose_changed.v1",
        patient_id=PATIENT,
        trial_id="t-1",
        daily_dose=1800,
        time="2026-01-09T09:00:00Z",
    )
    in_error = valid_event(
        "pain.trial.dose_changed.v1",
        patient_id=PATIENT,
        trial_id="t-1",
        daily_dose=3600,
        time="2026-01-20T09:00:00Z",
    )
    score = valid_event(
        "pain.score.recorded.v1", patient_id=PATIENT, score=6, time="2026-01-21T09:00:00Z"
    )
    # The retraction arrives first and is dated after the instant: it still holds.
    retraction = valid_event(
        "pain.event.retracted.v1",
        patient_id=PATIENT,
        retracted_id=in_error["id"],
        time="2026-12-01T09:00:00Z",
    )
    later = valid_event(
        "pain.trial.stopped.v1", patient_id=PATIENT, trial_id="t-1", time="2026-07-02T09:00:00Z"
    )

    timeline = build_timeline(
        PATIENT,
        _events(retraction, started, raised, started, in_error, score, score, later),
        AS_OF,
        [],
        [],
    )

    [bar] = timeline.trials
    assert [(d.daily_dose, d.start.day) for d in bar.doses] == [(900, 2), (1800, 9)]
    assert (bar.drug, bar.stopped_at) == ("gabapentin", None)  # the stop is after the instant
    assert [s.score for s in timeline.scores] == [6]


def test_the_status_changes_are_the_determinations_where_the_status_changed():
    changes = [
        StatusChange(as_of=AS_OF, received_at=AS_OF, status=status, determination_id=str(n))
        for n, status in enumerate(["under_treatment", "under_treatment", "responding"])
    ]

    timeline = build_timeline(PATIENT, [], AS_OF, determination(Status.RESPONDING).trials, changes)

    assert [c.determination_id for c in timeline.determinations] == ["0", "2"]
