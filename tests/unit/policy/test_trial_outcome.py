"""One trial's outcome: adequate dose and duration, intolerance, baseline, response."""

from datetime import timedelta

import pytest
from clinical_events import START, chronic_history, day, determine, text_of, trial_of

from shared.contract import Status, TrialOutcome


def single_trial(
    drug: str = "gabapentin",
    dose: float = 1200,
    *,
    unit: str = "mg",
    stop_day: float | None = 30,
    baseline: float = 10,
    on_treatment: float = 6,
    rxnorm: str | None = None,
):
    """One trial from day 0, a baseline score the day before and on-treatment scores on days 20
    and 27 (inside any adequate period of at least 28 days that starts on day 0)."""
    history = chronic_history()
    history.score(day(-1), baseline)
    history.start(day(0), "t-1", drug, dose, unit, rxnorm)
    if stop_day is not None:
        history.stop(START + timedelta(days=stop_day), "t-1")
    for when in (20, 27):
        history.score(day(when), on_treatment)
    return history


@pytest.mark.parametrize(
    ("on_treatment", "outcome"),
    [(7, TrialOutcome.RESPONDED), (7.1, TrialOutcome.FAILED)],
)
def test_reduction_of_30_percent_responds_and_29_percent_fails(on_treatment, outcome):
    trial = trial_of(determine(single_trial(baseline=10, on_treatment=on_treatment)), "t-1")
    assert trial.outcome is outcome
    assert trial.baseline == 10
    assert trial.on_treatment == on_treatment


def test_reduction_of_exactly_30_percent_is_not_lost_to_float_rounding():
    # In floats (7 - 4.9) / 7 is 0.29999999999999993.
    trial = trial_of(determine(single_trial(baseline=7, on_treatment=4.9)), "t-1")
    assert trial.outcome is TrialOutcome.RESPONDED
    assert trial.reduction == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("stop_day", "outcome"), [(41, TrialOutcome.INADEQUATE), (42, TrialOutcome.FAILED)]
)
def test_tca_needs_42_days_at_dose(stop_day, outcome):
    history = single_trial("amitriptyline", 25, stop_day=stop_day, on_treatment=9)
    assert trial_of(determine(history), "t-1").outcome is outcome


@pytest.mark.parametrize(
    ("stop_after", "outcome"),
    [
        (timedelta(days=27, hours=23), TrialOutcome.INADEQUATE),
        (timedelta(days=28), TrialOutcome.FAILED),
    ],
)
def test_gabapentin_needs_28_full_days_of_24_hours_at_dose(stop_after, outcome):
    history = single_trial(stop_day=stop_after / timedelta(days=1), on_treatment=9)
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is outcome
    if outcome is TrialOutcome.INADEQUATE:
        assert "for 27 days 23 h, short of the 28 days required" in text_of(determination, "trial")


def test_adequate_period_starts_when_the_dose_reaches_the_minimum():
    history = single_trial(dose=600, stop_day=37, on_treatment=9)
    history.dose(day(10), "t-1", 1200)
    trial = trial_of(determine(history), "t-1")
    assert trial.outcome is TrialOutcome.INADEQUATE  # 37 days in all, 27 of them at dose

    history = single_trial(dose=600, stop_day=38, on_treatment=9)
    history.dose(day(10), "t-1", 1200)
    history.score(day(24), 9)
    trial = trial_of(determine(history), "t-1")
    assert (trial.outcome, trial.adequate_from, trial.adequate_until) == (
        TrialOutcome.FAILED,
        day(10),
        day(38),
    )


def test_adequate_period_is_the_first_long_enough_stretch_taken_whole():
    history = single_trial(stop_day=None, on_treatment=9)
    history.dose(day(10), "t-1", 900)  # 10 days at dose: too short
    history.dose(day(12), "t-1", 1500)
    history.dose(day(40), "t-1", 1200)  # still at or above the minimum
    history.dose(day(60), "t-1", 600)
    history.dose(day(70), "t-1", 1200)
    history.score(day(30), 9)
    trial = trial_of(determine(history), "t-1")
    assert (trial.adequate_from, trial.adequate_until) == (day(12), day(60))


def test_on_treatment_window_starts_exactly_14_days_into_the_adequate_period():
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(30), "t-1")
    history.score(day(14), 2)
    history.score(day(14) - timedelta(seconds=1), 9)
    trial = trial_of(determine(history), "t-1")
    assert (trial.on_treatment, trial.outcome) == (2, TrialOutcome.RESPONDED)


