"""Property: no history of contract-valid events makes `evaluate` raise, at any instant T.

The streaming classifier sets aside a patient whose decision raises (its bulkhead), but a raise is
still a bug: a patient left without a determination. Here random events of every type of the
contract, over the whole range of instants it allows (1900-01-01T00:00:00Z .. 9999-12-31T00:00:00Z,
with offsets from -23:59 to +23:59 and fractions past the microsecond), mixed with plausible
treatment stories (adequate trials, baseline and on-treatment scores, overlaps, the assessment) so
that every status and trial outcome is reached, are written as JSON text, read through
`parse_event` as the stream reads them (what it refuses is discarded: nearly nothing), and
evaluated as of random instants in the same range.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from shared.contract import EVENT_MODELS, ContractViolation, parse_event

POLICY = load_policy()
# About 12 s; PAINPATH_PROPERTY_EXAMPLES=20000 for a longer hunt (about 25 min).
EXAMPLES = int(os.environ.get("PAINPATH_PROPERTY_EXAMPLES", "150"))
TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, tzinfo=UTC)
DATE_MIN, DATE_MAX = date(1900, 1, 1), date(9999, 12, 31)
SOURCES = ["urn:hospital:st-olaf:ehr", "urn:hospital:other:lab"]
TRIAL_IDS = ["t1", "t2", "t-3"]
# Formulary names, spelt oddly (case, runs of spaces, hyphens, underscores), and other drugs.
DRUGS = [
    "gabapentin",
    "Gabapentin",
    " PREGABALIN ",
    "duloxetine",
    "venlafaxine",
    "amitriptyline",
    "Nor-triptyline",
    "nortriptyline",
    "imipramine",
    "lidocaine",
    "capsaicin",
    "tramadol",
    "botulinum_toxin_a",
    "Botulinum  Toxin-A",
    "botulinum--toxin__a",
    "morphine",
    "oxycodone",
    "aspirin",
    "ibuprofen",
    "gabapentin\u00e9",
    "x",
    "-",
]
RXNORM = ["25480", "187832", "72625", "39786", "704", "7531", "5691", "6387", "10689"]
RXNORM += ["7052", "7804", "999999", "0", "310431"]  # the last: listed nowhere (a product)
OFFSETS = ["Z", "z", "+00:00", "-00:00", "+01:00", "+05:30", "-03:30", "+14:00", "-12:00"]
OFFSETS += ["+23:59", "-23:59"]
DAY = timedelta(days=1)
NUMBER = "\x00number:"  # a placeholder for a number written as exact text (a decimal)


def _number_text(text: str) -> str:
    return f"{NUMBER}{text}\x00"


def dumps(raw: dict) -> str:
    """JSON text, with the placeholders replaced by the numbers' own text."""
    return re.sub(r'"\\u0000number:([^\\"]+)\\u0000"', r"\1", json.dumps(raw))


@st.composite
def decimals(draw, low: int, high: int, whole: bool = False) -> object:
    """A number in [low, high] as JSON writes it: int, float, or exact decimal text."""
    edges = [low, high, (low + high) / 2]
    if whole:
        value = draw(st.one_of(st.sampled_from(edges[:2]), st.integers(low, high)))
        return draw(st.sampled_from([int(value), float(value), _number_text(f"{int(value)}.0")]))
    kind = draw(st.sampled_from(["edge", "float", "decimal", "tiny"]))
    if kind == "edge":
        return draw(st.sampled_from(edges))
    if kind == "float":
        return draw(
            st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)
        )
    if kind == "tiny":  # just inside an edge, by a little more than binary64 tells
        text = draw(st.sampled_from(["0.0000000000000000001", "1e-300", "0.1"]))
        return _number_text(text) if low == 0 else high
    places = draw(st.integers(1, 12))
    units = draw(st.integers(low * 10**places, high * 10**places))
    text = f"{units // 10**places}.{units % 10**places:0{places}d}"
    return _number_text(text)


doses = st.one_of(
    st.sampled_from([1, 25, 60, 150, 200, 300, 1199, 1200, 1800, 50, 84]),
    st.sampled_from([_number_text(t) for t in ("1199.9999999999", "1200.0000000001", "1e-300")]),
    st.sampled_from([0.5, 1e308, 1.7976931348623157e308, 5e-324 * 2**60]),
    st.floats(min_value=1e-6, max_value=1e6, allow_nan=False),
)


