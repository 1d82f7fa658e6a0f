"""docs/policy/README.md, the policy as text, says what the default policy file holds.

The formulary table is read back row by row and compared with the formulary of
`services/classifier/policies/default-v1.toml` (through `load_policy()`), in both directions: a
drug added, removed or changed on either side fails. The numbers the text quotes (the windows,
the offset, the threshold, the overlap, the treatment criteria, the parts of a complete
assessment) are read from their sentences and compared with the policy's settings, and any other
"N days" or "N %" in the text must be one of the settings too, so that no number is written
without being checked. The score of 1 that starts the pain, which the text says the code holds,
is compared with the code's. The outcomes, statuses and determination fields named must exist,
and so must the modules and files the text points to.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.classifier.pain_duration import _PAINFUL
from services.classifier.policy import (
    DEFAULT_CRITERIA,
    DEFAULT_POLICY_PATH,
    FormularyDrug,
    TreatmentCriteria,
    load_policy,
)
from shared.contract import Determination, Reason, Status, Trial, TrialOutcome
from shared.settings import Settings
from tests import markdown

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT_PATH = REPO_ROOT / "docs/policy/README.md"
TEXT = TEXT_PATH.read_text(encoding="utf-8")
POLICY = load_policy()

TABLE_HEADER = ["drug", "RXCUI", "class", "line", "minimum dose", "unit", "minimum days at dose"]


# --- reading the text -------------------------------------------------------------------------


def _flat(text: str) -> str:
    """The text with every run of whitespace made one space, so sentences read across lines."""
    return re.sub(r"\s+", " ", text)


def _sections() -> dict[str, str]:
    """The text under each `## ` heading, by heading."""
    parts = re.split(r"^## (.+)$", TEXT, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


SECTIONS = _sections()


def _section(number: str) -> str:
    """The body of the section whose heading starts with `number` (e.g. "2."), flattened."""
    return _flat(_body_of(number))


def _one(pattern: str, text: str) -> tuple[str, ...]:
    """The groups of the one match of `pattern` in `text`."""
    matches = list(re.finditer(pattern, text))
    assert len(matches) == 1, f"expected one sentence matching {pattern!r}, found {len(matches)}"
    return matches[0].groups()


def _table(body: str) -> list[dict[str, str]]:
    """The formulary table of `body`, its header checked."""
    rows = markdown.table(body)
    assert rows and list(rows[0]) == TABLE_HEADER
    return rows


def _documented_row(row: dict[str, str]) -> dict[str, Any]:
    """One table row as the policy's settings: numbers as numbers, an empty RXCUI as None."""
    dose = row["minimum dose"]
    assert dose == "any" or re.fullmatch(r"\d+(\.\d+)?", dose), f"minimum dose {dose!r}"
    assert re.fullmatch(r"\d+", row["line"]) and re.fullmatch(r"\d+", row["minimum days at dose"])
    return {
        "drug": row["drug"],
        "rxcui": row["RXCUI"] or None,
        "class": row["class"],
        "line": int(row["line"]),
        "minimum_dose": dose if dose == "any" else Decimal(dose),
        "unit": row["unit"],
        "minimum_days": int(row["minimum days at dose"]),
    }


def _body_of(number: str) -> str:
    """The raw body of the section whose heading starts with `number` (e.g. "2.")."""
    (body,) = [body for heading, body in SECTIONS.items() if heading.startswith(number + " ")]
    return body


def _bullets(number: str) -> list[str]:
    """The `- ` items of a section, each on one line (its indented continuation lines joined)."""
    items: list[str] = []
    continued = False
    for line in _body_of(number).splitlines():
        if line.startswith("- "):
            items.append(line[2:].strip())
            continued = True
        elif continued and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
        else:
            continued = False
    return items


DOCUMENTED = [_documented_row(row) for row in _table(_body_of("2."))]
DOCUMENTED_BY_DRUG = {row["drug"]: row for row in DOCUMENTED}


def _policy_row(drug: FormularyDrug) -> dict[str, Any]:
    dose = drug.minimum_dose
    return {
        "drug": drug.drug,
        "rxcui": drug.rxcui,
        "class": drug.drug_class,
        "line": drug.line,
        "minimum_dose": dose if dose == "any" else Decimal(str(dose)),
        "unit": drug.unit.value,
        "minimum_days": drug.minimum_days,
    }


POLICY_BY_DRUG = {drug.drug: _policy_row(drug) for drug in POLICY.formulary}


def _days(text: str) -> int:
    return int(text)


THRESHOLD = Decimal(str(POLICY.response_threshold))


# --- the formulary ----------------------------------------------------------------------------


