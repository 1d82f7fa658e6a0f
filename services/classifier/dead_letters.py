"""What the classifier writes to `pain.events.dlq.v1`, headers and all.

Two kinds of dead letter: a **record refused** at admission (the contract, its size, its key,
its partition, a conflicting id) is copied with its original key, value and headers plus the
reason (`shared.dead_letter.build`: cut short, with its size and sha256, when it would not fit);
a **patient set aside** (quarantined: deciding it raised) leaves a JSON document naming the
events it was being decided from, never their content, in parts that each fit a message.
Either carries the reason headers of the contract (`dlq.reason`, `dlq.field`, `dlq.kind`,
where it came from, when).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from services.classifier.records import DecisionFailure
from shared import dead_letter
from shared.contract.records import Rejection

QUARANTINE = "quarantine"  # the dead-letter kind of a patient set aside
QUARANTINE_FIELD = "(patient)"
DEAD_LETTER_BYTES = 512 * 1024  # a quarantine document stays well under the message limit

Headers = list[tuple[str, bytes]]


def reason_headers(
    reason: str, field: str, kind: str, topic: str, partition: int, offset: int | None
) -> Headers:
    """The contract's reason headers (`offset` left out when there is none)."""
    return [
        (dead_letter.REASON, reason.encode()),
        (dead_letter.FIELD, field.encode()),
        (dead_letter.KIND, kind.encode()),
        (dead_letter.ORIGINAL_TOPIC, topic.encode()),
        (dead_letter.ORIGINAL_PARTITION, str(partition).encode()),
        *([(dead_letter.ORIGINAL_OFFSET, str(offset).encode())] if offset is not None else []),
        (dead_letter.FAILED_AT, datetime.now(UTC).isoformat().encode()),
    ]


def refused_record(record, rejection: Rejection) -> dead_letter.DeadLetter:
    """The dead letter of a record refused at admission: the original, as much as fits."""
    reason = reason_headers(
        rejection.reason,
        rejection.field,
        rejection.kind,
        record.topic,
        record.partition,
        record.offset,
    )
    return dead_letter.build(record.key, record.value, record.headers, reason)


def set_aside(
    keys: list[str],
    failure: DecisionFailure,
    policy: str,
    as_of: datetime,
    *,
    topic: str,
    partition: int,
    offset: int | None,
) -> tuple[Headers, list[bytes]]:
    """The headers and documents of a patient set aside (`keys`: its history's keys)."""
    headers = reason_headers(
        quarantine_reason(failure), QUARANTINE_FIELD, QUARANTINE, topic, partition, offset
    )
    return headers, quarantine_documents(keys, failure, policy, as_of)


def quarantine_reason(failure: DecisionFailure) -> str:
    return (
        f"{QUARANTINE_FIELD}: deciding raised {failure.error} in {failure.raised_in};"
        " set aside until a new event or a new policy"
    )


def quarantine_documents(
    keys: list[str],
    failure: DecisionFailure,
    policy: str,
    as_of: datetime,
    limit: int = DEAD_LETTER_BYTES,
) -> list[bytes]:
    """The dead letter of a patient set aside: a JSON document naming the (source, id) of the
    events being decided (`keys`, the history's keys), in several parts (`part` of `parts`)
    when they do not fit in about `limit` bytes, so the broker never refuses one."""
    parts: list[list[dict[str, str]]] = [[]]
    size = 0
    for key in keys:
        # A history's key is f"{source}\x1f{id}"; a URI reference has no control character.
        source, _, event_id = key.partition("\x1f")
        ref = {"source": source, "id": event_id}
        length = len(json.dumps(ref)) + 2  # its bytes in the document (ASCII, escaped)
        if parts[-1] and size + length > limit:
            parts.append([])
            size = 0
        parts[-1].append(ref)
        size += length
    head = {
        "kind": QUARANTINE,
        "error": failure.error,
        "raised_in": failure.raised_in,
        "policy": policy,
        "as_of": as_of.isoformat(),
        "event_count": len(keys),
        "parts": len(parts),
    }
    return [
        json.dumps(head | {"part": number, "events": events}).encode()
        for number, events in enumerate(parts, start=1)
    ]
