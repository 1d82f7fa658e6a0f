"""The clinical event contract (CONTRACT.md): what `parse_event` accepts, and what it rejects, why.

Every rejection names the field at fault by its dotted path and gives a reason a hospital
integrator can act on, without ever echoing the offending value back.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from shared.contract import EVENT_MODELS, ContractViolation, parse_event
from tests.samples import CONTRACT_EXAMPLE, MISSING, SAMPLE_DATA, valid_event

CONDITION = "pain.condition.recorded.v1"
SCORE = "pain.score.recorded.v1"
STARTED = "pain.trial.started.v1"
DOSE_CHANGED = "pain.trial.dose_changed.v1"
STOPPED = "pain.trial.stopped.v1"
SIDE_EFFECT = "pain.side_effect.reported.v1"
ASSESSMENT = "pain.assessment.recorded.v1"
DIAGNOSTIC = "pain.diagnostic.resulted.v1"
RETRACTED = "pain.event.retracted.v1"


def violations(raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ContractViolation) as caught:
        parse_event(raw)
    return [(violation.field, violation.reason) for violation in caught.value.violations]


def assert_rejected(raw: Any, field: str, reason_mentions: str) -> None:
    """`raw` breaks exactly one rule, at `field`, with a reason that says which."""
    found = violations(raw)
    assert [field for field, _ in found] == [field], found
    assert reason_mentions.lower() in found[0][1].lower(), found


def with_json_literal(event: dict[str, Any], placeholder: str, literal: str) -> str:
    """The event's JSON text with a string value replaced by a bare literal (NaN, Infinity...)."""
    return json.dumps(event).replace(json.dumps(placeholder), literal)


# --- accepted -------------------------------------------------------------------------------


def test_the_contract_example_parses() -> None:
    event = parse_event(CONTRACT_EXAMPLE)

    assert event.type == "pain.trial.started.v1"
    assert event.key == ("urn:hospital:st-olaf:ehr", "evt-0001")
    assert event.patient_id == "p-1842"
    assert event.data.daily_dose == 900
    assert event.time.utcoffset() == timedelta(hours=1)


def test_there_is_a_sample_of_every_event_type() -> None:
    assert set(SAMPLE_DATA) == set(EVENT_MODELS)


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_a_valid_event_of_every_type_parses(event_type: str) -> None:
    event = parse_event(valid_event(event_type))

    assert isinstance(event, EVENT_MODELS[event_type])
    assert event.data.patient_id == "p-1842"


@pytest.mark.parametrize(
    "encode",
    [json.dumps, lambda event: json.dumps(event).encode(), lambda event: event],
    ids=["str", "bytes", "decoded"],
)
def test_json_text_bytes_and_decoded_values_parse_alike(encode: Any) -> None:
    event = parse_event(encode(CONTRACT_EXAMPLE))

    assert event == parse_event(CONTRACT_EXAMPLE)


@pytest.mark.parametrize(
    "time",
    ["2026-03-02T09:30:00Z", "2026-03-02T09:30:00.123456-05:00", "2026-03-02T09:30:00+00:00"],
)
def test_a_time_with_an_offset_is_accepted(time: str) -> None:
    assert parse_event(valid_event(SCORE, time=time)).time.tzinfo is not None


@pytest.mark.parametrize(
    "patient_id",
    ["a" * 64, "A", "urn:pat.0_9-Z", "0123456789"],
    ids=["exactly-64-chars", "one-char", "every-punctuation-allowed", "digits"],
)
def test_patient_ids_within_the_pattern_are_accepted(patient_id: str) -> None:
    assert parse_event(valid_event(SCORE, patient_id=patient_id)).patient_id == patient_id


@pytest.mark.parametrize(
    ("instrument", "score"),
    [
        (MISSING, 0),
        (MISSING, 10),
        ("nrs", 4),
        ("nrs", 4.0),
        ("vas", 0),
        ("vas", 100),
        ("vas", 55.5),
        ("peg", 0),
        ("peg", 6.67),
        ("peg", 10),
    ],
    ids=[
        "default-nrs-0",
        "default-nrs-10",
        "nrs-4",
        "nrs-4.0",
        "vas-0",
        "vas-100",
        "vas-55.5",
        "peg-0",
        "peg-6.67",
        "peg-10",
    ],
)
def test_scores_within_the_instruments_range_are_accepted(instrument: Any, score: float) -> None:
    event = parse_event(valid_event(SCORE, instrument=instrument, score=score))

    assert event.data.score == Decimal(str(score))


