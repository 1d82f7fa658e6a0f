"""The dead-letter topic's headers: why a record was rejected and where it came from.

A record on `pain.events.v1` that breaks the contract is copied to `pain.events.dlq.v1` with its
original value, key and headers, plus these headers (UTF-8 text). A patient the classifier sets
aside because deciding it raised (`dlq.kind` `quarantine`) is a dead letter too: keyed by the
patient's record key, its value a small JSON document naming the events that were being decided.
The AsyncAPI document is generated from this table, so the names live here and nowhere else.
"""

from __future__ import annotations

REASON = "dlq.reason"
FIELD = "dlq.field"
KIND = "dlq.kind"
ORIGINAL_TOPIC = "dlq.original.topic"
ORIGINAL_PARTITION = "dlq.original.partition"
ORIGINAL_OFFSET = "dlq.original.offset"
FAILED_AT = "dlq.failed_at"

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
        " its `data.patient_id`) or `conflict` (a (source, id) again with other content); the"
        " value is the original record's, byte for byte. `quarantine`: a patient set aside"
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
}