@st.composite
def instants(draw, anchor: datetime) -> datetime:
    """An instant in the contract's range: near the anchor (events interact), near either
    bound, or anywhere."""
    where = draw(st.sampled_from(["anchor", "anchor", "anchor", "low", "high", "anywhere"]))
    if where == "anchor":
        low = max(-500 * 86400, int((TIME_MIN - anchor).total_seconds()))
        high = min(500 * 86400, int((TIME_MAX - anchor).total_seconds()))
        return anchor + timedelta(seconds=draw(st.integers(low, high)))
    if where == "low":
        return TIME_MIN + timedelta(seconds=draw(st.integers(0, 400 * 86400)))
    if where == "high":
        return TIME_MAX - timedelta(seconds=draw(st.integers(0, 400 * 86400)))
    return draw(
        st.datetimes(
            min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
        )
    )


anchors = st.one_of(
    st.just(TIME_MIN),
    st.just(TIME_MAX),
    st.sampled_from([datetime(2026, 1, 1, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)]),
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
)


def _offset(text: str) -> timedelta:
    if text in ("Z", "z"):
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    return sign * timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))


@st.composite
def time_texts(draw, utc: datetime) -> str:
    """An RFC 3339 `time` of `utc` in some offset, at times with a fraction past the
    microsecond (the microseconds of `utc` replaced)."""
    offset = draw(st.sampled_from(OFFSETS))
    try:
        local = (utc + _offset(offset)).replace(tzinfo=None)
    except OverflowError:
        local, offset = utc.replace(tzinfo=None), "Z"
    fraction = ""
    if utc < TIME_MAX and draw(st.booleans()):
        digits = draw(st.integers(1, 9))
        fraction = "." + str(draw(st.integers(0, 10**digits - 1))).zfill(digits)
    elif utc.microsecond:
        fraction = f".{utc.microsecond:06d}"
    separator = draw(st.sampled_from(["T", "T", "t"]))
    return f"{local:%Y-%m-%d}{separator}{local:%H:%M:%S}{fraction}{offset}"


@st.composite
def event_instants(draw, anchor: datetime, earlier: list[datetime]) -> datetime:
    """An instant near `anchor` or anywhere (`instants`), or at times one of the `earlier`
    ones: ties in time."""
    if earlier and draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(earlier))
    utc = draw(instants(anchor))
    earlier.append(utc)
    return utc


# Formulary drugs at their minimum dose, in their unit, with their minimum days at that dose.
ADEQUATE = [
    ("gabapentin", 1200, "mg", 28),
    ("pregabalin", 300, "mg", 28),
    ("duloxetine", 60, "mg", 28),
    ("venlafaxine", 150, "mg", 28),
    ("amitriptyline", 25, "mg", 42),
    ("nortriptyline", 25, "mg", 42),
    ("imipramine", 25, "mg", 42),
    ("lidocaine", 1, "patch", 28),
    ("capsaicin", 1, "patch", 84),
    ("tramadol", 200, "mg", 28),
    ("botulinum_toxin_a", 50, "unit", 84),
    ("morphine", 10, "mg", 28),
    ("oxycodone", 10, "mg", 28),
]
STOP_REASONS = ["ineffective", "side_effects", "completed", "patient_choice", "other"]


def _spelling(draw, drug: str) -> str:
    words = drug.split("_")
    joiner = draw(st.sampled_from(["_", " ", "-", "  ", " - "]))
    text = joiner.join(words)
    return draw(st.sampled_from([text, text.upper(), text.title(), f" {text} "]))