def test_the_instrument_defaults_to_nrs() -> None:
    assert parse_event(valid_event(SCORE, instrument=MISSING)).data.instrument == "nrs"


@pytest.mark.parametrize(
    ("instrument", "score", "score_0_10"),
    [("vas", 73, 7.3), ("vas", 100, 10), ("nrs", 7, 7), ("peg", 6.5, 6.5)],
    ids=["vas-divided-by-10", "vas-top-of-scale", "nrs-as-is", "peg-as-is"],
)
def test_score_0_10_puts_every_instrument_on_one_scale(
    instrument: str, score: float, score_0_10: float
) -> None:
    event = parse_event(valid_event(SCORE, instrument=instrument, score=score))

    assert event.data.score_0_10 == Decimal(str(score_0_10))


@pytest.mark.parametrize(
    "attribution",
    [{"trial_id": "t-7"}, {"drug": "gabapentin"}, {"trial_id": "t-7", "drug": "gabapentin"}],
    ids=["trial-id-only", "drug-only", "both"],
)
def test_a_side_effect_needs_only_a_trial_or_a_drug(attribution: dict[str, str]) -> None:
    data = parse_event(valid_event(SIDE_EFFECT, **({"trial_id": MISSING} | attribution))).data

    assert (data.trial_id, data.drug) == (attribution.get("trial_id"), attribution.get("drug"))


def test_a_side_effect_is_tolerable_unless_said_otherwise() -> None:
    assert parse_event(valid_event(SIDE_EFFECT)).data.intolerable is False
    assert parse_event(valid_event(SIDE_EFFECT, intolerable=True)).data.intolerable is True


def test_the_onset_date_is_a_calendar_date() -> None:
    event = parse_event(valid_event(CONDITION, onset_date="2024-02-29"))

    assert event.data.onset_date == date(2024, 2, 29)


@pytest.mark.parametrize("relief_percent", [0, 50.5, 100])
def test_relief_percent_from_0_to_100_is_accepted(relief_percent: float) -> None:
    event = parse_event(valid_event(DIAGNOSTIC, relief_percent=relief_percent))

    assert event.data.relief_percent == relief_percent


def test_unknown_fields_in_data_are_kept_and_ignored() -> None:
    extra = {"ward": "4B", "nested": {"a": [1, 2]}}

    event = parse_event(valid_event(SCORE, **extra))

    assert event.data.model_extra == extra
    assert event.data.score == 7


def test_cloudevents_extension_attributes_are_kept() -> None:
    event = parse_event(valid_event(SCORE) | {"traceparent": "00-abc-def-01"})

    assert event.model_extra == {"traceparent": "00-abc-def-01"}


# --- rejected: the envelope -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "reason_mentions"),
    [
        pytest.param({"specversion": "0.3"}, "specversion", "'1.0'", id="specversion-0.3"),
        pytest.param({"specversion": 1.0}, "specversion", "'1.0'", id="specversion-number"),
        pytest.param({"specversion": MISSING}, "specversion", "required", id="no-specversion"),
        pytest.param({"id": MISSING}, "id", "required", id="no-id"),
        pytest.param({"id": ""}, "id", "at least 1 character", id="empty-id"),
        pytest.param({"id": 42}, "id", "string", id="id-number"),
        pytest.param({"source": MISSING}, "source", "required", id="no-source"),
        pytest.param({"source": ""}, "source", "at least 1 character", id="empty-source"),
        pytest.param({"type": MISSING}, "type", "required", id="no-type"),
        pytest.param({"type": "pain.score.recorded.v2"}, "type", "unknown", id="unknown-type"),
        pytest.param({"type": 7}, "type", "unknown", id="type-number"),
        pytest.param({"time": MISSING}, "time", "required", id="no-time"),
        pytest.param({"time": "2026-03-02T09:30:00"}, "time", "offset", id="time-no-offset"),
        pytest.param({"time": 1772440200}, "time", "RFC 3339", id="time-number"),
        pytest.param({"time": "2026-03-02"}, "time", "RFC 3339", id="time-date-only"),
        pytest.param({"time": "2026-13-02T09:30:00Z"}, "time", "RFC 3339", id="time-month-13"),
        pytest.param({"time": "yesterday"}, "time", "RFC 3339", id="time-words"),
        pytest.param({"time": "2026-03-02T09:30Z"}, "time", "RFC 3339", id="time-no-seconds"),
        pytest.param(
            {"time": "2026-03-02T09:30:00+0100"}, "time", "RFC 3339", id="offset-no-colon"
        ),
        pytest.param(
            {"datacontenttype": "text/xml"}, "datacontenttype", "application/json", id="xml"
        ),
        pytest.param({"data": MISSING}, "data", "required", id="no-data"),
        pytest.param({"data": [1, 2]}, "data", "object", id="data-array"),
        pytest.param({"data": "p-1842"}, "data", "object", id="data-string"),
    ],
)
def test_an_envelope_breaking_the_contract_is_rejected(
    overrides: dict[str, Any], field: str, reason_mentions: str
) -> None:
    assert_rejected(valid_event(SCORE, **overrides), field, reason_mentions)


