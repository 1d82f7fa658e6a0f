"""Classification, assessment, treatment criteria and the status that follows from them."""

from datetime import date, timedelta
from fractions import Fraction

import pytest
from clinical_events import (
    POLICY,
    History,
    chronic_history,
    codes,
    day,
    determine,
    refractory_history,
    trial_of,
)

from services.classifier.treatment_criteria import treatment_criteria
from shared.contract import AssessmentPart, Classification, Status, TrialOutcome

AS_OF_DATE = date(2026, 5, 31)


def test_refractory_patient_with_complete_assessment_is_confirmed():
    determination = determine(refractory_history())
    assert determination.status is Status.REFRACTORY_CONFIRMED
    assert determination.failed_drugs == ["duloxetine", "gabapentin", "pregabalin"]
    assert determination.failed_classes == ["gabapentinoid", "snri"]
    assert determination.combination_failed
    assert determination.missing_assessments == []
    assert {"criteria.met", "assessment.complete", "status.refractory_confirmed"} <= set(
        codes(determination)
    )


def without_part(part: AssessmentPart) -> History:
    history = refractory_history(complete=False)
    at = day(100)
    if part is not AssessmentPart.MEDICATION_HISTORY:
        history.assess(at, "medication_history")
    if part is not AssessmentPart.PHYSICAL_EXAM:
        history.assess(at, "physical_exam")
    if part is not AssessmentPart.NEUROLOGICAL_EXAM:
        history.assess(at, "neurological_exam")
    if part is not AssessmentPart.CLASSIFICATION:
        history.assess(at, "psychological_screening", classification="nociplastic")
    if part is not AssessmentPart.DIAGNOSTIC:
        history.diagnostic(at, "nerve_conduction_study", "negative")
    return history


@pytest.mark.parametrize("part", list(AssessmentPart))
def test_each_missing_assessment_part_is_named_and_leaves_refractory_suspected(part):
    determination = determine(without_part(part))
    assert determination.missing_assessments == [part]
    assert determination.status is Status.REFRACTORY_SUSPECTED
    assert f"assessment.missing.{part.value}" in codes(determination)
    assert f"missing {part.value}" in determination.reasons[0].text


def test_classification_is_the_latest_given_by_time():
    history = chronic_history()
    history.assess(day(20), "physical_exam", classification="mixed")
    history.assess(day(10), "neurological_exam", classification="neuropathic")
    history.assess(day(30), "physical_exam")
    assert determine(history).classification == "mixed"


def neuropathic(pain_days: int, failed: int = 4, current_pain: float = 7) -> History:
    """A neuropathic patient with `failed` intolerant drugs and no combination trial."""
    history = History()
    history.condition(day(0), AS_OF_DATE - timedelta(days=pain_days))
    drugs = ["gabapentin", "duloxetine", "amitriptyline", "tramadol", "lidocaine"]
    for index, drug in enumerate(drugs[:failed]):
        history.start(day(10 * index), f"t-{index}", drug, 1)
        history.stop(day(10 * index + 5), f"t-{index}", reason="side_effects")
    history.scores(current_pain, 140, 150)
    history.complete_assessment(day(100), classification="neuropathic")
    return history


@pytest.mark.parametrize(
    ("pain_days", "status"),
    [(364, Status.UNDER_TREATMENT), (365, Status.REFRACTORY_CONFIRMED)],
)
def test_neuropathic_criteria_need_365_pain_days(pain_days, status):
    determination = determine(neuropathic(pain_days))
    assert determination.combination_failed is False
    assert (determination.criteria, determination.status) == ("neuropathic", status)


@pytest.mark.parametrize(
    ("failed", "status"), [(3, Status.UNDER_TREATMENT), (4, Status.REFRACTORY_CONFIRMED)]
)
def test_neuropathic_criteria_need_4_failed_drugs(failed, status):
    assert determine(neuropathic(400, failed=failed)).status is status


def test_neuropathic_criteria_are_the_only_ones_for_a_neuropathic_patient():
    # Default criteria met (3 drugs in 2 classes, a failed combination) but only 3 failed drugs.
    determination = determine(refractory_history(classification="neuropathic"))
    assert determination.criteria == "neuropathic"
    assert determination.status is Status.UNDER_TREATMENT
    assert "criteria.failed_drugs.not_met" in codes(determination)