@st.composite
def stories(draw, base: datetime) -> list[tuple[str, datetime, dict]]:
    """A plausible treatment history around `base` (800 days after TIME_MIN, 400 before TIME_MAX):
    the condition, trials at adequate doses with baseline and on-treatment scores that fall
    (responded) or not (failed), overlapping (combinations), stops, dose changes, side
    effects, the assessment: where the responded, failed and refractory paths are decided."""
    events: list[tuple[str, datetime, dict]] = []

    def at(instant: datetime) -> datetime:
        return min(instant, TIME_MAX)

    def score(instant: datetime, value: int) -> None:
        value = max(0, min(10, value))
        instrument = draw(st.sampled_from(["nrs", "nrs", "vas", "peg"]))
        number = value * 10 if instrument == "vas" else value
        if instrument != "nrs" and draw(st.booleans()):
            number = _number_text(f"{number}.{draw(st.integers(0, 9))}") if number < 10 else number
        events.append(
            ("pain.score.recorded.v1", at(instant), {"score": number, "instrument": instrument})
        )

    first = base - 700 * DAY
    if draw(st.integers(0, 3)):
        onset = max(DATE_MIN, (first - draw(st.integers(0, 400)) * DAY).date())
        events.append(
            (
                "pain.condition.recorded.v1",
                first - draw(st.integers(0, 60)) * DAY,
                {"onset_date": onset.isoformat()},
            )
        )
    for number in range(draw(st.integers(1, 5))):
        drug, dose, unit, days = draw(st.sampled_from(ADEQUATE))
        trial_id = f"s{number}"
        start = first + timedelta(seconds=draw(st.integers(0, 600 * 86400)))
        dose = draw(st.sampled_from([dose, dose, dose * 2, _number_text(f"{dose}.0")]))
        data = {"trial_id": trial_id, "drug": _spelling(draw, drug), "daily_dose": dose}
        events.append(("pain.trial.started.v1", start, data | {"dose_unit": unit}))
        baseline = draw(st.integers(3, 10))
        for _ in range(draw(st.integers(0, 3))):
            score(start - timedelta(seconds=draw(st.integers(0, 30 * 86400))), baseline)
        length = draw(st.integers(max(1, days - 10), days + 120)) * DAY
        on_treatment = baseline // 2 if draw(st.booleans()) else baseline - draw(st.integers(0, 1))
        for _ in range(draw(st.integers(0, 4))):
            offset = draw(st.integers(14 * 86400, int(length.total_seconds())))
            score(start + timedelta(seconds=offset), on_treatment)
        if draw(st.integers(0, 3)):
            reason = draw(st.sampled_from(STOP_REASONS))
            stopped = {"trial_id": trial_id, "reason": reason}
            events.append(("pain.trial.stopped.v1", at(start + length), stopped))
        if draw(st.integers(0, 4)) == 0:
            changed = {"trial_id": trial_id, "daily_dose": draw(doses), "dose_unit": unit}
            when = start + draw(st.integers(-5, length.days + 5)) * DAY
            events.append(("pain.trial.dose_changed.v1", at(when), changed))
        if draw(st.integers(0, 5)) == 0:
            effect = {
                "effect": "somnolence",
                "severity": draw(st.sampled_from(["mild", "severe", "life_threatening"])),
                "intolerable": draw(st.booleans()),
            }
            effect |= (
                {"trial_id": trial_id} if draw(st.booleans()) else {"drug": _spelling(draw, drug)}
            )
            when = start + draw(st.integers(0, length.days)) * DAY
            events.append(("pain.side_effect.reported.v1", at(when), effect))
    classification = draw(st.sampled_from(["neuropathic", "mixed", "nociceptive", None]))
    for kind in ("medication_history", "physical_exam", "neurological_exam"):
        if draw(st.integers(0, 4)):
            data = {"kind": kind}
            if classification and kind == "neurological_exam":
                data["classification"] = classification
            events.append(
                ("pain.assessment.recorded.v1", at(base - draw(st.integers(0, 300)) * DAY), data)
            )
    if draw(st.integers(0, 3)):
        result = {"test": "mri", "result": draw(st.sampled_from(["positive", "negative"]))}
        events.append(
            ("pain.diagnostic.resulted.v1", at(base - draw(st.integers(0, 300)) * DAY), result)
        )
    return events


@st.composite
def onset_dates(draw, anchor: datetime) -> str:
    day = draw(
        st.one_of(
            st.just(DATE_MIN),
            st.just(DATE_MAX),
            st.dates(DATE_MIN, DATE_MAX),
            st.integers(
                max(-800, (DATE_MIN - anchor.date()).days), min(30, (DATE_MAX - anchor.date()).days)
            ).map(lambda n: anchor.date() + n * DAY),
        )
    )
    return day.isoformat()


