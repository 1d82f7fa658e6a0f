"""The contract at its edges (CONTRACT.md, issue 11): each rule, accepted or refused by field.

The same table (`tests/contract_edges.py`) is fed to the gateway, the stream and `painpath
classify` by the integration tests; here it goes through `parse_event`, the one way in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.classifier.history import Admission, PatientHistory
from shared.contract import ContractViolation, json_text, parse_event
from shared.contract.instant import Instant, parse_time
from tests.contract_edges import EDGES, Edge


@pytest.mark.parametrize("edge", EDGES, ids=[edge.name for edge in EDGES])
def test_an_edge_of_the_contract_is_accepted_or_refused_naming_its_field(edge: Edge) -> None:
    if edge.accepted:
        parse_event(edge.text)
        return
    with pytest.raises(ContractViolation) as caught:
        parse_event(edge.text)
    fields = [violation.field for violation in caught.value.violations]
    assert fields == [edge.field], caught.value.violations
    assert edge.reason.lower() in caught.value.violations[0].reason.lower()


@pytest.mark.parametrize("edge", [e for e in EDGES if not e.accepted], ids=lambda e: e.name)
def test_a_refusal_never_repeats_the_value(edge: Edge) -> None:
    with pytest.raises(ContractViolation) as caught:
        parse_event(edge.text)
    assert "edge-p" not in str(caught.value)


def test_an_optional_null_is_the_field_left_out() -> None:
    sent_null = parse_event(
        '{"specversion": "1.0", "id": "e", "source": "s", "type": "pain.side_effect.reported.v1",'
        ' "time": "2026-01-10T10:00:00Z", "data": {"patient_id": "p", "drug": "gabapentin",'
        ' "effect": "somnolence", "severity": "severe", "intolerable": null}}'
    )
    assert sent_null.data.intolerable is False
    score = parse_event(
        '{"specversion": "1.0", "id": "e", "source": "s", "type": "pain.score.recorded.v1",'
        ' "time": "2026-01-10T10:00:00Z", "data": {"patient_id": "p", "score": 4,'
        ' "instrument": null}}'
    )
    assert score.data.instrument == "nrs"


def test_a_score_is_the_decimal_it_was_sent_as() -> None:
    event = parse_event(
        '{"specversion": "1.0", "id": "e", "source": "s", "type": "pain.score.recorded.v1",'
        ' "time": "2026-01-10T10:00:00Z", "data": {"patient_id": "p",'
        ' "score": 49.99999999999999999999, "instrument": "vas"}}'
    )
    assert event.data.score == Decimal("49.99999999999999999999")
    assert event.data.score_0_10 == Decimal("4.999999999999999999999")
    assert event.data.score_0_10 < 5


def test_a_time_past_the_microsecond_orders_after_the_microsecond() -> None:
    tenth = parse_time("2026-01-10T10:00:00.0000001Z")
    whole = datetime(2026, 1, 10, 10, tzinfo=UTC)
    assert isinstance(tenth, Instant)
    assert whole < tenth and tenth > whole and not tenth <= whole and tenth != whole
    assert tenth < whole + timedelta(microseconds=1)
    assert parse_time("2026-01-10T10:00:00.00000005Z") < tenth
    assert parse_time("2026-01-10T11:00:00.0000001+01:00") == tenth
    assert tenth.isoformat() == "2026-01-10T10:00:00.0000001+00:00"


def test_a_duration_between_instants_compares_exactly_with_whole_days() -> None:
    start = parse_time("2026-01-10T10:00:00.0000001Z")
    assert (start + timedelta(days=28)) - start >= timedelta(days=28)
    assert datetime(2026, 2, 7, 10, tzinfo=UTC) - start < timedelta(days=28)
    assert parse_time("2026-02-07T10:00:00.0000002Z") - start >= timedelta(days=28)


def test_a_six_digit_fraction_stays_a_plain_datetime() -> None:
    assert type(parse_time("2026-01-10T10:00:00.123456Z")) is datetime
    assert type(parse_time("2026-01-10T10:00:00.1234560000Z")) is datetime


def test_the_canonical_content_keeps_the_old_form_of_floats_and_tells_exact_numbers_apart():
    assert json_text.canonical(json_text.decode(b'{"b": 900.0, "a": 5.00, "c": 0.3}')) == (
        '{"a":5.0,"b":900.0,"c":0.3}'
    )
    exact = json_text.canonical(json_text.decode(b'{"a": 5.0000000000000000001}'))
    assert exact != json_text.canonical(json_text.decode(b'{"a": 5.0}'))


def test_a_batch_with_a_repeated_name_in_one_event_keeps_the_others() -> None:
    body = b'[{"a": 1}, {"b": 1, "b": 2}, {"c": [1, 2]}]'
    assert json_text.decode_batch(body) == [b'{"a": 1}', b'{"b": 1, "b": 2}', b'{"c": [1, 2]}']


@pytest.mark.parametrize(
    "body",
    [b'[{"a": 1}, {"b": }]', b'[{"a": 1},, {"b": 1}]', b'[{"a": 1}] x', b'{"a": 1, "a"', b"\xff"],
    ids=["bad-element", "empty-element", "trailing", "truncated-object", "not-utf8"],
)
def test_a_body_that_is_not_json_is_refused_as_a_whole(body: bytes) -> None:
    with pytest.raises(json_text.JsonTextError):
        json_text.decode_batch(body)


def test_an_event_sent_again_with_null_for_a_field_it_left_out_is_the_same_event() -> None:
    left_out = (
        '{"specversion": "1.0", "id": "e", "source": "s", "type": "pain.score.recorded.v1",'
        ' "time": "2026-01-10T10:00:00Z", "data": {"patient_id": "p", "score": 4}}'
    )
    sent_null = left_out.replace('"score": 4', '"instrument": null, "score": 4')
    other = left_out.replace('"score": 4', '"score": 4.0000000000000000001, "instrument": "vas"')
    history = PatientHistory()

    assert history.admit(parse_event(left_out), left_out) is Admission.NEW
    assert history.admit(parse_event(sent_null), sent_null) is Admission.DUPLICATE
    assert history.admit(parse_event(other), other) is Admission.CONFLICT


@pytest.mark.parametrize("edge", [e for e in EDGES if e.accepted], ids=lambda e: e.name)
def test_an_accepted_events_json_form_is_accepted_again(edge: Edge) -> None:
    event = parse_event(edge.text)

    assert parse_event(event.model_dump_json(exclude_none=True)).key == event.key


def test_one_source_and_id_in_two_patients_streams_is_two_events_one_in_each() -> None:
    from services.classifier.offline import read_histories

    first = (
        '{"specversion": "1.0", "id": "e-1", "source": "s", "type": "pain.score.recorded.v1",'
        ' "time": "2026-01-10T10:00:00Z", "data": {"patient_id": "p-a", "score": 4}}'
    )
    second = first.replace('"p-a"', '"p-b"').replace('"score": 4', '"score": 7')
    again_other_content = first.replace('"score": 4', '"score": 5')

    histories, refused = read_histories([first, second, again_other_content])

    assert {patient: len(history.raw) for patient, history in histories.items()} == {
        "p-a": 1,
        "p-b": 1,
    }
    assert [(bad.line, bad.reason.split(":")[0]) for bad in refused] == [(3, "id")]


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (b'[{"a": 1}, {"b": [1, [2]]}]', True),
        (b'{"a": "\\u00e9"}', False),
        (b"[" + b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}]", True),
        (b"[" + b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}]", False),
        (b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}", True),
        (b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}", False),
        (b'{"a": "' + b"[" * 40 + b'"}', True),
    ],
    ids=[
        "shallow",
        "escape",
        "batch-32-deep",
        "batch-33-deep",
        "event-32-deep",
        "event-33-deep",
        "brackets-in-text",
    ],
)
def test_a_plain_body_is_one_whose_events_no_walk_can_refuse(body: bytes, plain: bool) -> None:
    assert json_text.plain(body) is plain
    for item in json_text.decode_batch(body):
        deep = bool(json_text.check(item)) if isinstance(item, dict) else True
        assert not (plain and deep)


def test_a_body_is_published_with_its_numbers_as_sent() -> None:
    [item] = json_text.decode_batch(b'{"a": 5.50, "b": 1e-300, "c": "\\u00e9", "d": [true, null]}')

    assert json_text.dumps(item) == '{"a":5.50,"b":1E-300,"c":"\\u00e9","d":[true,null]}'.replace(
        "\\u00e9", "\u00e9"
    )
