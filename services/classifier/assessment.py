"""The patient's classification and whether the clinical assessment is complete (POLICY.md 5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.classifier.policy import Policy
from shared.contract import (
    AssessmentKind,
    AssessmentPart,
    AssessmentRecorded,
    Classification,
    DiagnosticResulted,
    Event,
    Reason,
)

# The assessment kinds that are parts of a complete assessment; the others are recorded only.
_PART_OF_KIND = {
    kind: AssessmentPart(kind.value)
    for kind in AssessmentKind
    if kind.value in AssessmentPart._value2member_map_
}

_MISSING_TEXT = {
    AssessmentPart.MEDICATION_HISTORY: "no medication history recorded",
    AssessmentPart.PHYSICAL_EXAM: "no physical exam recorded",
    AssessmentPart.NEUROLOGICAL_EXAM: "no neurological exam recorded",
    AssessmentPart.CLASSIFICATION: "no pain classification given",
    AssessmentPart.DIAGNOSTIC: "no diagnostic resulted",
}


@dataclass(frozen=True)
class Assessment:
    """The classification (None without one) and the required parts missing, in policy order."""

    classification: Classification | None
    missing: list[AssessmentPart]
    reasons: list[Reason]

    @property
    def complete(self) -> bool:
        return not self.missing


def assessment(events: Sequence[Event], policy: Policy) -> Assessment:
    """The latest (by time) classification given in an assessment event, and which of the
    policy's required parts (assessment kinds, a classification, a resulted diagnostic) are
    missing. `events` must be in event order."""
    done: set[AssessmentPart] = set()
    classification = None
    for event in events:
        match event:
            case AssessmentRecorded():
                if event.data.kind in _PART_OF_KIND:
                    done.add(_PART_OF_KIND[event.data.kind])
                if event.data.classification is not None:
                    classification = event.data.classification
                    done.add(AssessmentPart.CLASSIFICATION)
            case DiagnosticResulted():
                done.add(AssessmentPart.DIAGNOSTIC)
    missing = [part for part in policy.required_assessment if part not in done]
    reasons = [
        Reason(
            code="classification." + (classification.value if classification else "none"),
            text=f"classification {classification.value}"
            if classification
            else "no classification given",
        )
    ]
    reasons += [
        Reason(code=f"assessment.missing.{part.value}", text=f"assessment: {_MISSING_TEXT[part]}")
        for part in missing
    ]
    if not missing:
        reasons.append(Reason(code="assessment.complete", text="assessment complete"))
    return Assessment(classification=classification, missing=missing, reasons=reasons)
