"""The policy file: every number of POLICY.md is a setting, and a bad file is refused clearly."""

from pathlib import Path

import pytest

from services.classifier.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from shared.contract import Classification, DoseUnit


def write_policy(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_POLICY_PATH.read_text()
    assert old in text
    path = tmp_path / "policy.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_default_policy_holds_every_number_of_the_policy():
    policy = load_policy()
    assert policy.id == "default-v1"
    assert policy.chronic_days == 90
    assert policy.response_threshold == 0.30
    assert policy.current_pain_window_days == 30
    assert policy.baseline_window_days == 30
    assert policy.on_treatment_offset_days == 14
    assert policy.combination_overlap_days == 28
    assert [part.value for part in policy.required_assessment] == [
        "medication_history",
        "physical_exam",
        "neurological_exam",
        "classification",
        "diagnostic",
    ]
    neuropathic = policy.criteria_for(Classification.NEUROPATHIC)[1]
    assert (neuropathic.min_pain_days, neuropathic.min_failed_drugs) == (365, 4)
    assert neuropathic.min_current_pain == 5
    default = policy.criteria_for(None)[1]
    assert (default.min_failed_drugs, default.min_failed_classes) == (3, 2)
    assert (default.min_failed_combinations, default.min_current_pain) == (1, 5)
    assert policy.criteria_for(Classification.MIXED)[0] == "default"


def test_default_formulary_is_the_table_of_the_policy():
    table = {
        drug.drug: (drug.rxcui, drug.drug_class, drug.line, drug.minimum_dose, drug.unit)
        + (drug.minimum_days,)
        for drug in load_policy().formulary
    }
    assert table == {
        "gabapentin": ("25480", "gabapentinoid", 1, 1200, DoseUnit.MG, 28),
        "pregabalin": ("187832", "gabapentinoid", 1, 300, DoseUnit.MG, 28),
        "duloxetine": ("72625", "snri", 1, 60, DoseUnit.MG, 28),
        "venlafaxine": ("39786", "snri", 1, 150, DoseUnit.MG, 28),
        "amitriptyline": ("704", "tca", 1, 25, DoseUnit.MG, 42),
        "nortriptyline": ("7531", "tca", 1, 25, DoseUnit.MG, 42),
        "imipramine": ("5691", "tca", 1, 25, DoseUnit.MG, 42),
        "lidocaine": ("6387", "topical", 2, 1, DoseUnit.PATCH, 28),
        "capsaicin": (None, "topical", 2, 1, DoseUnit.PATCH, 84),
        "tramadol": ("10689", "weak_opioid", 2, 200, DoseUnit.MG, 28),
        "botulinum_toxin_a": (None, "neurotoxin", 3, 50, DoseUnit.UNIT, 84),
        "morphine": ("7052", "strong_opioid", 3, "any", DoseUnit.MG, 28),
        "oxycodone": ("7804", "strong_opioid", 3, "any", DoseUnit.MG, 28),
    }


def test_policy_file_can_be_loaded_from_a_path(tmp_path):
    path = write_policy(tmp_path, 'id = "default-v1"', 'id = "stricter-v2"')
    assert load_policy(path).id == "stricter-v2"


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("response_threshold = 0.30", "response_threshold = -0.30", "response_threshold"),
        ("chronic_days = 90", "chronic_days = 0", "chronic_days"),
        ('class = "gabapentinoid"\n', "", "formulary[0].class"),
        ("minimum_dose = 1200", 'minimum_dose = "some"', "formulary[0].minimum_dose"),
        ('unit = "mg"', 'unit = "ml"', "formulary[0].unit"),
        ("chronic_days = 90", "chronic_days = 90\nchronic_weeks = 13", "chronic_weeks"),
        ("min_failed_drugs = 4", "min_failed_drugs = 4\nmin_lines = 2", "criteria.neuropathic"),
        ('    "diagnostic",\n', '    "imaging",\n', "required_assessment[4]"),
        ("[criteria.default]", "[criteria.other]", "criteria"),
        ('drug = "pregabalin"', 'drug = "gabapentin"', "gabapentin is listed twice"),
        ("min_current_pain = 5\n\n[criteria.default]", "min_current_pain = 11\n\n[criteria.x]", ""),
    ],
)
def test_malformed_policy_is_refused_naming_the_field(tmp_path, old, new, field):
    path = write_policy(tmp_path, old, new)
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert str(path) in str(refused.value)
    assert field in str(refused.value)


def test_policy_that_is_not_toml_is_refused(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("id = ")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


def test_missing_policy_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="cannot be read"):
        load_policy(tmp_path / "absent.toml")