@dataclass
class Feed:
    texts: list[str]  # JSON texts in arrival order, with exact repeats
    as_of: list[datetime]


# Optional `data` fields: sent as JSON null at times, which is the same as leaving them out.
OPTIONAL = {
    "pain.condition.recorded.v1": ["icd10_codes", "pain_sites"],
    "pain.score.recorded.v1": ["instrument"],
    "pain.trial.started.v1": ["rxnorm"],
    "pain.side_effect.reported.v1": ["intolerable"],
    "pain.assessment.recorded.v1": ["classification", "findings"],
    "pain.diagnostic.resulted.v1": ["relief_percent"],
    "pain.function.recorded.v1": ["goal_id"],
}


@st.composite
def event_data(draw, kind: str, anchor: datetime, ids: list[str]) -> dict:
    if kind == "pain.condition.recorded.v1":
        data = {"onset_date": draw(onset_dates(anchor))}
        if draw(st.booleans()):
            data["icd10_codes"] = ["G89.29"]
        return data
    if kind == "pain.score.recorded.v1":
        instrument = draw(st.sampled_from([None, "nrs", "vas", "peg"]))
        high = 100 if instrument == "vas" else 10
        score = draw(decimals(0, high, whole=instrument in (None, "nrs")))
        return {"score": score} | ({"instrument": instrument} if instrument else {})
    if kind == "pain.trial.started.v1":
        data = {
            "trial_id": draw(st.sampled_from(TRIAL_IDS)),
            "drug": draw(st.sampled_from(DRUGS)),
            "daily_dose": draw(doses),
            "dose_unit": draw(st.sampled_from(["mg", "mg", "patch", "unit"])),
        }
        if draw(st.booleans()):
            data["rxnorm"] = draw(st.sampled_from(RXNORM))
        return data
    if kind == "pain.trial.dose_changed.v1":
        return {
            "trial_id": draw(st.sampled_from(TRIAL_IDS)),
            "daily_dose": draw(doses),
            "dose_unit": draw(st.sampled_from(["mg", "mg", "patch", "unit"])),
        }
    if kind == "pain.trial.stopped.v1":
        reasons = ["ineffective", "side_effects", "completed", "patient_choice", "other"]
        return {
            "trial_id": draw(st.sampled_from(TRIAL_IDS)),
            "reason": draw(st.sampled_from(reasons)),
        }
    if kind == "pain.side_effect.reported.v1":
        by = draw(st.sampled_from(["trial", "drug", "both"]))
        data = {
            "effect": draw(st.sampled_from(["somnolence", "dizziness", "n\u00e4usea"])),
            "severity": draw(st.sampled_from(["mild", "moderate", "severe", "life_threatening"])),
        }
        if by in ("trial", "both"):
            data["trial_id"] = draw(st.sampled_from(TRIAL_IDS))
        if by in ("drug", "both"):
            data["drug"] = draw(st.sampled_from(DRUGS))
        if draw(st.booleans()):
            data["intolerable"] = draw(st.booleans())
        return data
    if kind == "pain.assessment.recorded.v1":
        kinds = ["medication_history", "physical_exam", "neurological_exam"]
        kinds += ["psychological_screening", "functional_assessment"]
        classes = [None, "nociceptive", "neuropathic", "nociplastic", "mixed"]
        data = {"kind": draw(st.sampled_from(kinds))}
        if (classification := draw(st.sampled_from(classes))) is not None:
            data["classification"] = classification
        if draw(st.booleans()):
            data["findings"] = {"note": "x", "depth": {"a": [1, 2.5]}}
        return data
    if kind == "pain.diagnostic.resulted.v1":
        tests = ["mri", "ct", "nerve_conduction_study", "emg", "diagnostic_nerve_block"]
        tests += ["medial_branch_block", "other"]
        data = {
            "test": draw(st.sampled_from(tests)),
            "result": draw(st.sampled_from(["positive", "negative", "inconclusive"])),
        }
        if draw(st.booleans()):
            data["relief_percent"] = draw(decimals(0, 100))
        return data
    if kind == "pain.function.recorded.v1":  # contract 1.1, once the models have it
        ranges = {
            "peg_interference": (0, 10, False),
            "bpi_interference": (0, 10, False),
            "promis_pf": (10, 90, False),
            "odi": (0, 100, False),
            "phq9": (0, 27, True),
            "gad7": (0, 21, True),
            "pgic": (1, 7, True),
        }
        instrument = draw(st.sampled_from(sorted(ranges)))
        low, high, whole = ranges[instrument]
        return {"instrument": instrument, "score": draw(decimals(low, high, whole=whole))}
    # A retraction: of an event sent so far (a retraction too), or of an id never sent.
    unknown = ["never-sent", "e999"]
    return {"retracted_id": draw(st.sampled_from(ids + unknown if ids else unknown))}


