"""How the classifier reads its input: one record's event or why it is refused, and why a
patient's decision failed.

The streaming classifier (each Kafka record of `pain.events.v1`), `painpath classify` (each line
of a file) and the reference the stream is checked against (`offline.expected_from_records`) all
read events here, so they always agree on what is refused, and with the same reason.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass

from shared.contract import MAX_EVENT_BYTES, ContractViolation, Event, parse_event


@dataclass(frozen=True)
class Rejection:
    reason: str  # `field: why`, never the offending value
    field: str
    kind: str  # a small fixed set, for metrics labels: size, encoding, contract, key, conflict


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


def read_record(key: bytes | None, value: bytes | None) -> tuple[Event, str] | Rejection:
    """The record's event and its text, or why it is refused (before admission to a history):
    `read_value`, then the record's key must be the event's patient id."""
    read = read_value(value)
    if isinstance(read, Rejection):
        return read
    if key != read[0].patient_id.encode():
        return Rejection("key: the record's key must be its event's data.patient_id", "key", "key")
    return read


@dataclass(frozen=True)
class DecisionFailure:
    """Why deciding a patient raised, in terms that carry no value: the exception's type and
    the function of the project where it was raised (never the message, which may quote data)."""

    error: str  # the exception's type name, e.g. OverflowError
    raised_in: str  # module.function, e.g. services.classifier.pain_duration.utc_date

    @classmethod
    def of(cls, error: BaseException) -> DecisionFailure:
        return cls(type(error).__name__, raised_in(error))


def raised_in(error: BaseException) -> str:
    """`module.function` of the innermost frame of the traceback that is the project's own code
    (its packages, or a file outside the standard library and the installed packages): the rule
    that failed, not the library function it called."""
    where = ours = ""
    traceback = error.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        module = frame.f_globals.get("__name__", "?")
        where = f"{module}.{frame.f_code.co_name}"
        if module.startswith(_PROJECT) or not frame.f_code.co_filename.startswith(_LIBRARIES):
            ours = where
        traceback = traceback.tb_next
    return ours or where or "(unknown)"


_PROJECT = ("services.", "shared.", "painpath.")
_LIBRARIES = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)