def test_an_unknown_type_reason_lists_the_known_types() -> None:
    [(_, reason)] = violations(valid_event(SCORE, type="pain.score.recorded.v9"))

    assert all(event_type in reason for event_type in EVENT_MODELS)


# --- rejected: patient_id -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patient_id", "reason_mentions"),
    [
        pytest.param(MISSING, "required", id="missing"),
        pytest.param("", "pattern", id="empty"),
        pytest.param("a" * 65, "pattern", id="65-chars"),
        pytest.param("p 1842", "pattern", id="space"),
        pytest.param("p/1842", "pattern", id="slash"),
        pytest.param("pé-1842", "pattern", id="non-ascii"),
        pytest.param("p-1842\n", "pattern", id="trailing-newline"),
        pytest.param(1842, "string", id="number"),
        pytest.param(None, "required", id="null"),
    ],
)
def test_a_patient_id_outside_the_pattern_is_rejected(
    patient_id: Any, reason_mentions: str
) -> None:
    assert_rejected(valid_event(SCORE, patient_id=patient_id), "data.patient_id", reason_mentions)


# --- rejected: enums ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "field", "a_known_value"),
    [
        (SCORE, "instrument", "nrs"),
        (STARTED, "dose_unit", "mg"),
        (DOSE_CHANGED, "dose_unit", "patch"),
        (STOPPED, "reason", "side_effects"),
        (SIDE_EFFECT, "severity", "life_threatening"),
        (ASSESSMENT, "kind", "neurological_exam"),
        (ASSESSMENT, "classification", "neuropathic"),
        (DIAGNOSTIC, "test", "medial_branch_block"),
        (DIAGNOSTIC, "result", "inconclusive"),
    ],
    ids=lambda value: value.removeprefix("pain.") if isinstance(value, str) else value,
)
def test_an_unknown_enum_value_is_rejected_naming_the_known_ones(
    event_type: str, field: str, a_known_value: str
) -> None:
    assert_rejected(
        valid_event(event_type, **{field: "not-in-the-contract"}), f"data.{field}", a_known_value
    )


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        (SCORE, "instrument", "NRS"),
        (STARTED, "dose_unit", "MG"),
        (STOPPED, "reason", "Ineffective"),
        (DIAGNOSTIC, "test", "MRI"),
    ],
    ids=["instrument", "dose_unit", "reason", "test"],
)
def test_enum_values_are_case_sensitive(event_type: str, field: str, value: str) -> None:
    assert_rejected(valid_event(event_type, **{field: value}), f"data.{field}", "must be")


# --- rejected: scores -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instrument", "score", "reason_mentions"),
    [
        pytest.param("nrs", 10.5, "whole number from 0 to 10", id="nrs-10.5"),
        pytest.param("nrs", 11, "whole number from 0 to 10", id="nrs-11"),
        pytest.param("nrs", -1, "whole number from 0 to 10", id="nrs-minus-1"),
        pytest.param("nrs", 5.5, "whole number from 0 to 10", id="nrs-5.5-not-whole"),
        pytest.param(MISSING, 11, "nrs score", id="default-nrs-11"),
        pytest.param("vas", 100.5, "from 0 to 100", id="vas-100.5"),
        pytest.param("vas", -0.5, "from 0 to 100", id="vas-minus-0.5"),
        pytest.param("peg", 10.1, "from 0 to 10", id="peg-10.1"),
        pytest.param("peg", -0.1, "from 0 to 10", id="peg-minus-0.1"),
        pytest.param("nrs", "5", "must be a JSON number", id="score-as-string"),
        pytest.param("nrs", True, "must be a JSON number", id="score-as-boolean"),
        pytest.param("nrs", None, "required", id="score-null"),
        pytest.param("nrs", MISSING, "required", id="no-score"),
    ],
)
def test_a_score_outside_its_instruments_range_is_rejected(
    instrument: Any, score: Any, reason_mentions: str
) -> None:
    assert_rejected(
        valid_event(SCORE, instrument=instrument, score=score), "data.score", reason_mentions
    )


