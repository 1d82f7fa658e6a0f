"""One Kafka record of `pain.events.v1` read as the classifier reads it: an event, or a rejection.

The streaming classifier and the reference it is checked against (`offline.expected_from_records`)
both read records here, so they always agree on what is a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract import MAX_EVENT_BYTES, ContractViolation, Event, parse_event


@dataclass(frozen=True)
class Rejection:
    reason: str  # `field: why`, never the offending value
    field: str
    kind: str  # a small fixed set, for metrics labels: size, encoding, contract, key, conflict


def read_record(key: bytes | None, value: bytes | None) -> tuple[Event, str] | Rejection:
    """The record's event and its text, or why it is refused (before admission to a history)."""
    if value is None:
        return Rejection("(event): an empty record (no value)", "(event)", "contract")
    if len(value) > MAX_EVENT_BYTES:
        reason = f"(event): larger than {MAX_EVENT_BYTES // 1024} KiB"
        return Rejection(reason, "(event)", "size")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection("(event): not UTF-8 text", "(event)", "encoding")
    try:
        event = parse_event(text)
    except ContractViolation as violation:
        return Rejection(str(violation), violation.violations[0].field, "contract")
    if key != event.patient_id.encode():
        return Rejection("key: the record's key must be its event's data.patient_id", "key", "key")
    return event, text