TYPES = sorted(EVENT_MODELS)


@st.composite
def feeds(draw) -> Feed:
    """One to three patients' events: for most a plausible treatment story, and random events
    of every type around an anchor instant, anywhere, or at the bounds; interleaved, with exact
    repeats of a (source, id); and instants T (at times an event's own instant)."""
    anchor = draw(anchors)
    base = min(max(anchor, TIME_MIN + 800 * DAY), TIME_MAX - 400 * DAY)  # a story fits
    patients = [f"pt-prop-{n:02d}" for n in range(draw(st.integers(1, 3)))]
    events: list[tuple[str, str, datetime, dict]] = []  # (patient, type, instant, data)
    for patient in patients:
        if draw(st.integers(0, 3)):
            events += [(patient, *event) for event in draw(stories(base))]
    times = [instant for _, _, instant, _ in events]
    for _ in range(draw(st.integers(0 if events else 1, 20))):
        kind = draw(st.sampled_from(TYPES))
        instant = draw(event_instants(anchor, times))
        events.append((draw(st.sampled_from(patients)), kind, instant, {}))
    events = draw(st.permutations(events))
    ids: list[str] = []
    texts: list[str] = []
    for number, (patient, kind, instant, data) in enumerate(events):
        event_id = f"e{number}"
        data = data or draw(event_data(kind, anchor, ids))
        for name in OPTIONAL.get(kind, []):
            if name not in data and draw(st.integers(0, 3)) == 0:
                data[name] = None
        raw = {
            "specversion": "1.0",
            "id": event_id,
            "source": draw(st.sampled_from(SOURCES)),
            "type": kind,
            "time": draw(time_texts(instant)),
            "data": {"patient_id": patient} | data,
        }
        ids.append(event_id)
        texts.append(dumps(raw))
        if draw(st.integers(0, 9)) == 0:  # the same (source, id) again, same content
            texts.append(texts[draw(st.integers(0, len(texts) - 1))])
    as_of = []
    for _ in range(draw(st.integers(1, 3))):
        later = st.integers(-100, 400).map(lambda days: min(base + days * DAY, TIME_MAX))
        utc = draw(
            st.one_of(
                st.just(TIME_MIN),
                st.just(TIME_MAX),
                instants(anchor),
                st.sampled_from(times),
                later,
            )
        )
        offset = _offset(draw(st.sampled_from(OFFSETS)))
        try:
            as_of.append(utc.astimezone(timezone(offset)))
        except OverflowError:
            as_of.append(utc)
    return Feed(texts, as_of)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(feed=feeds())
def test_no_contract_valid_history_makes_evaluate_raise_at_any_instant(feed: Feed):
    by_patient: dict[str, list] = {}
    for text in feed.texts:
        try:
            event = parse_event(text)
        except ContractViolation:
            assume(False)  # what the contract refuses never reaches a rule
        by_patient.setdefault(event.patient_id, []).append(event)
    for as_of in feed.as_of:
        for events in by_patient.values():
            evaluate(events, POLICY, as_of)  # must not raise


@given(feed=feeds())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_generated_events_are_mostly_contract_valid(feed: Feed):
    """The property above discards what the contract refuses: nearly nothing may be."""
    refused = []
    for text in feed.texts:
        try:
            parse_event(text)
        except ContractViolation as violation:
            refused.append((str(violation), text))
    assert len(refused) <= max(1, len(feed.texts) // 10), refused