def test_an_unknown_instrument_is_the_only_fault_reported_for_a_score() -> None:
    found = violations(valid_event(SCORE, instrument="likert", score=3))

    assert [field for field, _ in found] == ["data.instrument"]


# --- rejected: trials -----------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [STARTED, DOSE_CHANGED])
@pytest.mark.parametrize(
    ("daily_dose", "reason_mentions"),
    [
        pytest.param(0, "greater than 0", id="zero"),
        pytest.param(-300, "greater than 0", id="negative"),
        pytest.param("900", "must be a JSON number", id="string"),
        pytest.param(True, "must be a JSON number", id="boolean"),
        pytest.param(MISSING, "required", id="missing"),
    ],
)
def test_a_daily_dose_that_is_not_a_positive_number_is_rejected(
    event_type: str, daily_dose: Any, reason_mentions: str
) -> None:
    assert_rejected(
        valid_event(event_type, daily_dose=daily_dose), "data.daily_dose", reason_mentions
    )


@pytest.mark.parametrize(
    ("event_type", "overrides", "field", "reason_mentions"),
    [
        pytest.param(STARTED, {"trial_id": MISSING}, "data.trial_id", "required", id="no-trial"),
        pytest.param(STARTED, {"trial_id": ""}, "data.trial_id", "at least 1", id="empty-trial"),
        pytest.param(STARTED, {"drug": MISSING}, "data.drug", "required", id="no-drug"),
        pytest.param(STARTED, {"drug": ""}, "data.drug", "at least 1", id="empty-drug"),
        pytest.param(STARTED, {"rxnorm": ""}, "data.rxnorm", "at least 1", id="empty-rxnorm"),
        pytest.param(STARTED, {"dose_unit": MISSING}, "data.dose_unit", "required", id="no-unit"),
        pytest.param(
            DOSE_CHANGED, {"trial_id": MISSING}, "data.trial_id", "required", id="change-no-trial"
        ),
        pytest.param(
            STOPPED, {"trial_id": MISSING}, "data.trial_id", "required", id="stop-no-trial"
        ),
        pytest.param(STOPPED, {"reason": MISSING}, "data.reason", "required", id="stop-no-reason"),
    ],
)
def test_a_trial_event_without_a_required_field_is_rejected(
    event_type: str, overrides: dict[str, Any], field: str, reason_mentions: str
) -> None:
    assert_rejected(valid_event(event_type, **overrides), field, reason_mentions)


# --- rejected: side effects -----------------------------------------------------------------


@pytest.mark.parametrize(
    "attribution",
    [{}, {"trial_id": None, "drug": None}],
    ids=["neither-given", "both-null"],
)
def test_a_side_effect_with_neither_trial_nor_drug_is_rejected(attribution: dict) -> None:
    event = valid_event(SIDE_EFFECT, **({"trial_id": MISSING} | attribution))

    assert_rejected(event, "data", "one of trial_id or drug is required")


@pytest.mark.parametrize(
    ("overrides", "field", "reason_mentions"),
    [
        pytest.param({"intolerable": "true"}, "data.intolerable", "boolean", id="intolerable-str"),
        pytest.param({"intolerable": 1}, "data.intolerable", "boolean", id="intolerable-1"),
        pytest.param({"effect": MISSING}, "data.effect", "required", id="no-effect"),
        pytest.param({"effect": ""}, "data.effect", "at least 1", id="empty-effect"),
        pytest.param({"severity": MISSING}, "data.severity", "required", id="no-severity"),
        pytest.param({"trial_id": ""}, "data.trial_id", "at least 1", id="empty-trial"),
    ],
)
def test_a_side_effect_breaking_the_contract_is_rejected(
    overrides: dict[str, Any], field: str, reason_mentions: str
) -> None:
    assert_rejected(valid_event(SIDE_EFFECT, **overrides), field, reason_mentions)


