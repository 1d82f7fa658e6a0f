"""Failed drugs and classes (latest trial by start) and failed combination trials."""

import pytest
from clinical_events import chronic_history, day, determine, refractory_history, trial_of

from shared.contract import TrialOutcome


def gabapentin_trials(*on_treatment: float, third_inadequate: bool = False):
    """Gabapentin trials of 30 days, one every 40 days, each with baseline 10 and the given
    on-treatment score; optionally a later inadequate trial."""
    history = chronic_history()
    for index, score in enumerate(on_treatment):
        start = 40 * index
        history.score(day(start - 1), 10)
        history.start(day(start), f"t-{index}", "gabapentin", 1200)
        history.stop(day(start + 30), f"t-{index}")
        history.score(day(start + 20), score)
    if third_inadequate:
        history.start(day(100), "t-late", "gabapentin", 300)
        history.stop(day(110), "t-late")
    return determine(history)


def test_drug_whose_latest_counted_trial_responded_has_not_failed():
    determination = gabapentin_trials(9, 5)
    assert [t.outcome for t in determination.trials] == ["failed", "responded"]
    assert determination.failed_drugs == []
    assert "drug.not_failed" in [reason.code for reason in determination.reasons]


def test_drug_whose_latest_counted_trial_failed_has_failed():
    determination = gabapentin_trials(5, 9)
    assert determination.failed_drugs == ["gabapentin"]
    assert determination.failed_classes == ["gabapentinoid"]


def test_later_trial_that_does_not_count_leaves_the_drug_failure_as_it_was():
    determination = gabapentin_trials(5, 9, third_inadequate=True)
    assert trial_of(determination, "t-late").outcome is TrialOutcome.INADEQUATE
    assert determination.failed_drugs == ["gabapentin"]


def overlapping(second_start: float, second_drug: str = "duloxetine", second_dose: float = 60):
    """Gabapentin from day 0 to 60 and a second drug from `second_start` to day 100, pain 7."""
    history = chronic_history()
    history.scores(7, *range(-20, 101, 5))
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(60), "t-1")
    history.start(day(second_start), "t-2", second_drug, second_dose)
    history.stop(day(100), "t-2")
    return determine(history)


@pytest.mark.parametrize(("second_start", "failed"), [(33, False), (32, True)])
def test_combination_needs_28_days_of_overlapping_adequate_periods(second_start, failed):
    determination = overlapping(second_start)
    assert [t.outcome for t in determination.trials] == ["failed", "failed"]
    assert determination.combination_failed is failed
    assert len(determination.combinations) == int(failed)


def test_combination_needs_drugs_of_different_classes():
    determination = overlapping(10, "pregabalin", 300)
    assert determination.combinations == []
    assert not determination.combination_failed


def test_combination_takes_the_baseline_of_the_earlier_started_trial():
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.score(day(19), 5)  # baseline of the later trial, 40 % below the first's
    history.start(day(20), "t-2", "duloxetine", 60)
    history.stop(day(60), "t-1")
    history.stop(day(60), "t-2")
    history.scores(6, 34, 40, 50, 60)  # from 14 days into the overlap on
    determination = determine(history)
    (combination,) = determination.combinations
    assert (combination.baseline, combination.on_treatment) == (10, 6)
    assert combination.reduction == pytest.approx(0.4)
    assert not combination.failed
    assert trial_of(determination, "t-2").outcome is TrialOutcome.FAILED  # 5 -> 6


def test_combination_on_treatment_starts_14_days_into_the_overlap():
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.start(day(20), "t-2", "duloxetine", 60)
    history.stop(day(60), "t-1")
    history.stop(day(60), "t-2")
    history.score(day(33, hours=23), 2)  # before day 14 of the overlap
    history.score(day(34), 9)
    (combination,) = determine(history).combinations
    assert (combination.on_treatment, combination.failed) == (9, True)


def test_combination_without_on_treatment_score_does_not_fail():
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.start(day(20), "t-2", "duloxetine", 60)
    history.stop(day(60), "t-1")
    history.stop(day(60), "t-2")
    determination = determine(history)
    assert determination.combinations[0].on_treatment is None
    assert not determination.combination_failed
    assert "combination.unevaluable" in [reason.code for reason in determination.reasons]


def test_combination_with_a_drug_not_in_the_formulary_does_not_exist():
    history = refractory_history()
    history.events = [e for e in history.events if getattr(e.data, "trial_id", "") != "t-dulo"]
    history.start(day(10), "t-dulo", "ketamine", 60)
    history.stop(day(70), "t-dulo")
    assert determine(history).combinations == []
