"""The dead-letter topic's headers, and the one way a dead letter is made (`build`).

A record on `pain.events.v1` that breaks the contract is copied to `pain.events.dlq.v1` with its
original value, key and headers, plus these headers (UTF-8 text). A dead letter always fits in
one broker message (`MAX_DEAD_LETTER_BYTES`, under Kafka's default `max.message.bytes`): a
record too large to be carried whole (a producer with a raised `max.request.size` wrote it) is
carried as the first `TRUNCATED_PREFIX_BYTES` of its value, with the value's size and sha256;
if its own headers still do not fit, they are left out (and counted). A patient the classifier sets
aside because deciding it raised (`dlq.kind` `quarantine`) is a dead letter too: keyed by the
patient's record key, its value a small JSON document naming the events that were being decided.
The AsyncAPI document is generated from this table, so the names live here and nowhere else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

REASON = "dlq.reason"
FIELD = "dlq.field"
KIND = "dlq.kind"
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
FAILED_AT = "dlq.failed_at"
VALUE_SIZE = "dlq.value.size"
VALUE_SHA256 = "dlq.value.sha256"
VALUE_TRUNCATED = "dlq.value.truncated"
HEADERS_DROPPED = "dlq.headers.dropped"

# Under Kafka's default max.message.bytes (1,048,588) with room for the record's framing.
MAX_DEAD_LETTER_BYTES = 1_000_000
TRUNCATED_PREFIX_BYTES = 64 * 1024
MAX_REASON_BYTES = 8 * 1024  # a reason listing thousands of violations is cut short
_FRAMING_BYTES = 16 * 1024

HEADERS: dict[str, str] = {
    REASON: (
        "Why the record was rejected: each violation as `field: reason`, joined by `; `"
        " (`str(ContractViolation)`). Never contains the offending value. For a patient set"
        " aside: `(patient): deciding raised <exception type> in <module.function>; set aside"
        " until a new event or a new policy` (never the exception's message)."
    ),
    FIELD: (
        "Dotted path of the first violating field (`data.score`), or `(event)` when the record"
        " as a whole is at fault (not JSON, not an object), or `(patient)` for a patient set"
        " aside."
    ),
    KIND: (
        "What was refused. A record: `size`, `encoding`, `contract`, `key` (a key other than"
        " its `data.patient_id`), `partition` (a partition other than its key's: murmur2, as"
        " Kafka's default partitioner) or `conflict` (a (source, id) again with other content);"
        " the value is the original record's, byte for byte (cut short when"
        " `dlq.value.truncated`). `quarantine`: a patient set aside"
        " because deciding it raised; the value is a JSON object `{kind, error, raised_in,"
        " policy, as_of, event_count, part, parts, events: [{source, id}]}` (a long history in"
        " several parts), and the patient is decided again when a new event arrives for it or"
        " a worker restores its partition (a restart, e.g. with a new policy)."
    ),
    ORIGINAL_TOPIC: "The topic the record was consumed from, as named on the broker.",
    ORIGINAL_PARTITION: "The record's partition on that topic, in decimal.",
    ORIGINAL_OFFSET: (
        "The record's offset in that partition, in decimal. For a patient set aside: the"
        " partition's position then (its events all lie before it); absent in the rare case"
        " that no record of the partition was read yet since its restore."
    ),
    FAILED_AT: "When the record was rejected: RFC 3339 timestamp in UTC.",
    VALUE_TRUNCATED: (
        "`true` when the original record was too large to be carried whole: the value is its"
        " first 64 KiB; absent otherwise."
    ),
    VALUE_SIZE: "With `dlq.value.truncated`: the original value's size in bytes, in decimal.",
    VALUE_SHA256: "With `dlq.value.truncated`: the original value's sha256, in hexadecimal.",
    HEADERS_DROPPED: (
        "How many of the original record's headers were left out because they did not fit in"
        " one broker message (absent when all are kept)."
    ),
}
# Present only on some dead letters.
OPTIONAL = frozenset({ORIGINAL_OFFSET, VALUE_TRUNCATED, VALUE_SIZE, VALUE_SHA256, HEADERS_DROPPED})

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter ready to send: key, value and headers, together at most `max_bytes`."""

    key: bytes | None
    value: bytes | None
    headers: Headers

    @property
    def size(self) -> int:
        return _size(self.key, self.value, self.headers)


def build(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    reason: Sequence[tuple[str, bytes]],
    max_bytes: int = MAX_DEAD_LETTER_BYTES,
) -> DeadLetter:
    """The dead letter of a record: its key, value and headers plus the `reason` headers (the
    `dlq.*` names above), carried whole when they fit in `max_bytes`. Otherwise the value is
    cut to its first `TRUNCATED_PREFIX_BYTES` and its size and sha256 are added; if that is
    still too large, the original headers are left out (`dlq.headers.dropped` counts them).
    The reason headers are always there (each cut to `MAX_REASON_BYTES`)."""
    original = list(headers or ())
    reason = [(name, text[:MAX_REASON_BYTES]) for name, text in reason]
    budget = max_bytes - _FRAMING_BYTES
    if _size(key, value, [*original, *reason]) <= budget:
        return DeadLetter(key, value, [*original, *reason])
    if value is not None and len(value) > TRUNCATED_PREFIX_BYTES:
        reason += [
            (VALUE_TRUNCATED, b"true"),
            (VALUE_SIZE, str(len(value)).encode()),
            (VALUE_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[:TRUNCATED_PREFIX_BYTES]
    if _size(key, value, [*original, *reason]) > budget:
        reason.append((HEADERS_DROPPED, str(len(original)).encode()))
        original = []
    return DeadLetter(key, value, [*original, *reason])


def _size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(name.encode()) + len(text or b"") for name, text in headers)
    )