@pytest.mark.parametrize(
    ("current_pain", "status"),
    [(4, Status.UNDER_TREATMENT), (5, Status.REFRACTORY_CONFIRMED)],
)
def test_treatment_criteria_need_current_pain_of_5(current_pain, status):
    determination = determine(refractory_history(current_pain=current_pain))
    assert (determination.current_pain, determination.status) == (current_pain, status)


def test_unknown_current_pain_gives_no_refractory_status():
    history = neuropathic(400)
    history.events = [e for e in history.events if e.type != "pain.score.recorded.v1"]
    determination = determine(history)
    assert determination.current_pain is None
    assert determination.failed_drugs == ["amitriptyline", "duloxetine", "gabapentin", "tramadol"]
    assert determination.status is Status.UNDER_TREATMENT
    assert "criteria.current_pain.not_met" in codes(determination)


def test_default_criteria_need_3_failed_drugs():
    history = refractory_history()
    history.events = [e for e in history.events if getattr(e.data, "trial_id", "") != "t-pre"]
    determination = determine(history)
    assert determination.failed_drugs == ["duloxetine", "gabapentin"]
    assert determination.status is Status.UNDER_TREATMENT
    assert "criteria.failed_drugs.not_met" in codes(determination)


@pytest.mark.parametrize(("classes", "met"), [(["tca"], False), (["snri", "tca"], True)])
def test_default_criteria_need_2_failed_classes(classes, met):
    drugs = ["amitriptyline", "imipramine", "nortriptyline"]
    judged = treatment_criteria(None, 400, drugs, classes, 1, Fraction(7), POLICY)
    assert (judged.name, judged.met) == ("default", met)


@pytest.mark.parametrize(
    ("classification", "pain_days", "drugs", "combinations", "met"),
    [
        (None, 89, 3, 1, False),
        (None, 90, 3, 1, True),
        (None, 90, 2, 1, False),
        (None, 90, 3, 0, False),
        (Classification.NOCIPLASTIC, 90, 3, 1, True),
        (Classification.NEUROPATHIC, 364, 4, 0, False),
        (Classification.NEUROPATHIC, 365, 4, 0, True),
        (Classification.NEUROPATHIC, 365, 3, 1, False),
    ],
)
def test_treatment_criteria_at_their_edges(classification, pain_days, drugs, combinations, met):
    failed = ["duloxetine", "gabapentin", "pregabalin", "tramadol"][:drugs]
    judged = treatment_criteria(
        classification,
        pain_days,
        failed,
        ["gabapentinoid", "snri"],
        combinations,
        Fraction(5),
        POLICY,
    )
    assert judged.met is met
    assert judged.reasons[-1].code == ("criteria.met" if met else "criteria.not_met")


def test_default_criteria_need_a_failed_combination():
    history = refractory_history()
    dulo = [e for e in history.events if getattr(e.data, "trial_id", "") == "t-dulo"]
    history.events = [e for e in history.events if e not in dulo]
    history.start(day(33), "t-dulo", "duloxetine", 60)  # overlaps gabapentin 27 days only
    history.stop(day(70), "t-dulo")
    determination = determine(history)
    assert determination.failed_drugs == ["duloxetine", "gabapentin", "pregabalin"]
    assert not determination.combination_failed
    assert determination.status is Status.UNDER_TREATMENT
    assert "criteria.failed_combinations.not_met" in codes(determination)


def test_responding_to_an_active_trial_beats_refractory():
    history = refractory_history(current_pain=8)
    history.start(day(100), "t-tram", "tramadol", 200)
    history.scores(2, 115, 125, 135, 145)
    determination = determine(history)
    assert determination.current_pain == 5  # 2 2 2 | 8 8 8
    assert trial_of(determination, "t-tram").outcome is TrialOutcome.RESPONDED
    assert determination.criteria_met
    assert determination.status is Status.RESPONDING

    history.stop(day(150), "t-tram")
    assert determine(history).status is Status.REFRACTORY_CONFIRMED


@pytest.mark.parametrize(
    ("pain_days", "status"), [(89, Status.NOT_CHRONIC), (90, Status.RESPONDING)]
)
def test_not_chronic_beats_responding(pain_days, status):
    history = History()
    history.condition(day(0), AS_OF_DATE - timedelta(days=pain_days))
    history.score(day(99), 8)
    history.start(day(100), "t-1", "duloxetine", 60)
    history.scores(4, 130, 140)
    assert determine(history).status is status