def test_the_table_lists_every_drug_of_the_policy_and_no_other() -> None:
    documented = [row["drug"] for row in DOCUMENTED]

    assert len(documented) == len(set(documented)), "a drug is listed twice"
    assert not set(POLICY_BY_DRUG) - set(documented), "in the policy file, not in the table"
    assert not set(documented) - set(POLICY_BY_DRUG), "in the table, not in the policy file"


@pytest.mark.parametrize("drug", list(POLICY_BY_DRUG))
def test_each_row_is_the_policy_s_drug(drug: str) -> None:
    assert DOCUMENTED_BY_DRUG.get(drug) == POLICY_BY_DRUG[drug]


def test_the_rows_are_in_the_order_of_the_policy_file() -> None:
    assert [row["drug"] for row in DOCUMENTED] == list(POLICY_BY_DRUG)


def test_the_drugs_dosed_per_application_are_the_policy_s() -> None:
    (bullet,) = [item for item in _bullets("2.") if "dose of the one application" in item]
    named = set(re.findall(r"`([a-z0-9_]+)`", bullet.split(", `daily_dose`")[0]))

    assert named == {drug.drug for drug in POLICY.formulary if drug.dose_per == "application"}


# --- the numbers ------------------------------------------------------------------------------


def test_chronic_and_the_current_pain_window() -> None:
    section = _section("1.")

    assert _days(*_one(r"Chronic: `pain_days` >= (\d+)\.", section)) == POLICY.chronic_days
    window = _days(*_one(r"median of the scores in \(T - (\d+) days, T\]", section))
    assert window == POLICY.current_pain_window_days


def test_the_pain_start_score_is_the_code_s() -> None:
    (score,) = _one(r"the first score >= (\d+(?:\.\d+)?) and", _section("1."))

    assert Decimal(score) == Decimal(str(_PAINFUL))


def test_the_baseline_window_and_the_on_treatment_offset() -> None:
    section = _section("3.")

    baseline = _one(r"Baseline: median of the scores in \[start - (\d+) days, start\]", section)
    assert _days(*baseline) == POLICY.baseline_window_days
    offset = _one(r"\[adequate period start \+ (\d+) days, adequate period end\]", section)
    assert _days(*offset) == POLICY.on_treatment_offset_days


def test_the_response_threshold() -> None:
    outcomes = _section("3.")
    fraction, percent = _one(
        r"`responded`: reduction >= (\d+\.\d+) \((\d+(?:\.\d+)?) %\)", outcomes
    )
    (below,) = _one(r"the reduction is below (\d+\.\d+)\.", _section("4."))

    assert Decimal(fraction) == THRESHOLD
    assert Decimal(percent) == THRESHOLD * 100
    assert Decimal(below) == THRESHOLD


def test_every_percentage_is_the_response_threshold() -> None:
    percentages = re.findall(r"(\d+(?:\.\d+)?) ?%", _flat(TEXT))

    assert percentages and {Decimal(p) for p in percentages} == {THRESHOLD * 100}


def test_the_combination_overlap_and_its_offset() -> None:
    section = _section("4.")

    overlap = _one(r"adequate periods overlap for at least (\d+) days", section)
    assert _days(*overlap) == POLICY.combination_overlap_days
    offset = _one(r"\[overlap start \+ (\d+) days, overlap end\]", section)
    assert _days(*offset) == POLICY.on_treatment_offset_days


def test_the_durations_named_in_the_evaluation_rules() -> None:
    section = _flat(SECTIONS["Evaluation as of T"])

    assert _days(*_one(r"the (\d+)-day overlap", section)) == POLICY.combination_overlap_days
    assert _days(*_one(r"the (\d+)-day offset", section)) == POLICY.on_treatment_offset_days
    windows = _days(*_one(r"the (\d+)-day windows", section))
    assert windows == POLICY.current_pain_window_days == POLICY.baseline_window_days


def test_the_days_at_which_status_changes_with_time() -> None:
    days = _one(r"as time passes \(at (\d+) days, at (\d+) days,", _section("7."))

    assert {_days(d) for d in days} == {POLICY.chronic_days} | {
        criteria.min_pain_days for criteria in POLICY.criteria.values()
    }


def test_every_number_of_days_is_a_setting() -> None:
    settings = {
        POLICY.chronic_days,
        POLICY.current_pain_window_days,
        POLICY.baseline_window_days,
        POLICY.on_treatment_offset_days,
        POLICY.combination_overlap_days,
        *(criteria.min_pain_days for criteria in POLICY.criteria.values()),
        *(drug.minimum_days for drug in POLICY.formulary),
    }
    mentioned = {int(n) for n in re.findall(r"\b(\d+)(?:-day\b| days?\b)", _flat(TEXT))}

    assert mentioned and mentioned <= settings, f"not settings: {sorted(mentioned - settings)}"


# --- the treatment criteria -------------------------------------------------------------------

