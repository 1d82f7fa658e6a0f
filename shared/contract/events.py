"""Pydantic models of the clinical event contract, version 1.

Every rule of CONTRACT.md lives here and nowhere else: the CloudEvents 1.0 envelope (structured
JSON mode), one `data` model per event type, enums, ranges, `time` with an offset, the `vas`
scale, `trial_id`-or-`drug`, the patient id pattern. Unknown extra fields are kept and ignored.

Validation is strict JSON validation: a number sent as a string, a boolean sent as a number or
a `time` without an offset is a violation, not something to coerce.
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

TIME_REASON = "must be an RFC 3339 timestamp with an offset (e.g. Z or +01:00)"
PATIENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"

PatientId = Annotated[
    str,
    StringConstraints(pattern=PATIENT_ID_PATTERN),
    Field(description="Opaque pseudonymous patient id; the Kafka message key."),
]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
# The idempotency key (source, id) is stored and indexed: bounded, like the patient id.
KEY_MAX_LENGTH = 256
# The largest event accepted, as bytes on the wire: the gateway rejects a larger item and the
# classifier dead-letters a larger record produced straight to Kafka.
MAX_EVENT_BYTES = 512 * 1024
KeyPart = Annotated[str, StringConstraints(min_length=1, max_length=KEY_MAX_LENGTH)]


class Instrument(StrEnum):
    NRS = "nrs"
    VAS = "vas"
    PEG = "peg"


class DoseUnit(StrEnum):
    MG = "mg"
    PATCH = "patch"
    UNIT = "unit"


class StopReason(StrEnum):
    INEFFECTIVE = "ineffective"
    SIDE_EFFECTS = "side_effects"
    COMPLETED = "completed"
    PATIENT_CHOICE = "patient_choice"
    OTHER = "other"


class Severity(StrEnum):
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"
    LIFE_THREATENING = "life_threatening"


class AssessmentKind(StrEnum):
    MEDICATION_HISTORY = "medication_history"
    PHYSICAL_EXAM = "physical_exam"
    NEUROLOGICAL_EXAM = "neurological_exam"
    PSYCHOLOGICAL_SCREENING = "psychological_screening"
    FUNCTIONAL_ASSESSMENT = "functional_assessment"


class Classification(StrEnum):
    NOCICEPTIVE = "nociceptive"
    NEUROPATHIC = "neuropathic"
    NOCIPLASTIC = "nociplastic"
    MIXED = "mixed"


class DiagnosticTest(StrEnum):
    MRI = "mri"
    CT = "ct"
    NERVE_CONDUCTION_STUDY = "nerve_conduction_study"
    EMG = "emg"
    DIAGNOSTIC_NERVE_BLOCK = "diagnostic_nerve_block"
    MEDIAL_BRANCH_BLOCK = "medial_branch_block"
    OTHER = "other"


class DiagnosticResult(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    INCONCLUSIVE = "inconclusive"


# Ranges of a score by instrument: (low, high, must be a whole number).
SCORE_RANGES: dict[Instrument, tuple[float, float, bool]] = {
    Instrument.NRS: (0, 10, True),
    Instrument.VAS: (0, 100, False),
    Instrument.PEG: (0, 10, False),
}


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_non_finite(item) for item in value)
    return False


class _FreeFormIsFinite:
    """Unknown extra fields and free-form objects are kept, but only as strict JSON.

    `NaN`, `Infinity` and overflowing literals such as `1e400` parse to non-finite floats in
    free-form parts, which typed float fields refuse; they are refused here too.
    """

    @model_validator(mode="after")
    def _free_form_is_finite(self):
        # Read the fields directly: this runs for every event, and pydantic's attribute lookup
        # of a field a model does not have is slow.
        extra, findings = self.model_extra, self.__dict__.get("findings")
        if (extra and _non_finite(extra)) or (findings is not None and _non_finite(findings)):
            raise ValueError("numbers must be finite (NaN and Infinity are not JSON)")
        return self


class _Data(_FreeFormIsFinite, BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)

    patient_id: PatientId


class ConditionData(_Data):
    onset_date: date = Field(description="When the pain began (YYYY-MM-DD).")
    icd10_codes: list[str] | None = None
    pain_sites: list[str] | None = None


def _score_schema(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {
            "if": {"properties": {"instrument": {"const": instrument.value}}}
            | ({"required": ["instrument"]} if instrument is not Instrument.NRS else {}),
            "then": {
                "properties": {
                    "score": {"minimum": low, "maximum": high}
                    | ({"multipleOf": 1} if whole else {})
                }
            },
        }
        for instrument, (low, high, whole) in SCORE_RANGES.items()
    ]


class ScoreData(_Data):
    model_config = ConfigDict(json_schema_extra=_score_schema)

    # Declared before `score` so that the score's range check can see it.
    instrument: Instrument = Field(
        default=Instrument.NRS,
        description="nrs: integer 0-10; vas: 0-100 mm (divided by 10); peg: PEG-3 mean 0-10.",
    )
    score: float

    @field_validator("score")
    @classmethod
    def _score_in_instrument_range(cls, score: float, info: ValidationInfo) -> float:
        instrument = info.data.get("instrument")
        if instrument is None:  # the instrument itself was invalid and is reported on its own
            return score
        low, high, whole = SCORE_RANGES[instrument]
        if not low <= score <= high or (whole and score != int(score)):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"{instrument.value} score must be {kind} from {low} to {high}")
        return score

    @property
    def score_0_10(self) -> float:
        """The score on the 0-10 scale used for every comparison (`vas` / 10)."""
        return self.score / 10 if self.instrument is Instrument.VAS else self.score


class TrialStartedData(_Data):
    trial_id: NonEmpty
    drug: NonEmpty = Field(description="Generic name, matched case-insensitively.")
    rxnorm: NonEmpty | None = Field(
        default=None, description="RxNorm ingredient RXCUI; when present it wins over `drug`."
    )
    daily_dose: float = Field(gt=0)
    dose_unit: DoseUnit


class TrialDoseChangedData(_Data):
    trial_id: NonEmpty
    daily_dose: float = Field(gt=0)
    dose_unit: DoseUnit


class TrialStoppedData(_Data):
    trial_id: NonEmpty
    reason: StopReason


class SideEffectData(_Data):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("trial_id", "drug")
            ]
        }
    )

    trial_id: NonEmpty | None = None
    drug: NonEmpty | None = None
    effect: NonEmpty
    severity: Severity
    intolerable: bool = Field(
        default=False, description="True when it prevents reaching or keeping a therapeutic dose."
    )

    @model_validator(mode="after")
    def _trial_or_drug(self) -> SideEffectData:
        if self.trial_id is None and self.drug is None:
            raise ValueError("one of trial_id or drug is required")
        return self


class AssessmentData(_Data):
    kind: AssessmentKind
    classification: Classification | None = None
    findings: dict[str, Any] | None = None


class DiagnosticData(_Data):
    test: DiagnosticTest
    result: DiagnosticResult
    relief_percent: float | None = Field(default=None, ge=0, le=100)


class RetractionData(_Data):
    retracted_id: NonEmpty = Field(description="The `id` of an earlier event from the same source.")


RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    """Only RFC 3339 date-times with an offset; the parser alone would take more forms."""
    if not isinstance(value, str):
        return value  # refused by the datetime validation that follows, as not a string
    if not RFC3339.match(value):
        raise PydanticCustomError("rfc3339", TIME_REASON)
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # e.g. 2026-02-30, or an hour of 25
        raise PydanticCustomError("rfc3339", TIME_REASON) from None


class _Envelope(_FreeFormIsFinite, BaseModel):
    """CloudEvents 1.0 attributes, structured JSON mode. Extension attributes are kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: KeyPart = Field(description="Unique per source: (source, id) is the idempotency key.")
    source: KeyPart = Field(description="URI reference of the publishing system.")
    time: Annotated[AwareDatetime, BeforeValidator(_rfc3339)] = Field(
        description="RFC 3339 with offset: when the clinical fact happened."
    )
    datacontenttype: Literal["application/json"] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key: the same (source, id) delivered twice is one event."""
        return (self.source, self.id)

    @property
    def patient_id(self) -> str:
        return self.data.patient_id  # type: ignore[attr-defined]


class ConditionRecorded(_Envelope):
    type: Literal["pain.condition.recorded.v1"]
    data: ConditionData


class ScoreRecorded(_Envelope):
    type: Literal["pain.score.recorded.v1"]
    data: ScoreData


class TrialStarted(_Envelope):
    type: Literal["pain.trial.started.v1"]
    data: TrialStartedData


class TrialDoseChanged(_Envelope):
    type: Literal["pain.trial.dose_changed.v1"]
    data: TrialDoseChangedData


class TrialStopped(_Envelope):
    type: Literal["pain.trial.stopped.v1"]
    data: TrialStoppedData


class SideEffectReported(_Envelope):
    type: Literal["pain.side_effect.reported.v1"]
    data: SideEffectData


class AssessmentRecorded(_Envelope):
    type: Literal["pain.assessment.recorded.v1"]
    data: AssessmentData


class DiagnosticResulted(_Envelope):
    type: Literal["pain.diagnostic.resulted.v1"]
    data: DiagnosticData


class EventRetracted(_Envelope):
    type: Literal["pain.event.retracted.v1"]
    data: RetractionData


EVENT_MODELS: dict[str, type[_Envelope]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (
        ConditionRecorded,
        ScoreRecorded,
        TrialStarted,
        TrialDoseChanged,
        TrialStopped,
        SideEffectReported,
        AssessmentRecorded,
        DiagnosticResulted,
        EventRetracted,
    )
}

Event = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="type")]  # noqa: UP007
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


class Violation(BaseModel):
    """One reason an event breaks the contract. Never carries the offending value."""

    field: str = Field(description="Dotted path of the field, `(event)` for the whole event.")
    reason: str


class ContractViolation(ValueError):
    def __init__(self, violations: list[Violation]):
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.reason}" for v in violations))


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(event)"


_REASONS = {
    "missing": "field required",
    "json_invalid": "not valid JSON",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "union_tag_invalid": "unknown event type; expected one of " + ", ".join(EVENT_MODELS),
    "union_tag_not_found": "field required",
    "timezone_aware": TIME_REASON,
}


def _violations(error: ValidationError) -> list[Violation]:
    violations = []
    for detail in error.errors(include_input=False, include_url=False):
        loc = tuple(detail["loc"])
        if loc and loc[0] in EVENT_MODELS:  # drop the discriminator's tag from the path
            loc = loc[1:]
        kind = detail["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            loc = ("type",)
        reason = _REASONS.get(kind) or detail["msg"].removeprefix("Value error, ")
        violations.append(Violation(field=_field_path(loc), reason=reason))
    return violations


def parse_event(raw: bytes | str | Any) -> Event:
    """Validate one CloudEvent against the contract.

    `raw` is the event's JSON text or the already decoded JSON value. Raises ContractViolation.
    """
    if not isinstance(raw, (bytes, bytearray, str)):
        try:
            raw = json.dumps(raw, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ContractViolation([Violation(field="(event)", reason="not valid JSON")]) from exc
    try:
        event = _EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise ContractViolation(_violations(exc)) from None
    # Only a \u escape can carry a NUL or a lone surrogate into a string: look only then.
    if _MAY_HOLD_BAD_TEXT.search(raw if isinstance(raw, str) else raw.decode("utf-8", "replace")):
        problems = [
            Violation(field=_field_path(path), reason=reason)
            for path, reason in _bad_text(event.model_dump(mode="python", by_alias=True), ())
        ]
        if problems:
            raise ContractViolation(problems)
    return event


_MAY_HOLD_BAD_TEXT = re.compile(r"\\u(0000|d[89a-f])", re.IGNORECASE)


def _bad_text(value: Any, path: tuple[int | str, ...]):
    """Strings that no text store can keep: with a NUL character, or not encodable as UTF-8."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path, "must not contain a NUL character"
        else:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                yield path, "must be valid Unicode text (a lone surrogate is not)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _bad_text(key, path)
            yield from _bad_text(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _bad_text(item, (*path, index))
