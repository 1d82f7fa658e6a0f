"""Drug identity (POLICY.md section 2): names fold runs of spaces, hyphens and underscores to one
`_`; an `rxnorm` the formulary lists wins, any other leaves the drug to its name."""

import pytest
from clinical_events import POLICY, chronic_history, day, determine, trial_of

from shared.contract import TrialOutcome
from shared.contract.trials import fold_drug_name


@pytest.mark.parametrize(
    ("sent", "folded"),
    [
        ("Botulinum  Toxin-A", "botulinum_toxin_a"),
        ("botulinum__toxin_a", "botulinum_toxin_a"),
        ("botulinum_-_toxin a", "botulinum_toxin_a"),
        ("  BOTULINUM\tTOXIN - A \n", "botulinum_toxin_a"),
        ("gabapentin", "gabapentin"),
        ("-gabapentin", "_gabapentin"),
        ("_gabapentin_", "_gabapentin_"),
        (" __gabapentin ", "_gabapentin"),
    ],
)
def test_names_fold_every_run_of_spaces_hyphens_and_underscores_to_one_underscore(sent, folded):
    assert fold_drug_name(sent) == folded


@pytest.mark.parametrize(
    "sent", ["botulinum__toxin_a", "botulinum_-_toxin a", "Botulinum  Toxin-A"]
)
def test_folded_name_meets_the_formulary_drug(sent):
    history = chronic_history()
    history.score(day(-1), 10)
    history.start(day(0), "t-1", sent, 50, unit="unit")
    history.stop(day(84), "t-1")
    history.scores(9, 20, 27)
    trial = trial_of(determine(history), "t-1")
    assert (trial.drug, trial.in_formulary, trial.outcome) == (
        "botulinum_toxin_a",
        True,
        TrialOutcome.FAILED,
    )


@pytest.mark.parametrize(
    ("sent", "shown"), [("-gabapentin", "_gabapentin"), ("_gabapentin_", "_gabapentin_")]
)
def test_name_with_an_underscore_or_hyphen_at_an_end_is_not_a_formulary_name(sent, shown):
    history = chronic_history()
    history.start(day(0), "t-1", sent, 1200)
    history.stop(day(5), "t-1", reason="side_effects")
    determination = determine(history)
    trial = trial_of(determination, "t-1")
    assert (trial.drug, trial.in_formulary) == (shown, False)
    assert determination.failed_drugs == []


@pytest.mark.parametrize(
    ("name", "rxnorm", "drug"),
    [
        ("gabapentin", "310431", "gabapentin"),  # a product RXCUI, not the ingredient's 25480
        ("Duloxetine", "596926", "duloxetine"),  # an RXCUI the formulary does not list
        ("capsaicin", "1819", "capsaicin"),  # no RXCUI in the formulary
        ("botulinum toxin a", "  1111 ", "botulinum_toxin_a"),
        ("gabapentin", "   ", "gabapentin"),  # blank
    ],
)
def test_rxnorm_not_in_the_formulary_leaves_the_drug_to_its_name(name, rxnorm, drug):
    found = POLICY.formulary_drug(name, rxnorm)
    assert found is not None and found.drug == drug


@pytest.mark.parametrize(("rxnorm", "drug"), [("72625", "duloxetine"), (" 72625\n", "duloxetine")])
def test_rxnorm_in_the_formulary_wins_over_the_name_once_trimmed(rxnorm, drug):
    found = POLICY.formulary_drug("gabapentin", rxnorm)
    assert found is not None and found.drug == drug


def test_rxnorm_not_in_the_formulary_with_a_name_not_in_it_is_not_in_the_formulary():
    assert POLICY.formulary_drug("aspirin", "1191") is None
    history = chronic_history()
    history.start(day(0), "t-1", "Aspirin", 1000, rxnorm="1191")
    trial = trial_of(determine(history), "t-1")
    assert (trial.drug, trial.in_formulary) == ("aspirin", False)


@pytest.mark.parametrize(
    ("trial_drug", "rxnorm", "reported_drug"),
    [
        ("gabapentin", "310431", "Gabapentin"),  # product code: the trial is gabapentin by name
        ("gabapentin", "25480", "GABAPENTIN "),
        ("Botulinum  Toxin-A", None, "botulinum__toxin_a"),
        ("Foo-Bar", None, "foo  bar"),  # not in the formulary: by folded name alike
        ("Foo_Bar", "999", "foo-_-bar"),
    ],
)
def test_side_effect_attributed_by_drug_meets_a_trial_of_the_same_drug_identity(
    trial_drug, rxnorm, reported_drug
):
    history = chronic_history()
    history.start(day(0), "t-1", trial_drug, 1200, rxnorm=rxnorm)
    history.side_effect(day(3), drug=reported_drug, severity="severe")
    assert trial_of(determine(history), "t-1").outcome is TrialOutcome.INTOLERANT


@pytest.mark.parametrize(
    ("trial_drug", "rxnorm", "reported_drug"),
    [
        ("gabapentin", "72625", "gabapentin"),  # the RXCUI makes the trial duloxetine
        ("gabapentin", None, "-gabapentin"),
        ("foo bar", None, "foobar"),
    ],
)
def test_side_effect_attributed_by_another_drug_identity_does_not_meet_the_trial(
    trial_drug, rxnorm, reported_drug
):
    history = chronic_history()
    history.start(day(0), "t-1", trial_drug, 1200, rxnorm=rxnorm)
    history.side_effect(day(3), drug=reported_drug, severity="severe")
    assert trial_of(determine(history), "t-1").outcome is not TrialOutcome.INTOLERANT
