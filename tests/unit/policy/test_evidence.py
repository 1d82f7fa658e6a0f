"""The events that count as of T: cut-off, duplicates, retractions, arrival order."""

from datetime import datetime, timedelta

import pytest
from clinical_events import AS_OF, POLICY, History, chronic_history, day, determine, trial_of

from services.classifier.rules import classify_all, evaluate
from shared.contract import TrialOutcome


def intolerant_by_side_effect() -> tuple[History, object]:
    """A sub-therapeutic gabapentin trial made intolerant by one severe side effect."""
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300)
    history.stop(day(5), "t-1", reason="patient_choice")
    side_effect = history.side_effect(day(3), trial_id="t-1", severity="severe")
    return history, side_effect


def test_events_after_as_of_do_not_count_and_events_at_as_of_do():
    history = chronic_history()
    history.score(AS_OF + timedelta(seconds=1), 9)
    assert determine(history).current_pain is None
    history.score(AS_OF, 6)
    assert determine(history).current_pain == 6


def test_retraction_of_the_decisive_side_effect_undoes_the_intolerance():
    history, side_effect = intolerant_by_side_effect()
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT
    history.retract(day(7), side_effect)
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert determination.failed_drugs == []


def test_retraction_that_arrives_before_its_event_still_holds():
    history, side_effect = intolerant_by_side_effect()
    retraction = history.retract(day(7), side_effect)
    history.events.remove(retraction)
    history.events.insert(0, retraction)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INADEQUATE


def test_retraction_holds_whatever_its_own_time():
    history, side_effect = intolerant_by_side_effect()
    history.retract(AS_OF + timedelta(days=30), side_effect)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INADEQUATE


def test_retraction_only_reaches_the_event_of_its_own_source():
    history, side_effect = intolerant_by_side_effect()
    other = History(source="urn:hospital:other:ehr")
    other.events = history.events
    other.retract(day(7), side_effect)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT


def test_retracting_a_retraction_restores_the_event():
    history, side_effect = intolerant_by_side_effect()
    retraction = history.retract(day(7), side_effect)
    history.retract(day(8), retraction)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT


def test_duplicates_count_once():
    history = chronic_history()
    history.scores(4, 130, 140)
    once = determine(history)
    history.events += history.events
    assert determine(history).model_dump() == once.model_dump()
    assert len(once.evidence_event_ids) == 3


def test_first_delivered_of_the_same_source_and_id_wins():
    history = chronic_history()
    history.score(day(140), 4)
    first = history.events[-1]
    history.score(day(140), 8)
    history.events[-1] = history.events[-1].model_copy(update={"id": first.id})
    assert determine(history).current_pain == 4


def test_arrival_order_does_not_matter_even_for_events_at_the_same_instant():
    history = chronic_history()
    history.condition(day(0), datetime(2020, 1, 1).date())  # same instant, another onset
    forwards, backwards = determine(history), evaluate(history.events[::-1], POLICY, AS_OF)
    assert forwards.model_dump() == backwards.model_dump()


def test_as_of_must_have_an_offset():
    with pytest.raises(ValueError, match="aware"):
        evaluate(chronic_history().events, POLICY, datetime(2026, 5, 1))


def test_evaluate_takes_one_patient_only():
    other = History(patient_id="p-2")
    other.condition(day(0), day(-100).date())
    with pytest.raises(ValueError, match="one patient"):
        evaluate(chronic_history().events + other.events, POLICY, AS_OF)
    with pytest.raises(ValueError, match="one patient"):
        evaluate([], POLICY, AS_OF)


def test_classify_all_gives_one_determination_per_patient_sorted():
    second, first = History(patient_id="p-b"), History(patient_id="p-a")
    second.condition(day(0), day(-100).date())
    first.condition(day(0), day(-10).date())
    retraction = first.retract(day(1), second.events[0])  # of another patient: no effect
    determinations = classify_all(second.events + first.events, POLICY, AS_OF)
    assert (retraction.source, retraction.data.retracted_id) == second.events[0].key
    assert [(d.patient_id, d.pain_days) for d in determinations] == [("p-a", 160), ("p-b", 250)]


def test_cycle_of_retractions_leaves_the_events_they_do_not_name_alone():
    history, side_effect = intolerant_by_side_effect()
    history.add("event.retracted", day(7), event_id="r-1", retracted_id="r-2")
    history.add("event.retracted", day(7), event_id="r-2", retracted_id="r-1")
    history.add("event.retracted", day(7), event_id="r-3", retracted_id="r-3")
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT
