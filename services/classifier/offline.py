"""`painpath classify`: determinations from a JSON-lines file of events, as of an instant.

This is what clinicians and auditors use to ask "why?", and the reference the streaming service
must agree with: all three read events the same way (`shared.contract.records.read_value`:
size, UTF-8, the contract), admit them the same way (`history.admit`, the first of a (source,
id) wins), decide with the same `rules.evaluate`, and set aside a patient whose decision
raises, whatever the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from services.classifier.history import CONFLICT_REASON, Admission, PatientHistory
from services.classifier.policy import Policy
from services.classifier.records import DecisionFailure
from services.classifier.rules import evaluate
from shared.contract import MAX_EVENT_BYTES, Determination
from shared.contract.instant import TIME_MAX, TIME_MIN, in_bounds
from shared.contract.records import Rejection, read_record, read_value

# The instants an event's `time` may take (CONTRACT.md, in UTC), so the instants T too: outside
# them a rule's date arithmetic can leave the calendar.
EARLIEST_AS_OF, LATEST_AS_OF = TIME_MIN, TIME_MAX  # the contract's bounds of every event's time


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


@dataclass(frozen=True)
class SetAside:
    """A patient whose decision raised: named by the lines of its events, never by its id."""

    lines: list[int]
    failure: DecisionFailure

    def describe(self) -> str:
        return (
            f"{_line_ranges(self.lines)}: deciding this patient raised {self.failure.error}"
            f" in {self.failure.raised_in}; set aside (no determination), the others are"
            " classified"
        )


@dataclass
class _Read:
    histories: dict[str, PatientHistory] = field(default_factory=dict)
    lines: dict[str, list[int]] = field(default_factory=dict)  # each patient's admitted lines
    refused: list[BadLine] = field(default_factory=list)


def as_of_in_range(as_of: datetime) -> bool:
    """Whether an aware instant lies within the contract's bounds (EARLIEST_AS_OF..LATEST_AS_OF)."""
    return in_bounds(as_of)


def _read(lines: Iterable[bytes | str]) -> _Read:
    read = _Read()
    for number, line in enumerate(lines, start=1):
        if isinstance(line, str):  # a lone surrogate is not UTF-8 text: refused as such
            line = line.encode("utf-8", "surrogatepass")
        if not line.strip():
            continue
        event = read_value(line)
        if isinstance(event, Rejection):
            read.refused.append(BadLine(number, event.reason))
            continue
        event, text = event
        patient_id = event.patient_id
        history = read.histories.get(patient_id)
        if history is None:
            history = read.histories[patient_id] = PatientHistory.keeping_parsed()
            read.lines[patient_id] = []
        admission = history.admit(event, text.strip())
        if admission is Admission.CONFLICT:
            read.refused.append(BadLine(number, f"id: {CONFLICT_REASON}"))
        elif admission is Admission.NEW:
            read.lines[patient_id].append(number)
    return read


def read_histories(
    lines: Iterable[bytes | str],
) -> tuple[dict[str, PatientHistory], list[BadLine]]:
    """Each patient's admitted events, in file order, and the lines that were refused.

    Each line is read as the stream reads a record's value
    (`shared.contract.records.read_value`); a `str` line is taken as its UTF-8 bytes. Blank
    lines are skipped (and still counted)."""
    read = _read(lines)
    return read.histories, read.refused


