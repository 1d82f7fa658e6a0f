"""Pydantic models of the clinical event contract, version 1.

Every rule of CONTRACT.md lives here and nowhere else: the CloudEvents 1.0 envelope (structured
JSON mode), one `data` model per event type, enums, ranges, `time` with an offset, the `vas`
scale, `trial_id`-or-`drug`, the patient id pattern. Unknown extra fields are kept and ignored.

Validation is strict JSON validation: a number sent as a string, a boolean sent as a number or
a `time` without an offset is a violation, not something to coerce.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Context, Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.contract import json_text
from shared.contract.instant import (  # noqa: F401 (the bounds are the contract's, named here)
    DATE_MAX,
    DATE_MIN,
    DATE_RANGE_REASON,
    FULL_DATE,
    RFC3339,
    TIME_MAX,
    TIME_MIN,
    TIME_RANGE_REASON,
    TIME_REASON,
    TimeError,
    in_bounds,
    parse_date,
    parse_time,
)
from shared.contract.json_text import MAX_DEPTH, MAX_DIGITS, JsonTextError  # noqa: F401

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
SCORE_RANGES: dict[Instrument, tuple[int, int, bool]] = {
    Instrument.NRS: (0, 10, True),
    Instrument.VAS: (0, 100, False),
    Instrument.PEG: (0, 10, False),
}

# Enumerations are JSON strings: validated by value (pydantic's strict mode wants the member).
Lax = Strict(False)
_NUMBER_REASON = "must be a JSON number, not a string or a boolean"
# Wide enough that shifting a score's decimal point (vas / 10) never rounds it.
_EXACT = Context(prec=MAX_DIGITS + 2)


def _number(value: Any) -> Decimal:
    """A JSON number as the exact decimal it was written as (the decoder keeps its text)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float):
        raise PydanticCustomError("number", _NUMBER_REASON)
    number = (
        value
        if isinstance(value, Decimal)
        else Decimal(repr(value) if isinstance(value, float) else value)
    )
    reason = json_text.number_reason(number)
    if reason is not None:
        raise PydanticCustomError("number", reason)
    return number


def _positive(value: Any) -> Decimal:
    number = _number(value)
    if not number > 0:
        raise PydanticCustomError("greater_than", "must be greater than 0")
    return number


def _percent(value: Any) -> Decimal:
    number = _number(value)
    if number < 0:
        raise PydanticCustomError("greater_than_equal", "must be greater than or equal to 0")
    if number > 100:
        raise PydanticCustomError("less_than_equal", "must be less than or equal to 100")
    return number


def _number_json(number: Decimal) -> int | float:
    """A number in a model's JSON form (`model_dump_json`), which JSON can only give as int or
    float. The services never publish that form: they keep and publish the event's text as sent,
    and compute with the exact `Decimal` attribute."""
    return int(number) if number == number.to_integral_value() else float(number)


_AS_JSON_NUMBER = PlainSerializer(_number_json, when_used="json")

# Numbers are judged on their decimal text, as sent: `5.0000000000000000001` is not 5.
Number = Annotated[
    Decimal, PlainValidator(_number), _AS_JSON_NUMBER, WithJsonSchema({"type": "number"})
]
PositiveNumber = Annotated[
    Decimal,
    PlainValidator(_positive),
    _AS_JSON_NUMBER,
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]
Percent = Annotated[
    Decimal,
    PlainValidator(_percent),
    _AS_JSON_NUMBER,
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 100}),
]


def _time(value: Any) -> datetime:
    if isinstance(value, datetime) and value.utcoffset() is not None:
        if not in_bounds(value):
            raise PydanticCustomError("time_range", TIME_RANGE_REASON)
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("rfc3339", TIME_REASON)
    try:
        return parse_time(value)
    except TimeError as error:
        raise PydanticCustomError("rfc3339", str(error)) from None


def _date(value: Any) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        if not DATE_MIN <= value <= DATE_MAX:
            raise PydanticCustomError("date_range", DATE_RANGE_REASON)
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("full_date", "must be a date as a string, YYYY-MM-DD")
    try:
        return parse_date(value)
    except TimeError as error:
        raise PydanticCustomError("full_date", str(error)) from None


def _time_json(moment: datetime) -> str:
    text = moment.isoformat()  # an Instant writes every digit past the microsecond
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