_BY_CLASSIFICATION = (
    r"Classification `(\w+)` \(judged by this rule only\): `pain_days` >= (\d+), at least (\d+) "
    r"failed drugs, current pain >= (\d+(?:\.\d+)?)\."
)
_DEFAULT = (
    r"Any other classification, or none: chronic \(`pain_days` >= (\d+)\), at least (\d+) failed "
    r"drugs in at least (\d+) classes, at least (\d+) failed combination trials?, current pain >= "
    r"(\d+(?:\.\d+)?)\."
)


def _documented_criteria() -> dict[str, TreatmentCriteria]:
    bullets = _bullets("6.")
    criteria = {}
    for bullet in bullets:
        if match := re.fullmatch(_BY_CLASSIFICATION, bullet):
            name, days, drugs, pain = match.groups()
            criteria[name] = TreatmentCriteria(
                min_pain_days=int(days), min_failed_drugs=int(drugs), min_current_pain=float(pain)
            )
        elif match := re.fullmatch(_DEFAULT, bullet):
            days, drugs, classes, combinations, pain = match.groups()
            criteria[DEFAULT_CRITERIA] = TreatmentCriteria(
                min_pain_days=int(days),
                min_failed_drugs=int(drugs),
                min_failed_classes=int(classes),
                min_failed_combinations=int(combinations),
                min_current_pain=float(pain),
            )
        else:
            pytest.fail(f"a treatment criteria bullet the test cannot read: {bullet!r}")
    assert len(criteria) == len(bullets), "a classification is listed twice"
    return criteria


def test_the_treatment_criteria_are_the_policy_s() -> None:
    documented = {name: c.model_dump() for name, c in _documented_criteria().items()}

    assert documented == {name: c.model_dump() for name, c in POLICY.criteria.items()}


def test_chronic_in_the_default_criteria_is_the_chronic_setting() -> None:
    """The text says "chronic" for the default criteria's pain days: they must be one number."""
    assert POLICY.criteria[DEFAULT_CRITERIA].min_pain_days == POLICY.chronic_days


# --- assessment, outcomes, status, determination ----------------------------------------------


def test_the_parts_of_a_complete_assessment_are_the_policy_s() -> None:
    section = _section("5.")
    required = [part.value for part in POLICY.required_assessment]

    (named,) = _one(r"the missing parts are named, any of: ((?:`\w+`(?:, )?)+)\.", section)
    assert re.findall(r"`(\w+)`", named) == required
    (complete,) = _one(r"Assessment complete: ([^.]+)\.", section)
    parts = set(re.findall(r"`(\w+)`", complete))
    parts |= {"classification"} if "a classification given" in complete else set()
    parts |= {"diagnostic"} if "at least one diagnostic resulted" in complete else set()
    assert parts == set(required)


def _numbered_items(section: str) -> list[str]:
    return re.findall(r"^\d+\. (.+)$", _body_of(section), flags=re.MULTILINE)


def test_the_outcomes_are_the_trial_outcomes() -> None:
    items = _numbered_items("3.")
    named = {name for item in items for name in re.findall(r"`(\w+)`", item)}

    assert len(items) == 5 and named == {outcome.value for outcome in TrialOutcome}


def test_the_statuses_are_the_statuses() -> None:
    named = [re.match(r"`(\w+)`", item)[1] for item in _numbered_items("7.")]

    assert sorted(named) == sorted(status.value for status in Status)


def test_the_determination_fields_named_exist() -> None:
    (paragraph,) = _one(r"A determination carries at least: ([^.]+)\.", _section("7."))
    named = set(re.findall(r"`(\w+)`", paragraph))
    fields = set(Determination.model_fields) | set(Trial.model_fields) | set(Reason.model_fields)

    assert named and named <= fields, f"not fields: {sorted(named - fields)}"


# --- the policy file and where the rules live ---------------------------------------------------


def test_the_policy_file_and_how_to_give_another() -> None:
    intro = _flat(TEXT.split("\n## ")[0])
    relative = DEFAULT_POLICY_PATH.relative_to(REPO_ROOT).as_posix()

    assert TEXT.splitlines()[0] == f"# Refractory-pain policy, `{POLICY.id}`"
    assert f"Every number on this page is a setting of the policy file `{relative}`" in intro
    assert "--policy FILE" in intro and '"--policy"' in (REPO_ROOT / "painpath/cli.py").read_text()
    assert "`CLASSIFIER_POLICY_FILE`" in intro and "classifier_policy_file" in Settings.model_fields


def test_the_modules_named_exist() -> None:
    modules = set(re.findall(r"`([\w/-]+\.(?:py|toml))`", _flat(TEXT)))

    assert modules
    places = (REPO_ROOT, REPO_ROOT / "services/classifier", DEFAULT_POLICY_PATH.parent)
    for module in modules:
        assert any((place / module).is_file() for place in places), module