def file_lines(stream: BinaryIO, limit: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """The lines of a binary file without their end of line (`\\n` or `\\r\\n`). A line longer
    than `limit` bytes is yielded cut short, still longer than `limit` (so refused as too
    large), and the rest of it skipped: a huge line is never held in memory."""
    while True:
        line = stream.readline(limit + 2)  # room for the end of a line of `limit` bytes
        if not line:
            return
        if not line.endswith(b"\n") and len(line) == limit + 2:
            while (rest := stream.readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
        yield line.removesuffix(b"\n").removesuffix(b"\r")


def expected_from_records(
    records: Iterable[tuple[bytes | None, bytes]], policy: Policy, as_of: datetime
) -> tuple[dict[str, Determination], int]:
    """What the streaming classifier must end with after these Kafka records, in this order.

    Admits records as the stream does (`shared.contract.records.read_record`, then a
    conflicting duplicate is a dead letter too) and decides each patient as of `as_of`. Returns
    the determinations by patient id and the number of dead letters of records. A patient whose
    decision raises has no determination: the stream sets it aside, with a dead letter per pass
    that decided it (their number depends on the passes, so they are not counted here).
    """
    admitted, dead = [], 0
    for key, value in records:
        read = read_record(key, value)
        if isinstance(read, Rejection):
            dead += 1
        else:
            admitted.append(read[1])
    histories, conflicts = read_histories(admitted)
    determinations = {}
    for patient_id, history in histories.items():
        decided = _decide(history, policy, as_of)
        if isinstance(decided, Determination):
            determinations[patient_id] = decided
    return determinations, dead + len(conflicts)


def _decide(
    history: PatientHistory, policy: Policy, as_of: datetime
) -> Determination | DecisionFailure:
    """The patient's determination, or why deciding it raised (whatever rule has a bug)."""
    try:
        return evaluate(history.events, policy, as_of)
    except Exception as error:
        return DecisionFailure.of(error)


def classify_file(
    path: Path, policy: Policy, as_of: datetime
) -> tuple[Iterator[Determination | SetAside], list[BadLine]]:
    """Each patient's determination (sorted by patient id), or a `SetAside` for one whose
    decision raised; and the refused lines. The file is read as bytes, line by line, each line
    as the stream reads a record's value (`shared.contract.records.read_value`)."""
    with path.open("rb") as stream:
        read = _read(file_lines(stream))

    def decided() -> Iterator[Determination | SetAside]:
        for patient_id in sorted(read.histories):
            result = _decide(read.histories[patient_id], policy, as_of)
            if isinstance(result, DecisionFailure):
                yield SetAside(read.lines[patient_id], result)
            else:
                yield result

    return decided(), read.refused


def _line_ranges(numbers: list[int]) -> str:
    """`line 4`, `lines 3-5, 9`: line numbers, consecutive ones as a range."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return ("line " if len(numbers) == 1 else "lines ") + text


def explain(determination: Determination) -> str:
    """The determination as text a clinician reads: status, figures, trials, reasons."""
    d = determination
    pain = "unknown" if d.current_pain is None else f"{d.current_pain:g}/10"
    lines = [
        f"patient {d.patient_id}: {d.status.value.replace('_', ' ').upper()}",
        f"  as of {d.as_of.isoformat()} under policy {d.policy}",
        f"  pain for {d.pain_days if d.pain_days is not None else '?'}"
        f" day{'' if d.pain_days == 1 else 's'}"
        f" (since {d.pain_start or 'unknown'}), current pain {pain},"
        f" classification {d.classification.value if d.classification else 'none'}",
        f"  failed drugs: {', '.join(d.failed_drugs) or 'none'}"
        f" (classes: {', '.join(d.failed_classes) or 'none'});"
        f" combination failed: {'yes' if d.combination_failed else 'no'}",
        "  assessment: "
        + (
            "complete"
            if not d.missing_assessments
            else "missing " + ", ".join(part.value for part in d.missing_assessments)
        ),
    ]
    if d.trials:
        lines.append("  trials:")
    for trial in d.trials:
        figures = ", ".join(
            f"{name} {value:g}"
            for name, value in (
                ("baseline", trial.baseline),
                ("on treatment", trial.on_treatment),
                ("reduction", None if trial.reduction is None else round(trial.reduction * 100)),
            )
            if value is not None
        )
        unit = "%" if trial.reduction is not None else ""
        lines.append(
            f"    {trial.trial_id}: {trial.drug} {trial.daily_dose:g} {trial.dose_unit.value}/day"
            f" -> {trial.outcome.value}" + (f" ({figures}{unit})" if figures else "")
        )
    lines.append("  reasons:")
    lines.extend(f"    - {reason.text}  [{reason.code}]" for reason in d.reasons)
    return "\n".join(lines)