def test_baseline_window_includes_both_ends():
    history = chronic_history()
    history.score(day(-30), 8)
    history.score(day(-30) - timedelta(seconds=1), 1)
    history.score(day(0), 6)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(30), "t-1")
    history.score(day(20), 7)
    assert trial_of(determine(history), "t-1").baseline == 7  # median of 8 and 6


def test_median_of_an_even_count_is_the_mean_of_the_middle_two():
    history = single_trial(baseline=6, on_treatment=5)
    history.score(day(-2), 8)
    history.score(day(-3), 2)
    history.score(day(-4), 9)
    assert trial_of(determine(history), "t-1").baseline == 7  # 2 6 | 8 9


def test_vas_scores_count_divided_by_10():
    history = single_trial(baseline=10, on_treatment=7)
    history.score(day(-1), 90, instrument="vas")
    history.score(day(-2), 80, instrument="vas")
    assert trial_of(determine(history), "t-1").baseline == 9  # 8, 9, 10


def test_dose_in_another_unit_counts_as_below_the_minimum():
    determination = determine(single_trial(dose=1200, unit="patch", on_treatment=9))
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert "dose given in patch, gabapentin is dosed in mg" in text_of(determination, "trial")


def test_dose_below_the_minimum_is_named_against_the_adequate_dose():
    determination = determine(single_trial(dose=900, on_treatment=9))
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert "gabapentin 900 mg/day is below the adequate 1200 mg/day" in text_of(
        determination, "trial"
    )


def test_any_minimum_dose_means_any_dose_above_0():
    history = single_trial("morphine", 2.5, on_treatment=9)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.FAILED


def test_one_application_drug_needs_its_minimum_days():
    short = single_trial("capsaicin", 1, unit="patch", stop_day=83, on_treatment=9)
    assert trial_of(determine(short), "t-1").outcome is TrialOutcome.INADEQUATE
    full = single_trial("Botulinum Toxin-A", 50, unit="unit", stop_day=84, on_treatment=9)
    assert trial_of(determine(full), "t-1").outcome is TrialOutcome.FAILED


def test_active_trial_without_adequate_period_is_in_progress():
    history = single_trial(stop_day=None, on_treatment=9)
    determination = determine(history, as_of=day(27, 23))
    assert trial_of(determination, "t-1").outcome is TrialOutcome.IN_PROGRESS


def test_active_trial_is_judged_once_it_has_an_adequate_period():
    history = single_trial(stop_day=None, on_treatment=9)
    determination = determine(history, as_of=day(28))
    trial = trial_of(determination, "t-1")
    assert (trial.outcome, trial.stopped_at, trial.adequate_until) == (
        TrialOutcome.FAILED,
        None,
        day(28),
    )


def test_intolerance_counts_as_failure_at_any_dose():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300)
    history.stop(day(5), "t-1", reason="side_effects")
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INTOLERANT
    assert determination.failed_drugs == ["gabapentin"]


@pytest.mark.parametrize(
    ("severity", "intolerable", "outcome"),
    [
        ("mild", None, TrialOutcome.INADEQUATE),
        ("moderate", None, TrialOutcome.INADEQUATE),
        ("moderate", True, TrialOutcome.INTOLERANT),
        ("severe", None, TrialOutcome.INTOLERANT),
        ("life_threatening", False, TrialOutcome.INTOLERANT),
    ],
)
def test_side_effect_makes_a_trial_intolerant_when_intolerable_or_severe(
    severity, intolerable, outcome
):
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300)
    history.stop(day(5), "t-1", reason="patient_choice")
    history.side_effect(day(3), trial_id="t-1", severity=severity, intolerable=intolerable)
    assert trial_of(determine(history), "t-1").outcome is outcome


def test_side_effect_attributed_by_trial_id_counts_whenever_reported():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300)
    history.stop(day(5), "t-1")
    history.side_effect(day(9), trial_id="t-1", severity="severe")
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT


@pytest.mark.parametrize(
    ("reported", "outcome"),
    [
        (day(-1), TrialOutcome.INADEQUATE),
        (day(0), TrialOutcome.INTOLERANT),
        (day(3), TrialOutcome.INTOLERANT),
        (day(5), TrialOutcome.INTOLERANT),
        (day(5, hours=1), TrialOutcome.INADEQUATE),
    ],
)
def test_side_effect_attributed_by_drug_counts_only_while_the_trial_is_active(reported, outcome):
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300, rxnorm="25480")
    history.stop(day(5), "t-1")
    history.side_effect(reported, drug="Gabapentin", severity="severe")
    assert trial_of(determine(history), "t-1").outcome is outcome


