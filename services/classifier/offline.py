"""`painpath classify`: determinations from a JSON-lines file of events, as of an instant.

This is what clinicians and auditors use to ask "why?", and the reference the streaming service
must agree with: both admit events the same way (`history.admit`, the first of a (source, id)
wins) and decide with the same `rules.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from services.classifier.determination import Determination
from services.classifier.history import CONFLICT_REASON, Admission, PatientHistory
from services.classifier.policy import Policy
from services.classifier.records import Rejection, read_record
from services.classifier.rules import evaluate
from shared.contract import ContractViolation, parse_event


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


def read_histories(lines: Iterable[str]) -> tuple[dict[str, PatientHistory], list[BadLine]]:
    """Each patient's admitted events, in file order, and the lines that were refused."""
    histories: dict[str, PatientHistory] = {}
    refused: list[BadLine] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = parse_event(line)
        except ContractViolation as violation:
            refused.append(BadLine(number, str(violation)))
            continue
        history = histories.setdefault(event.patient_id, PatientHistory())
        if history.admit(event, line.strip()) is Admission.CONFLICT:
            refused.append(BadLine(number, f"id: {CONFLICT_REASON}"))
    return histories, refused


def expected_from_records(
    records: Iterable[tuple[bytes | None, bytes]], policy: Policy, as_of: datetime
) -> tuple[dict[str, Determination], int]:
    """What the streaming classifier must end with after these Kafka records, in this order.

    Admits records as the stream does (`records.read_record`, then a conflicting duplicate is a
    dead letter too) and decides each patient as of
    `as_of`. Returns the determinations by patient id and the number of dead letters.
    """
    admitted, dead = [], 0
    for key, value in records:
        read = read_record(key, value)
        if isinstance(read, Rejection):
            dead += 1
        else:
            admitted.append(read[1])
    histories, conflicts = read_histories(admitted)
    determinations = {
        patient_id: evaluate(history.events, policy, as_of)
        for patient_id, history in histories.items()
    }
    return determinations, dead + len(conflicts)


def classify_file(
    path: Path, policy: Policy, as_of: datetime
) -> tuple[Iterator[Determination], list[BadLine]]:
    with path.open(encoding="utf-8") as lines:
        histories, refused = read_histories(lines)
    determinations = (
        evaluate(histories[patient_id].events, policy, as_of) for patient_id in sorted(histories)
    )
    return determinations, refused


def explain(determination: Determination) -> str:
    """The determination as text a clinician reads: status, figures, trials, reasons."""
    d = determination
    pain = "unknown" if d.current_pain is None else f"{d.current_pain:g}/10"
    lines = [
        f"patient {d.patient_id}: {d.status.value.replace('_', ' ').upper()}",
        f"  as of {d.as_of.isoformat()} under policy {d.policy}",
        f"  pain for {d.pain_days if d.pain_days is not None else '?'} days"
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
