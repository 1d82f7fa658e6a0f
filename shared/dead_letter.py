"""The dead-letter topic's headers: why a record was rejected and where it came from.

A record on `pain.events.v1` that breaks the contract is copied to `pain.events.dlq.v1` with its
original value, key and headers, plus these headers (UTF-8 text). The AsyncAPI document is
generated from this table, so the names live here and nowhere else.
"""

from __future__ import annotations

REASON = "dlq.reason"
FIELD = "dlq.field"
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
FAILED_AT = "dlq.failed_at"

HEADERS: dict[str, str] = {
    REASON: (
        "Why the record was rejected: each violation as `field: reason`, joined by `; `"
        " (`str(ContractViolation)`). Never contains the offending value."
    ),
    FIELD: (
        "Dotted path of the first violating field (`data.score`), or `(event)` when the record"
        " as a whole is at fault (not JSON, not an object)."
    ),
    ORIGINAL_TOPIC: "The topic the record was consumed from, as named on the broker.",
    ORIGINAL_PARTITION: "The record's partition on that topic, in decimal.",
    ORIGINAL_OFFSET: "The record's offset in that partition, in decimal.",
    FAILED_AT: "When the record was rejected: RFC 3339 timestamp in UTC.",
}
