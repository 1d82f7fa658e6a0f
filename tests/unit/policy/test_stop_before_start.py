"""A trial's end (POLICY.md section 3): the earliest stop counts, and a stop dated before the
start ends the trial at its start, a trial of no length that is never adequate."""

from datetime import timedelta

from clinical_events import (
    chronic_history,
    codes,
    day,
    determine,
    refractory_history,
    text_of,
    trial_of,
)

from shared.contract import Status, TrialOutcome


def failing_gabapentin(*stop_days: float, reason: str = "ineffective"):
    """Gabapentin 1200 mg from day 0 with a baseline of 10 and pain 9 on days 20 and 27: a
    failed trial once stopped on day 28 or later, whatever is done to it here by `stop_days`."""
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    for when in stop_days:
        history.stop(day(when), "t-1", reason=reason)
    for when in (20, 27, 40):
        history.score(day(when), 9)
    return history


def test_stop_dated_before_the_start_ends_the_trial_at_its_start_as_inadequate():
    determination = determine(failing_gabapentin(-1))
    trial = trial_of(determination, "t-1")
    assert trial.outcome is TrialOutcome.INADEQUATE
    assert (trial.adequate_from, trial.adequate_until) == (None, None)
    assert (trial.on_treatment, trial.reduction) == (None, None)
    assert trial.baseline == 10  # the scores before the start are still shown
    assert determination.failed_drugs == []


def test_stop_before_the_start_is_shown_as_sent():
    trial = trial_of(determine(failing_gabapentin(-1)), "t-1")
    assert (trial.started_at, trial.stopped_at, trial.stop_reason) == (
        day(0),
        day(-1),
        "ineffective",
    )


def test_reason_says_that_the_stop_predates_the_start():
    determination = determine(failing_gabapentin(-1))
    assert "trial.inadequate" in codes(determination)
    assert text_of(determination, "trial.") == (
        "trial t-1 (gabapentin): inadequate, the stop (2025-12-31T09:00:00Z, ineffective) "
        "predates the start (2026-01-01T09:00:00Z): a trial of no length, never adequate"
    )


def test_stop_one_second_before_the_start_predates_it():
    history = chronic_history()
    history.start(day(0), "t-1", "morphine", 5)
    history.stop(day(0) - timedelta(seconds=1), "t-1")
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert "predates the start" in text_of(determination, "trial.")


def test_stop_at_the_start_instant_does_not_predate_it():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(0), "t-1", reason="side_effects")
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INTOLERANT
    assert "predates" not in text_of(determination, "trial.")


def test_trial_whose_stop_predates_its_start_is_inadequate_even_when_stopped_for_side_effects():
    determination = determine(failing_gabapentin(-1, reason="side_effects"))
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert determination.failed_drugs == []
    assert text_of(determination, "trial.").endswith(
        "a trial of no length, never adequate; stopped for side effects is not counted"
    )


def test_trial_whose_stop_predates_its_start_is_inadequate_whatever_its_side_effects():
    history = failing_gabapentin(-1)
    history.side_effect(day(3), trial_id="t-1", severity="severe")
    history.side_effect(day(0), drug="gabapentin", intolerable=True)
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert determination.failed_drugs == []
    assert "is not counted" in text_of(determination, "trial.")


def test_trial_whose_stop_predates_its_start_is_stopped_so_never_in_progress_nor_responding():
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(-2), "t-1")
    history.scores(2, 20, 27)  # a response, were the trial active
    determination = determine(history, as_of=day(28))
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert determination.status is Status.UNDER_TREATMENT


def test_earliest_stop_counts_of_several_whatever_their_arrival_order():
    history = failing_gabapentin(40, 20)  # the stop of day 40 arrives first
    trial = trial_of(determine(history), "t-1")
    assert (trial.stopped_at, trial.outcome) == (day(20), TrialOutcome.INADEQUATE)


def test_earliest_stop_counts_even_when_it_predates_the_start():
    history = failing_gabapentin(40)
    early = history.stop(day(-3), "t-1")
    determination = determine(history)
    trial = trial_of(determination, "t-1")
    assert (trial.stopped_at, trial.outcome) == (day(-3), TrialOutcome.INADEQUATE)
    assert "predates the start" in text_of(determination, "trial.")
    # Once the stop before the start is retracted, the stop of day 40 ends the trial.
    history.retract(day(50), early)
    trial = trial_of(determine(history), "t-1")
    assert (trial.stopped_at, trial.outcome) == (day(40), TrialOutcome.FAILED)


def test_of_stops_at_the_same_instant_the_first_in_event_order_gives_the_reason():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 1200)
    history.stop(day(-1), "t-1", reason="side_effects")
    history.add("trial.stopped", day(-1), event_id="a-first", trial_id="t-1", reason="completed")
    trial = trial_of(determine(history), "t-1")
    assert (trial.stop_reason, trial.outcome) == ("completed", TrialOutcome.INADEQUATE)


def test_stop_after_t_is_not_read():
    history = failing_gabapentin(200)
    trial = trial_of(determine(history, as_of=day(150)), "t-1")
    assert (trial.stopped_at, trial.outcome) == (None, TrialOutcome.FAILED)


def test_dose_changes_of_a_trial_whose_stop_predates_its_start_are_ignored():
    history = chronic_history()
    history.start(day(0), "t-1", "gabapentin", 600)
    history.stop(day(-1), "t-1")
    history.dose(day(-2), "t-1", 900)
    history.dose(day(5), "t-1", 1200)
    trial = trial_of(determine(history), "t-1")
    assert (trial.daily_dose, trial.outcome) == (600, TrialOutcome.INADEQUATE)


def test_trial_whose_stop_predates_its_start_is_no_part_of_a_combination_trial():
    history = chronic_history()
    history.scores(8, -1, 20, 30, 40)
    history.start(day(0), "t-gaba", "gabapentin", 1200)
    history.stop(day(60), "t-gaba")
    history.start(day(0), "t-dulo", "duloxetine", 60)
    history.stop(day(-1), "t-dulo")
    determination = determine(history)
    assert determination.combinations == []
    assert determination.combination_failed is False
    assert determination.failed_drugs == ["gabapentin"]


def test_trial_whose_stop_predates_its_start_does_not_count_toward_failed_drugs():
    history = refractory_history()
    assert determine(history).status is Status.REFRACTORY_CONFIRMED
    history.stop(day(79), "t-pre")  # pregabalin started on day 80: now stopped before its start
    determination = determine(history)
    assert trial_of(determination, "t-pre").outcome is TrialOutcome.INADEQUATE
    assert determination.failed_drugs == ["duloxetine", "gabapentin"]
    assert determination.status is Status.UNDER_TREATMENT


def test_drug_not_in_the_formulary_with_a_stop_before_its_start_says_both():
    history = chronic_history()
    history.start(day(0), "t-1", "aspirin", 1000)
    history.stop(day(-1), "t-1", reason="patient_choice")
    determination = determine(history)
    assert trial_of(determination, "t-1").outcome is TrialOutcome.INADEQUATE
    assert text_of(determination, "trial.").endswith(
        "never adequate; not in the formulary: shown, never counts"
    )
