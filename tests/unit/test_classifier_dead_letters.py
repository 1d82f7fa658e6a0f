"""What the classifier writes to the dead-letter topic: the reason headers, the original."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.classifier import dead_letters
from services.classifier.records import DecisionFailure
from shared import dead_letter
from shared.contract.records import Rejection

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "pain.events.v1"
    partition: int = 3
    offset: int = 41


def test_a_refused_record_keeps_its_original_and_says_why_and_where_from():
    record = Record(b"pt-1", b'{"not": "an event"}', [("traceparent", b"00-abc")])
    rejection = Rejection("type: is required", "type", "contract")

    letter = dead_letters.refused_record(record, rejection)
    headers = dict(letter.headers)

    assert (letter.key, letter.value) == (record.key, record.value)
    assert headers["traceparent"] == b"00-abc"
    assert headers[dead_letter.REASON] == b"type: is required"
    assert headers[dead_letter.FIELD] == b"type"
    assert headers[dead_letter.KIND] == b"contract"
    assert headers[dead_letter.ORIGINAL_TOPIC] == b"pain.events.v1"
    assert headers[dead_letter.ORIGINAL_PARTITION] == b"3"
    assert headers[dead_letter.ORIGINAL_OFFSET] == b"41"
    assert datetime.fromisoformat(headers[dead_letter.FAILED_AT].decode()).tzinfo is not None


def test_a_patient_set_aside_names_its_events_never_their_content():
    failure = DecisionFailure("OverflowError", "services.classifier.pain_duration.utc_date")
    headers, documents = dead_letters.set_aside(
        ["urn:a\x1fe-1", "urn:a\x1fe-2"],
        failure,
        "default-v1",
        AS_OF,
        topic="pain.events.v1",
        partition=5,
        offset=None,
    )
    named = dict(headers)

    assert named[dead_letter.KIND] == dead_letters.QUARANTINE.encode()
    assert named[dead_letter.FIELD] == b"(patient)"
    assert b"OverflowError" in named[dead_letter.REASON]
    assert dead_letter.ORIGINAL_OFFSET not in named  # no offset known: left out, not "None"
    assert len(documents) == 1 and b'"id": "e-2"' in documents[0]


def test_an_offset_is_carried_when_there_is_one():
    headers = dict(dead_letters.reason_headers("r", "f", "k", "t", 0, 0))
    assert headers[dead_letter.ORIGINAL_OFFSET] == b"0"
