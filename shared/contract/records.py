"""How a record of `pain.events.v1` is read: its event, or why it is refused.

One reading for every reader of the topic: the classifier admits what this admits (and
dead-letters the rest with the reason), the coordinator's timeline keeps exactly the same
events, and `painpath classify` reads each line of a file as a record's value. A record is
refused when its value is larger than `MAX_EVENT_BYTES`, not UTF-8, or breaks the contract;
when its key is not its event's `data.patient_id`; and when it lies on another partition than
its key's (a producer with another partitioner would split a patient into two histories).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from aiokafka.partitioner import murmur2

from shared.contract.events import MAX_EVENT_BYTES, ContractViolation, Event, parse_event


@dataclass(frozen=True)
class Rejection:
    reason: str  # `field: why`, never the offending value
    field: str
    # A small fixed set, for metrics labels: size, encoding, contract, key, partition, conflict.
    kind: str


@lru_cache(maxsize=16_384)  # a worker sees the same patients' keys again and again
def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a key (murmur2, as the Java client;
    about 3 us in Python, so remembered for the keys seen most recently)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def read_value(value: bytes | None) -> tuple[Event, str] | Rejection:
    """An event's bytes as the contract reads them (size, UTF-8, the contract): the event and its
    text, or why it is refused. A Kafka record's value and a line of a file alike."""
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
        event = parse_event(value)  # the bytes: the decoder reads them without a copy
    except ContractViolation as violation:
        return Rejection(str(violation), violation.violations[0].field, "contract")
    return event, text


def read_record(
    key: bytes | None,
    value: bytes | None,
    partition: int | None = None,
    partitions: int | None = None,
) -> tuple[Event, str] | Rejection:
    """The record's event and its text, or why it is refused: `read_value`, then the record's
    key must be the event's patient id, and, when `partition` and the topic's `partitions` are
    given (a record read from Kafka), the record must lie on its key's partition."""
    read = read_value(value)
    if isinstance(read, Rejection):
        return read
    if key != read[0].patient_id.encode():
        return Rejection("key: the record's key must be its event's data.patient_id", "key", "key")
    if partition is not None and partitions:
        expected = partition_of(key, partitions)
        if partition != expected:
            reason = (
                f"partition: the record is on partition {partition}, its key's partition"
                f" (murmur2, as Kafka's default partitioner) is {expected} of {partitions}"
            )
            return Rejection(reason, "partition", "partition")
    return read