def test_side_effect_attributed_by_drug_meets_every_active_trial_of_that_drug_only():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 300)
    history.start(day(1), "t-2", "gabapentin", 600)
    history.start(day(1), "t-3", "pregabalin", 150)
    history.side_effect(day(3), drug="gabapentin", intolerable=True)
    determination = determine(history)
    outcomes = [trial.outcome for trial in determination.trials]
    assert outcomes == [TrialOutcome.INTOLERANT, TrialOutcome.INTOLERANT, TrialOutcome.IN_PROGRESS]


def test_intolerance_comes_before_adequacy_and_response():
    history = single_trial(baseline=10, on_treatment=2)
    history.side_effect(day(20), trial_id="t-1", severity="severe")
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT


def test_trial_without_baseline_is_unevaluable():
    history = single_trial()
    history.events = [e for e in history.events if e.time != day(-1)]
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.UNEVALUABLE


def test_trial_with_baseline_0_is_unevaluable():
    history = single_trial(baseline=0, on_treatment=0)
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.UNEVALUABLE


def test_trial_without_on_treatment_score_is_unevaluable():
    history = chronic_history()
    history.score(day(-1), 8)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(30), "t-1")
    history.score(day(13), 2)  # before day 14 of the adequate period
    history.score(day(31), 2)  # after its end
    determination = determine(history)
    trial = trial_of(determination, "t-1")
    assert (trial.baseline, trial.on_treatment, trial.outcome) == (
        8,
        None,
        TrialOutcome.UNEVALUABLE,
    )
    assert "no on-treatment score from day 14" in text_of(determination, "trial")


def test_rxnorm_wins_over_drug_name():
    determination = determine(single_trial("gabapentin", 60, rxnorm="72625", on_treatment=9))
    trial = trial_of(determination, "t-1")
    assert (trial.drug, trial.drug_class, trial.outcome) == ("duloxetine", "snri", "failed")


def test_rxnorm_the_formulary_does_not_list_leaves_the_drug_to_its_name():
    # 310431 is a gabapentin product code (SCD), not the ingredient RXCUI 25480.
    determination = determine(single_trial("gabapentin", 1200, rxnorm="310431", on_treatment=9))
    trial = trial_of(determination, "t-1")
    assert (trial.drug, trial.in_formulary, trial.outcome) == ("gabapentin", True, "failed")
    assert determination.failed_drugs == ["gabapentin"]


def test_drug_without_rxcui_in_the_formulary_is_matched_by_name_whatever_its_rxnorm():
    history = single_trial("capsaicin", 1, unit="patch", stop_day=84, on_treatment=9, rxnorm="1819")
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.FAILED


def test_drug_names_match_case_insensitively_with_spaces_and_hyphens_folded():
    history = single_trial("  Botulinum toxin-A ", 50, unit="unit", stop_day=84, on_treatment=9)
    trial = trial_of(determine(history), "t-1")
    assert (trial.drug, trial.in_formulary) == ("botulinum_toxin_a", True)


def test_drug_not_in_the_formulary_is_shown_but_never_counts():
    history = chronic_history()
    history.start(day(0), "t-1", "Aspirin", 1000)
    history.stop(day(5), "t-1", reason="side_effects")
    history.start(day(10), "t-2", "ketamine", 100)
    determination = determine(history)
    assert [(t.drug, t.in_formulary) for t in determination.trials] == [
        ("aspirin", False),
        ("ketamine", False),
    ]
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INTOLERANT
    assert determination.failed_drugs == []
    assert text_of(determination, "trial").splitlines() == [
        "trial t-1 (aspirin): intolerant, stopped for side effects, but not in the formulary: "
        "shown, never counts",
        "trial t-2 (ketamine): in progress, not in the formulary: shown, never counts",
    ]
    assert determination.status is Status.UNDER_TREATMENT


def test_trial_start_is_taken_at_its_first_start_event():
    history = single_trial(on_treatment=9)
    history.start(day(2), "t-1", "gabapentin", 100)
    trial = trial_of(determine(history), "t-1")
    assert (trial.started_at, trial.daily_dose) == (day(0), 1200)