# RFC 3339 `date-time` with an offset, within the contract's bounds, exact past microseconds.
Time = Annotated[
    datetime,
    PlainValidator(_time),
    PlainSerializer(_time_json, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339.pattern}),
]
# RFC 3339 `full-date` within the contract's bounds.
FullDate = Annotated[
    date,
    PlainValidator(_date),
    PlainSerializer(date.isoformat, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date", "pattern": FULL_DATE.pattern}),
]


class _Data(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    patient_id: PatientId


class ConditionData(_Data):
    onset_date: FullDate = Field(
        description="When the pain began (YYYY-MM-DD), within 1900-01-01 .. 9999-12-31."
    )
    icd10_codes: list[str] | None = None
    pain_sites: list[str] | None = None


def _instrument_is(instrument: Instrument) -> dict[str, Any]:
    # `nrs` is also the instrument left out or sent as null.
    return {"enum": ["nrs", None]} if instrument is Instrument.NRS else {"const": instrument.value}


def _score_schema(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {
            "if": {"properties": {"instrument": _instrument_is(instrument)}}
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
    instrument: Annotated[Instrument, Lax] = Field(
        default=Instrument.NRS,
        description="nrs: integer 0-10; vas: 0-100 mm (divided by 10); peg: PEG-3 mean 0-10.",
    )
    score: Number

    @field_validator("score")
    @classmethod
    def _score_in_instrument_range(cls, score: Decimal, info: ValidationInfo) -> Decimal:
        instrument = info.data.get("instrument")
        if instrument is None:  # the instrument itself was invalid and is reported on its own
            return score
        low, high, whole = SCORE_RANGES[instrument]
        if not low <= score <= high or (whole and score != score.to_integral_value()):
            kind = "a whole number" if whole else "a number"
            raise ValueError(f"{instrument.value} score must be {kind} from {low} to {high}")
        return score

    @property
    def score_0_10(self) -> Decimal:
        """The score on the 0-10 scale used for every comparison (`vas` / 10), exactly."""
        return self.score.scaleb(-1, _EXACT) if self.instrument is Instrument.VAS else self.score


class TrialStartedData(_Data):
    trial_id: NonEmpty
    drug: NonEmpty = Field(description="Generic name, matched case-insensitively.")
    rxnorm: NonEmpty | None = Field(
        default=None, description="RxNorm ingredient RXCUI; when present it wins over `drug`."
    )
    daily_dose: PositiveNumber
    dose_unit: Annotated[DoseUnit, Lax]


class TrialDoseChangedData(_Data):
    trial_id: NonEmpty
    daily_dose: PositiveNumber
    dose_unit: Annotated[DoseUnit, Lax]


class TrialStoppedData(_Data):
    trial_id: NonEmpty
    reason: Annotated[StopReason, Lax]


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
    severity: Annotated[Severity, Lax]
    intolerable: bool = Field(
        default=False, description="True when it prevents reaching or keeping a therapeutic dose."
    )

    @model_validator(mode="after")
    def _trial_or_drug(self) -> SideEffectData:
        if self.trial_id is None and self.drug is None:
            raise ValueError("one of trial_id or drug is required")
        return self


class AssessmentData(_Data):
    kind: Annotated[AssessmentKind, Lax]
    classification: Annotated[Classification, Lax] | None = None
    findings: dict[str, Any] | None = None


class DiagnosticData(_Data):
    test: Annotated[DiagnosticTest, Lax]
    result: Annotated[DiagnosticResult, Lax]
    relief_percent: Percent | None = None


class RetractionData(_Data):
    retracted_id: NonEmpty = Field(description="The `id` of an earlier event from the same source.")


class _Envelope(BaseModel):
    """CloudEvents 1.0 attributes, structured JSON mode. Extension attributes are kept."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: KeyPart = Field(description="Unique per source: (source, id) is the idempotency key.")
    source: KeyPart = Field(description="URI reference of the publishing system.")
    time: Time = Field(
        description="RFC 3339 with offset: when the clinical fact happened; in UTC within "
        "1900-01-01T00:00:00Z .. 9999-12-31T00:00:00Z."
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
    "list_type": "must be a JSON array",
    "string_type": "must be a JSON string",
    "bool_type": "must be a JSON boolean (true or false)",
    "dict_type": "must be a JSON object",
}


def _reason(message: str) -> str:
    """pydantic's own wording made to read like the contract's ("must be ...")."""
    message = message.removeprefix("Value error, ")
    for theirs, ours in (("Input should be ", "must be "), ("String should ", "must ")):
        if message.startswith(theirs):
            return ours + message.removeprefix(theirs)
    return message


def _violations(error: ValidationError) -> list[Violation]:
    violations = []
    for detail in error.errors(include_input=False, include_url=False):
        loc = tuple(detail["loc"])
        if loc and loc[0] in EVENT_MODELS:  # drop the discriminator's tag from the path
            loc = loc[1:]
        kind = detail["type"]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            loc = ("type",)
        reason = _REASONS.get(kind) or _reason(detail["msg"])
        violations.append(Violation(field=_field_path(loc), reason=reason))
    return violations


def parse_event(raw: bytes | str | Any) -> Event:
    """Validate one CloudEvent against the contract.

    `raw` is the event's JSON text (decoded here: `json_text.decode`, exact numbers, no repeated
    member names, nesting bounded) or a JSON value decoded by `json_text.decode` or `json.loads`.
    An optional field sent as `null` is the field left out; a required one is then missing.
    Raises ContractViolation naming each field and why.
    """
    return read_event(raw)[0]


def read_event(raw: bytes | str | Any, *, plain: bool = False) -> tuple[Event, Any]:
    """`parse_event`, with the event's decoded JSON value (for `json_text.dumps`).

    `plain`: a value decoded by `json_text` from a text `json_text.plain` found plain (too
    shallow to nest too deep, no `\\u` escape), so neither walk over it can find anything."""
    if isinstance(raw, bytes | bytearray | memoryview | str):
        try:
            value = json_text.decode(raw)
        except JsonTextError as error:
            raise ContractViolation(_from_problems(error.problems)) from None
        escape = "\\u" if isinstance(raw, str) else b"\\u"
        may_hold_bad_text = escape in raw and _MAY_HOLD_BAD_TEXT.search(_text(raw)) is not None
    else:
        value = raw
        problems = [] if plain else json_text.check(value)
        if not isinstance(value, dict | list | str | int | float | Decimal | None):
            problems = [("(event)", json_text.NOT_JSON)]  # a Python value JSON has no form for
        if problems:
            raise ContractViolation(_from_problems(problems))
        may_hold_bad_text = not plain
    try:
        event = _EVENT_ADAPTER.validate_python(_without_nulls(value))
    except ValidationError as exc:
        raise ContractViolation(_violations(exc)) from None
    # The typed numbers were judged by their fields; the free-form parts' numbers are here.
    free_form = _free_form(event)
    if free_form:
        problems = json_text.number_problems(free_form)
        if problems:
            raise ContractViolation(_from_problems(problems))
    # Only a \u escape can carry a NUL or a lone surrogate into a string: look only then.
    if may_hold_bad_text:
        problems = [
            Violation(field=_field_path(path), reason=reason)
            for path, reason in _bad_text(value, ())
        ]
        if problems:
            raise ContractViolation(problems)
    return event, value


def _text(raw: bytes | bytearray | memoryview | str) -> str:
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")


def _free_form(event: Event) -> dict[str, Any]:
    """The parts of an event no field types: its unknown members and the findings, by path."""
    parts: dict[str, Any] = {}
    if event.model_extra:
        parts.update(event.model_extra)
    data = event.data
    if data.model_extra:
        parts["data"] = dict(data.model_extra)
    findings = data.__dict__.get("findings")
    if findings:
        parts.setdefault("data", {})["findings"] = findings
    return parts


def _from_problems(problems: list[tuple[str, str]]) -> list[Violation]:
    return [Violation(field=field, reason=reason) for field, reason in problems]


def content(value: Any) -> str:
    """What an event *is*, as text: two deliveries of one event have the same content.

    Canonical JSON (`json_text.canonical`: sorted names, numbers by value) of the event with its
    members sent as `null` left out, as the contract reads them.
    """
    return json_text.canonical(_without_nulls(value))


def _without_nulls(value: Any) -> Any:
    """The envelope and its `data` without the members sent as `null` (the same as left out)."""
    if not isinstance(value, dict):
        return value
    if None in value.values():
        value = {key: item for key, item in value.items() if item is not None}
    data = value.get("data")
    if isinstance(data, dict) and None in data.values():
        value = {**value, "data": {key: item for key, item in data.items() if item is not None}}
    return value


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