# --- rejected: condition, assessment, diagnostic, retraction --------------------------------


@pytest.mark.parametrize(
    ("event_type", "overrides", "field", "reason_mentions"),
    [
        pytest.param(
            CONDITION, {"onset_date": "2025-02-30"}, "data.onset_date", "day", id="no-feb-30"
        ),
        pytest.param(
            CONDITION,
            {"onset_date": "2025-06-01T00:00:00"},
            "data.onset_date",
            "YYYY-MM-DD",
            id="date-with-time",
        ),
        pytest.param(
            CONDITION, {"onset_date": "01/06/2025"}, "data.onset_date", "YYYY-MM-DD", id="dmy"
        ),
        pytest.param(
            CONDITION, {"onset_date": 20250601}, "data.onset_date", "date", id="date-number"
        ),
        pytest.param(
            CONDITION, {"onset_date": MISSING}, "data.onset_date", "required", id="no-onset"
        ),
        pytest.param(
            CONDITION, {"icd10_codes": "G89.4"}, "data.icd10_codes", "array", id="icd10-not-list"
        ),
        pytest.param(
            CONDITION,
            {"icd10_codes": ["G89.4", 894]},
            "data.icd10_codes[1]",
            "string",
            id="icd10-item-number",
        ),
        pytest.param(ASSESSMENT, {"kind": MISSING}, "data.kind", "required", id="no-kind"),
        pytest.param(
            ASSESSMENT, {"findings": ["normal"]}, "data.findings", "object", id="findings-list"
        ),
        pytest.param(
            DIAGNOSTIC,
            {"relief_percent": 101},
            "data.relief_percent",
            "less than or equal to 100",
            id="relief-101",
        ),
        pytest.param(
            DIAGNOSTIC,
            {"relief_percent": -1},
            "data.relief_percent",
            "greater than or equal to 0",
            id="relief-minus-1",
        ),
        pytest.param(
            DIAGNOSTIC, {"relief_percent": "80"}, "data.relief_percent", "number", id="relief-str"
        ),
        pytest.param(DIAGNOSTIC, {"test": MISSING}, "data.test", "required", id="no-test"),
        pytest.param(DIAGNOSTIC, {"result": MISSING}, "data.result", "required", id="no-result"),
        pytest.param(
            RETRACTED, {"retracted_id": MISSING}, "data.retracted_id", "required", id="no-target"
        ),
        pytest.param(
            RETRACTED, {"retracted_id": ""}, "data.retracted_id", "at least 1", id="empty-target"
        ),
    ],
)
def test_an_event_breaking_its_types_rules_is_rejected(
    event_type: str, overrides: dict[str, Any], field: str, reason_mentions: str
) -> None:
    assert_rejected(valid_event(event_type, **overrides), field, reason_mentions)


# --- rejected: not JSON, not finite, not an object ------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "reason_mentions"),
    [
        pytest.param(
            with_json_literal(valid_event(SCORE, score="X"), "X", "NaN"),
            "data.score",
            "finite",
            id="score-NaN",
        ),
        pytest.param(
            with_json_literal(valid_event(SCORE, score="X"), "X", "Infinity"),
            "data.score",
            "finite",
            id="score-Infinity",
        ),
        pytest.param(
            with_json_literal(valid_event(SCORE, score="X"), "X", "1e400"),
            "data.score",
            "finite",
            id="score-overflows-to-infinity",
        ),
        pytest.param(
            with_json_literal(valid_event(DIAGNOSTIC, relief_percent="X"), "X", "NaN"),
            "data.relief_percent",
            "finite",
            id="relief-NaN",
        ),
        pytest.param(
            valid_event(SCORE, score=float("nan")), "data.score", "finite", id="decoded-nan"
        ),
    ],
)
def test_a_number_that_is_not_finite_is_rejected(
    raw: Any, field: str, reason_mentions: str
) -> None:
    assert_rejected(raw, field, reason_mentions)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            with_json_literal(valid_event(ASSESSMENT, findings={"grip": "X"}), "X", "NaN"),
            "data.findings",
        ),
        (with_json_literal(valid_event(SCORE, ward="X"), "X", "Infinity"), "data.ward"),
        (with_json_literal(valid_event(SCORE, ward="X"), "X", "1e400"), "data.ward"),
    ],
    ids=["NaN-in-findings", "Infinity-in-an-unknown-field", "overflow-in-an-unknown-field"],
)
def test_a_non_json_number_anywhere_in_the_event_is_rejected(raw: str, field: str) -> None:
    assert_rejected(raw, field, "finite")


@pytest.mark.parametrize(
    ("raw", "reason_mentions"),
    [
        pytest.param(b"\xff\xfe\x00garbage", "not valid JSON", id="binary-garbage"),
        pytest.param(b"", "not valid JSON", id="empty-bytes"),
        pytest.param(json.dumps(CONTRACT_EXAMPLE)[:-10], "not valid JSON", id="truncated"),
        pytest.param("{'specversion': '1.0'}", "not valid JSON", id="python-repr"),
        pytest.param(json.dumps([CONTRACT_EXAMPLE]), "object", id="json-array"),
        pytest.param([CONTRACT_EXAMPLE], "object", id="decoded-list"),
        pytest.param("null", "object", id="json-null"),
        pytest.param('"pain.trial.started.v1"', "object", id="json-string"),
        pytest.param({1, 2}, "not valid JSON", id="not-json-at-all"),
    ],
)
def test_input_that_is_not_a_json_object_is_rejected_as_a_whole(
    raw: Any, reason_mentions: str
) -> None:
    assert_rejected(raw, "(event)", reason_mentions)


# --- how violations are reported ------------------------------------------------------------


def test_every_violation_of_an_event_is_reported_at_once() -> None:
    event = valid_event(
        STARTED, specversion="2.0", id=MISSING, patient_id="p 1", daily_dose=-5, dose_unit="g"
    )

    found = [field for field, _ in violations(event)]

    assert found == ["specversion", "id", "data.patient_id", "data.daily_dose", "data.dose_unit"]


def test_the_violation_message_names_field_and_reason() -> None:
    with pytest.raises(ContractViolation) as caught:
        parse_event(valid_event(STARTED, daily_dose=0, dose_unit="g"))

    message = str(caught.value)
    assert message.startswith("data.daily_dose: ")
    assert "; data.dose_unit: " in message


SECRET = "SECRET-PATIENT-42"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(valid_event(SCORE, patient_id=f"{SECRET} !"), id="patient-id-bad-char"),
        pytest.param(valid_event(SCORE, patient_id=SECRET * 4), id="patient-id-too-long"),
        pytest.param(valid_event(SCORE, type=SECRET), id="unknown-type"),
        pytest.param(valid_event(SCORE, specversion=SECRET), id="specversion"),
        pytest.param(valid_event(SCORE, time=SECRET), id="time"),
        pytest.param(valid_event(SCORE, time=f"2026-03-02T{SECRET}"), id="time-partly-valid"),
        pytest.param(valid_event(SCORE, score=SECRET), id="score"),
        pytest.param(valid_event(SIDE_EFFECT, severity=SECRET), id="enum"),
        pytest.param(valid_event(CONDITION, onset_date=SECRET), id="date"),
        pytest.param(valid_event(SIDE_EFFECT, intolerable=SECRET), id="boolean"),
        pytest.param(valid_event(SCORE, data=SECRET), id="data-not-object"),
        pytest.param(json.dumps(valid_event(SCORE, patient_id=SECRET))[:-3], id="truncated-json"),
        pytest.param(SECRET, id="bare-text"),
    ],
)
def test_a_violation_never_repeats_the_offending_value(raw: Any) -> None:
    with pytest.raises(ContractViolation) as caught:
        parse_event(raw)

    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.violations)


def test_pydantic_wording_reads_like_the_contracts_own() -> None:
    """A type error says "must be ...", as every other reason does, never pydantic's "Input
    should be ..."."""
    for event in (
        valid_event(SCORE, score="5"),
        valid_event(SCORE, instrument="likert"),
        valid_event(SCORE, patient_id=5),
    ):
        for _, reason in violations(event):
            assert reason.startswith("must "), reason
    assert violations(valid_event(SCORE, score="5")) == [
        ("data.score", "must be a JSON number, not a string or a boolean")
    ]
