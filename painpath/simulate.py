"""A reproducible, realistic simulated hospital feed of clinical CloudEvents (CONTRACT.md).

Each simulated patient follows an archetype drawn at random (first-line responder, recent onset,
under treatment, refractory ...), but the archetype only shapes the *care*: drugs in guideline
order, doses, titration, how long trials last, side effects, assessments and diagnostics. Pain
scores are read off a latent pain level that each trial lowers once its dose is therapeutic, with
measurement noise, so response and failure emerge from the scores and the classifier still has
to find them.

The feed has the imperfections of a real one: exact re-deliveries, records entered in error and
retracted (a few retractions arrive before what they retract), events delayed in arrival by days
to weeks, and a few lines that break the contract. It is deterministic for (patients, seed,
as_of): one `random.Random(seed)` drives everything, and the first n patients of a cohort are
the same whatever its size.

Dose and duration knowledge comes from the guidelines (reference/DOMAIN_FACTS.md, NeuPSIG 2015),
not from the policy: the simulator plays the clinicians, the classifier judges them.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)

EHR = "urn:hospital:st-olaf:ehr"
PHARMACY = "urn:hospital:st-olaf:pharmacy"
LAB = "urn:hospital:st-olaf:lab"
SOURCES = (EHR, PHARMACY, LAB)

# Imperfections, as a share of the clinical events.
DUPLICATE_RATE = 0.02
RETRACTION_RATE = 0.01
LATE_RATE = 0.05
INVALID_RATE = 0.005

CONDITION = "pain.condition.recorded.v1"
SCORE = "pain.score.recorded.v1"
TRIAL_STARTED = "pain.trial.started.v1"
DOSE_CHANGED = "pain.trial.dose_changed.v1"
TRIAL_STOPPED = "pain.trial.stopped.v1"
SIDE_EFFECT = "pain.side_effect.reported.v1"
ASSESSMENT = "pain.assessment.recorded.v1"
DIAGNOSTIC = "pain.diagnostic.resulted.v1"
RETRACTED = "pain.event.retracted.v1"

Line = dict[str, Any] | str
"""One line of the feed: an event as a JSON object, or raw text that is not valid JSON."""

DAY = 86_400
_EPOCH = datetime(1970, 1, 1)
_ID_PREFIX = {EHR: "ehr", PHARMACY: "pharmacy", LAB: "lab"}
# Share of the entered-in-error events whose retraction overtakes them in arrival.
_RETRACTION_FIRST = 0.15
# Events of these types get entered in error now and then (and are retracted).
_ERROR_PRONE = {SCORE, DOSE_CHANGED, SIDE_EFFECT, ASSESSMENT, DIAGNOSTIC}
# Only some of the clinical events are error-prone: scale so retractions are RETRACTION_RATE.
_ERROR_RATE = RETRACTION_RATE / 0.8

# The kinds of delivery, in the order a feed's statistics count them.
_EVENT, _RETRACTION, _DUPLICATE, _INVALID = range(4)


@dataclass(frozen=True)
class FeedStats:
    """What a simulated feed holds. `events` counts every line, imperfect ones included."""

    patients: int
    events: int
    duplicates: int  # exact re-deliveries of an event already delivered
    retractions: int  # pain.event.retracted.v1 events
    invalid: int  # lines that break the contract
    late: int  # valid events (first deliveries) arriving after one with a later `time`


def simulate(patients: int, seed: int, as_of: datetime = AS_OF) -> list[Line]:
    """The feed of `patients` simulated patients in arrival order, every `time` before `as_of`.

    Each line is an event as a JSON-serialisable dict, or (rarely) raw text of a truncated event.
    A duplicate is the same dict delivered again. Deterministic for (patients, seed, as_of).
    """
    deliveries = [delivery for batch in _cohort(patients, seed, as_of) for delivery in batch]
    deliveries.sort()
    return [delivery[4] for delivery in deliveries]


def write_feed(
    path: Path, patients: int, seed: int, as_of: datetime = AS_OF, progress: bool = True
) -> FeedStats:
    """Write `simulate(patients, seed, as_of)` to `path` as JSON lines (one compact object per
    line, raw text for a truncated event) and say what it holds."""
    encode = json.JSONEncoder(separators=(",", ":")).encode
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    lines: list[tuple[int, int, int, int, str]] = []
    with Progress(*columns, TimeRemainingColumn(), disable=not progress) as bar:
        simulating = bar.add_task("simulating patients", total=patients)
        for batch in _cohort(patients, seed, as_of):
            lines.extend(
                (arrival, seq, kind, at, item if isinstance(item, str) else encode(item))
                for arrival, seq, kind, at, item in batch
            )
            bar.advance(simulating)
        lines.sort()
        writing = bar.add_task("writing events", total=len(lines))
        with path.open("w", encoding="utf-8") as out:
            for start in range(0, len(lines), 10_000):
                chunk = lines[start : start + 10_000]
                out.write("".join(line[4] + "\n" for line in chunk))
                bar.advance(writing, len(chunk))
    return _stats(patients, lines)


def _stats(patients: int, ordered: Iterable[tuple[int, int, int, int, Any]]) -> FeedStats:
    counts = [0, 0, 0, 0]
    late, latest = 0, -1
    for _, _, kind, at, _ in ordered:
        counts[kind] += 1
        if kind in (_EVENT, _RETRACTION):
            if at < latest:
                late += 1
            else:
                latest = at
    return FeedStats(
        patients=patients,
        events=sum(counts),
        duplicates=counts[_DUPLICATE],
        retractions=counts[_RETRACTION],
        invalid=counts[_INVALID],
        late=late,
    )


# --- Drugs, conditions and archetypes -----------------------------------------------------------


@dataclass(frozen=True)
class _Drug:
    """A drug as clinicians use it: guideline dose ladder, therapeutic dose, trial length."""

    name: str
    drug_class: str
    ladder: tuple[float, ...]  # the doses titration climbs, or the sizes of one application
    therapeutic: float  # lowest dose of the guideline range (0: any dose)
    trial_days: int  # how long a fair trial lasts at a therapeutic dose
    step_days: tuple[int, int] | None  # days between titration steps; None: one application
    side_effects: tuple[tuple[str, float], ...]  # (effect, chance per trial)
    unit: str = "mg"
    rxcui: str | None = None
    formulary: bool = True


# Doses from NeuPSIG 2015 / BJA Education 2018 (DOMAIN_FACTS 3.2); side-effect rates of the
# order reported in the drugs' trials.
# fmt: off
_DRUGS = {
    drug.name: drug
    for drug in (
        _Drug(
            "gabapentin", "gabapentinoid", (300, 600, 900, 1200, 1800, 2400, 3600), 1200, 28,
            (3, 7), (("dizziness", 0.19), ("somnolence", 0.14), ("peripheral_oedema", 0.07),
                     ("fatigue", 0.05)), rxcui="25480",
        ),
        _Drug(
            "pregabalin", "gabapentinoid", (75, 150, 300, 450, 600), 300, 28, (7, 14),
            (("dizziness", 0.25), ("somnolence", 0.15), ("peripheral_oedema", 0.08),
             ("weight_gain", 0.05), ("blurred_vision", 0.04)), rxcui="187832",
        ),
        _Drug(
            "duloxetine", "snri", (30, 60, 90, 120), 60, 28, (7, 14),
            (("nausea", 0.20), ("somnolence", 0.10), ("dry_mouth", 0.09), ("constipation", 0.08),
             ("dizziness", 0.07), ("hyperhidrosis", 0.05)), rxcui="72625",
        ),
        _Drug(
            "venlafaxine", "snri", (37.5, 75, 150, 225), 150, 28, (7, 14),
            (("nausea", 0.20), ("dizziness", 0.10), ("hyperhidrosis", 0.08), ("insomnia", 0.07)),
            rxcui="39786",
        ),
        _Drug(
            "amitriptyline", "tca", (10, 20, 25, 50, 75), 25, 42, (7, 14),
            (("dry_mouth", 0.30), ("somnolence", 0.20), ("constipation", 0.12),
             ("dizziness", 0.10), ("weight_gain", 0.06)), rxcui="704",
        ),
        _Drug(
            "nortriptyline", "tca", (10, 25, 50, 75), 25, 42, (7, 14),
            (("dry_mouth", 0.20), ("constipation", 0.12), ("somnolence", 0.10),
             ("dizziness", 0.08)), rxcui="7531",
        ),
        _Drug(
            "imipramine", "tca", (10, 25, 50, 75), 25, 42, (7, 14),
            (("dry_mouth", 0.20), ("dizziness", 0.10), ("constipation", 0.10)), rxcui="5691",
        ),
        _Drug(
            "lidocaine", "topical", (1, 2, 3), 1, 28, (7, 14),
            (("application_site_reaction", 0.08),), unit="patch", rxcui="6387",
        ),
        _Drug(
            "capsaicin", "topical", (1, 2, 3, 4), 1, 84, None,
            (("application_site_pain", 0.40), ("application_site_erythema", 0.30)), unit="patch",
        ),
        _Drug(
            "tramadol", "weak_opioid", (50, 100, 150, 200, 300, 400), 200, 28, (3, 7),
            (("nausea", 0.20), ("dizziness", 0.15), ("constipation", 0.15), ("somnolence", 0.10),
             ("headache", 0.05)), rxcui="10689",
        ),
        _Drug(
            "morphine", "strong_opioid", (10, 20, 30, 45, 60, 90), 0, 28, (5, 10),
            (("constipation", 0.35), ("nausea", 0.20), ("somnolence", 0.18), ("pruritus", 0.07)),
            rxcui="7052",
        ),
        _Drug(
            "oxycodone", "strong_opioid", (10, 20, 30, 40, 60, 80), 0, 28, (5, 10),
            (("constipation", 0.30), ("nausea", 0.22), ("somnolence", 0.15), ("dizziness", 0.12),
             ("pruritus", 0.06)), rxcui="7804",
        ),
        _Drug(
            "botulinum_toxin_a", "neurotoxin", (25, 50, 100, 150, 200), 50, 84, None,
            (("injection_site_pain", 0.10), ("muscle_weakness", 0.04)), unit="unit",
        ),
        # Not of known effectiveness for chronic pain (not in the policy's formulary).
        _Drug(
            "cannabidiol", "cannabinoid", (50, 100, 200, 300), 100, 28, (7, 14),
            (("somnolence", 0.10), ("diarrhoea", 0.08)), formulary=False,
        ),
        _Drug(
            "ibuprofen", "nsaid", (1200, 1600, 2400), 1200, 28, (7, 14),
            (("dyspepsia", 0.10),), formulary=False,
        ),
        _Drug(
            "carbamazepine", "anticonvulsant", (200, 400, 600, 800), 400, 28, (3, 7),
            (("dizziness", 0.20), ("somnolence", 0.15), ("nausea", 0.10),
             ("hyponatraemia", 0.03)), rxcui="2002", formulary=False,
        ),
    )
}
# fmt: on
_FIRST_LINE = {
    "gabapentinoid": (("gabapentin", 0.55), ("pregabalin", 0.45)),
    "snri": (("duloxetine", 0.8), ("venlafaxine", 0.2)),
    "tca": (("amitriptyline", 0.7), ("nortriptyline", 0.25), ("imipramine", 0.05)),
}


@dataclass(frozen=True)
class _Condition:
    icd10: tuple[str, ...]
    sites: tuple[str, ...]
    tests: tuple[str, ...]  # the diagnostics usually ordered for it
    first_drug: str | None = None  # a drug tried before the guideline's first line


_CONDITIONS = {
    "neuropathic": (
        _Condition(("E11.42",), ("left foot", "right foot"), ("nerve_conduction_study",)),
        _Condition(("B02.29",), ("left thorax",), ("other",)),
        _Condition(("M54.16",), ("lower back", "left leg"), ("mri", "emg")),
        _Condition(("G89.28",), ("right groin",), ("diagnostic_nerve_block",)),
        _Condition(("G50.0",), ("right face",), ("mri",), first_drug="carbamazepine"),
    ),
    "nociceptive": (
        _Condition(("M54.50", "G89.29"), ("lower back",), ("mri", "medial_branch_block")),
        _Condition(("M47.816",), ("lower back",), ("ct", "medial_branch_block")),
        _Condition(("M17.11",), ("right knee",), ("other",)),
    ),
    "nociplastic": (
        _Condition(("M79.7",), ("neck", "shoulders", "lower back", "hips"), ("other",)),
        _Condition(("G90.522",), ("left foot",), ("other", "mri")),
        _Condition(("G89.4",), ("lower back", "neck"), ("mri",)),
    ),
    "mixed": (
        _Condition(("M54.17", "M47.816"), ("lower back", "right leg"), ("mri", "emg")),
        _Condition(("M96.1", "G89.28"), ("lower back", "left leg"), ("mri",)),
    ),
}
_CLASSIFICATIONS = (
    ("neuropathic", 0.4),
    ("nociceptive", 0.25),
    ("mixed", 0.2),
    ("nociplastic", 0.15),
)
_NON_NEUROPATHIC = (("nociceptive", 0.35), ("mixed", 0.35), ("nociplastic", 0.3))
_ASSESSMENT_PARTS = (
    "medication_history",
    "physical_exam",
    "neurological_exam",
    "classification",
    "diagnostic",
)


class _Archetype(Enum):
    FIRST_LINE_RESPONDER = "first_line_responder"
    RECENT_ONSET = "recent_onset"
    UNDER_TREATMENT = "under_treatment"
    NEUROPATHIC_REFRACTORY = "neuropathic_refractory"
    COMBINATION_REFRACTORY = "combination_refractory"
    REFRACTORY_INCOMPLETE = "refractory_incomplete_assessment"
    RESPONDING = "responding_to_active_trial"


_ARCHETYPES = (
    (_Archetype.FIRST_LINE_RESPONDER, 0.20),
    (_Archetype.RECENT_ONSET, 0.10),
    (_Archetype.UNDER_TREATMENT, 0.24),
    (_Archetype.NEUROPATHIC_REFRACTORY, 0.12),
    (_Archetype.COMBINATION_REFRACTORY, 0.10),
    (_Archetype.REFRACTORY_INCOMPLETE, 0.10),
    (_Archetype.RESPONDING, 0.14),
)


class _Fate(Enum):
    """How a trial goes: the care plan; whether the pain responds is in the efficacy."""

    RESPOND = "respond"  # therapeutic dose long enough, the drug works
    FAIL = "fail"  # therapeutic dose long enough, the pain stays
    INTOLERANT = "intolerant"  # a severe or intolerable side effect stops it
    TOO_SHORT = "too_short"  # stopped before a fair trial at a therapeutic dose
    LOW_DOSE = "low_dose"  # never titrated to a therapeutic dose
    IN_PROGRESS = "in_progress"  # still titrating, or not yet long at dose


_COUNTED = (_Fate.FAIL, _Fate.INTOLERANT)


def _pick(rng: random.Random, weighted: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([item for item, _ in weighted], [weight for _, weight in weighted])[0]


# --- One patient's clinical history -------------------------------------------------------------


@dataclass
class _Trial:
    """One trial; days are relative to its start until it is placed (`start`: day of history)."""

    trial_id: str
    drug: _Drug
    efficacy: float  # share of the pain it takes away at full effect
    doses: list[tuple[int, float]]
    adequate: int | None  # day the dose became therapeutic
    stop: int | None = None
    age: int | None = None  # days from start to the end of the history, when still active
    reason: str | None = None
    remission: bool = False  # the relief outlasts the trial (stopped as completed)
    open_ended: bool = False  # still going, and may have been going for any time
    side_effects: list[tuple[int, str, str, bool]] = field(default_factory=list)
    offset: int = 0  # days after the start of its block
    start: int = 0

    @property
    def span(self) -> int:
        return self.stop if self.stop is not None else self.age  # type: ignore[return-value]

    def effect(self, day: int) -> float:
        """The share of pain it takes away on `day` of the history."""
        since = day - self.start
        if since < 0:
            return 0.0
        if self.stop is not None and since > self.stop:
            at_stop = self._effect_since_start(self.stop)
            return at_stop if self.remission else at_stop * max(0.0, 1 - (since - self.stop) / 14)
        return self._effect_since_start(since)

    def _effect_since_start(self, since: int) -> float:
        if self.adequate is not None and (self.stop is None or self.adequate < self.stop):
            return self.efficacy * min(1.0, since / (self.adequate + 14))
        return self.efficacy * 0.35 * min(1.0, since / 28)


class _History:
    """One patient's clinical events in clinical time: (epoch seconds, source, type, data)."""

    def __init__(self, rng: random.Random, patient_id: str, as_of_epoch: int) -> None:
        self.rng = rng
        self.patient_id = patient_id
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.trials: list[_Trial] = []
        self.clocks: dict[int, int] = {}

        archetype = _pick(rng, _ARCHETYPES)
        neuropathic_plan = archetype is _Archetype.NEUROPATHIC_REFRACTORY or (
            archetype is _Archetype.REFRACTORY_INCOMPLETE and rng.random() < 0.5
        )
        if neuropathic_plan:
            classification = "neuropathic"
        elif archetype in (_Archetype.COMBINATION_REFRACTORY, _Archetype.REFRACTORY_INCOMPLETE):
            classification = _pick(rng, _NON_NEUROPATHIC)
        else:
            classification = _pick(rng, _CLASSIFICATIONS)
        condition = rng.choice(_CONDITIONS[classification])

        end_day = as_of_epoch // DAY - rng.randint(1, 21)
        if archetype is _Archetype.RECENT_ONSET:
            onset_ago = rng.randint(20, 85)
            end_day = as_of_epoch // DAY - rng.randint(1, 5)
            target = max(7, onset_ago - rng.randint(0, 10) - (as_of_epoch // DAY - end_day))
        else:
            target = rng.randint(400 if neuropathic_plan else 365, 1095)
        drugs = self._drug_sequence(condition)
        blocks = self._plan(archetype, neuropathic_plan, drugs, target)
        if archetype is _Archetype.RECENT_ONSET and blocks:
            # Started within the weeks since the pain began, however far it got.
            (trial,) = blocks[0]
            trial.start = rng.randint(0, target // 2)
            trial.age = target - trial.start
            self.length = target
        else:
            self.length = self._place(blocks, target)
        self.day0 = (end_day - self.length) * DAY
        onset = (
            end_day - self.length - rng.randint(30, 1500)
            if archetype is not _Archetype.RECENT_ONSET
            else as_of_epoch // DAY - onset_ago
        )

        refractory = archetype in (
            _Archetype.NEUROPATHIC_REFRACTORY,
            _Archetype.COMBINATION_REFRACTORY,
            _Archetype.REFRACTORY_INCOMPLETE,
        )
        if archetype is _Archetype.REFRACTORY_INCOMPLETE:
            missing = rng.choice(
                _ASSESSMENT_PARTS[:3]
                + (("diagnostic",) if neuropathic_plan else _ASSESSMENT_PARTS[3:])
            )
        elif refractory or rng.random() < 0.8:
            missing = None
        else:
            missing = rng.choice(_ASSESSMENT_PARTS)
        base = rng.uniform(6.3, 8.5) if refractory else rng.uniform(5.0, 8.0)

        self._condition(condition, onset)
        self._scores(base)
        self._assessments(classification, condition, missing, reclassify=not refractory)
        for trial in self.trials:
            self._trial_events(trial)
        self.events.sort(key=lambda event: event[0])

    # The plan: which drugs, in which order, and how each trial goes.

    def _drug_sequence(self, condition: _Condition) -> list[_Drug]:
        rng = self.rng
        classes = list(_FIRST_LINE)
        rng.shuffle(classes)
        first = [_pick(rng, _FIRST_LINE[name]) for name in classes]
        if rng.random() < 0.3:  # a switch within the class (gabapentin <-> pregabalin)
            at = next(i for i, name in enumerate(first) if name in ("gabapentin", "pregabalin"))
            first.insert(at + 1, "pregabalin" if first[at] == "gabapentin" else "gabapentin")
        second = ["tramadol"] + ["lidocaine"] * (rng.random() < 0.7)
        second += ["capsaicin"] * (rng.random() < 0.3)
        third = [rng.choice(("oxycodone", "morphine"))] + ["botulinum_toxin_a"] * (
            rng.random() < 0.4
        )
        rng.shuffle(second)
        rng.shuffle(third)
        names = first + second + third
        if rng.random() < 0.12:
            names.insert(rng.randint(0, 3), rng.choice(("cannabidiol", "ibuprofen")))
        if condition.first_drug:
            names.insert(0, condition.first_drug)
        return [_DRUGS[name] for name in names]

    def _plan(
        self, archetype: _Archetype, neuropathic: bool, drugs: list[_Drug], target: int
    ) -> list[list[_Trial]]:
        """The trials in blocks (one trial, or two taken together), in order of start."""
        rng = self.rng
        blocks: list[list[_Trial]] = []

        def take(fate: _Fate, ongoing: bool = False) -> None:
            while drugs and not drugs[0].formulary:
                blocks.append(
                    [self._trial(drugs.pop(0), rng.choice(_COUNTED + (_Fate.TOO_SHORT,)))]
                )
            if drugs:
                blocks.append([self._trial(drugs.pop(0), fate, ongoing)])

        def few_counted(trials: int) -> None:
            counted = 0
            for _ in range(trials):
                fate = _pick(
                    rng,
                    (
                        (_Fate.FAIL, 0.35),
                        (_Fate.INTOLERANT, 0.2),
                        (_Fate.TOO_SHORT, 0.2),
                        (_Fate.LOW_DOSE, 0.25),
                    ),
                )
                if fate in _COUNTED:
                    counted += 1
                    if counted > 2:
                        fate = _Fate.TOO_SHORT
                take(fate)

        def counted_fate() -> _Fate:
            return _Fate.INTOLERANT if rng.random() < 0.25 else _Fate.FAIL

        if archetype is _Archetype.FIRST_LINE_RESPONDER:
            if rng.random() < 0.35:
                take(rng.choice((_Fate.INTOLERANT, _Fate.TOO_SHORT, _Fate.LOW_DOSE)))
            take(_Fate.RESPOND, ongoing=rng.random() < 0.85)
        elif archetype is _Archetype.RECENT_ONSET:
            if rng.random() < 0.6:  # the first drug of the sequence, whatever it is
                blocks.append([self._trial(drugs.pop(0), _Fate.IN_PROGRESS, ongoing=True)])
        elif archetype is _Archetype.UNDER_TREATMENT:
            few_counted(rng.randint(1, 3))
            # Years of care without a fair trial: too short, too low a dose, off-formulary.
            while (
                len(drugs) > 1 and sum(max(t.span for t in b) + 30 for b in blocks) < target - 300
            ):
                take(rng.choice((_Fate.TOO_SHORT, _Fate.LOW_DOSE)))
            if rng.random() < 0.7:
                take(_Fate.IN_PROGRESS, ongoing=True)
        elif archetype is _Archetype.RESPONDING:
            few_counted(rng.randint(1, 3))
            take(_Fate.RESPOND, ongoing=True)
        elif neuropathic:
            failures = rng.choice((4, 4, 5, 5, 6))
            available = sum(drug.formulary for drug in drugs) - failures - 1
            inadequate = min(rng.choice((0, 0, 1, 1, 2)), max(0, available))
            fates = [counted_fate() for _ in range(failures)]
            for _ in range(inadequate):
                fates.insert(
                    rng.randint(0, len(fates) - 1), rng.choice((_Fate.TOO_SHORT, _Fate.LOW_DOSE))
                )
            ending = rng.random()
            for i, fate in enumerate(fates):
                take(fate, ongoing=i == len(fates) - 1 and fate is _Fate.FAIL and ending < 0.25)
            if ending > 0.85:
                take(_Fate.IN_PROGRESS, ongoing=True)
        else:
            for _ in range(rng.randint(1, 2)):
                take(counted_fate())
            blocks.append(self._combination(drugs))
            ending = rng.random()
            if ending < 0.35:
                take(counted_fate())
            elif ending < 0.5:
                take(_Fate.IN_PROGRESS, ongoing=True)
        return blocks

    def _trial(self, drug: _Drug, fate: _Fate, ongoing: bool = False, alone: bool = True) -> _Trial:
        """A trial of `drug` with days relative to its start, going as `fate` says; `alone`:
        not part of a combination."""
        rng = self.rng
        therapeutic = [dose for dose in drug.ladder if dose >= drug.therapeutic]
        low = [dose for dose in drug.ladder if dose < drug.therapeutic]
        if fate is _Fate.LOW_DOSE and not low:
            fate = _Fate.TOO_SHORT
        # Most patients are kept at the lower end of the therapeutic range.
        target = rng.choice(low if fate is _Fate.LOW_DOSE else therapeutic[:2] * 2 + therapeutic)
        if drug.step_days is None:
            doses = [(0, target)]
        else:
            rung = 1 if rng.random() < 0.2 and drug.ladder[1] <= target else 0
            doses, day = [(0, drug.ladder[rung])], 0
            while drug.ladder[rung] < target:
                rung += 1
                day += rng.randint(*drug.step_days)
                doses.append((day, drug.ladder[rung]))
        adequate = next((day for day, dose in doses if dose >= drug.therapeutic), None)
        reached = adequate if adequate is not None else doses[-1][0]
        trial = _Trial(
            trial_id=f"rx-{len(self.trials) + 1:03d}",
            drug=drug,
            efficacy=rng.uniform(0.0, 0.35),
            doses=doses,
            adequate=adequate if fate is not _Fate.LOW_DOSE else None,
        )
        self.trials.append(trial)

        if fate is _Fate.RESPOND:
            # A few respond only partly: around the 30 % threshold, for the scores to decide.
            trial.efficacy = (
                rng.uniform(0.45, 0.7) if rng.random() < 0.85 else rng.uniform(0.25, 0.45)
            )
            if ongoing:
                trial.age, trial.open_ended = reached + rng.randint(45, 400), True
            else:
                trial.stop, trial.reason = reached + rng.randint(150, 360), "completed"
                trial.remission = True
        elif fate is _Fate.FAIL:
            trial.efficacy = rng.uniform(0.0, 0.15)
            if ongoing:
                trial.age = reached + drug.trial_days + rng.randint(21, 90)
                trial.open_ended = True
            else:
                trial.stop = reached + drug.trial_days + rng.randint(5, 45)
                trial.reason = "ineffective" if rng.random() < 0.9 else "patient_choice"
        elif fate is _Fate.INTOLERANT:
            onset = rng.randint(2, reached + 21)
            trial.stop = onset + rng.randint(1, 5)
            trial.reason = "side_effects" if rng.random() < 0.85 else "patient_choice"
            effect = _pick(rng, drug.side_effects)
            severity = _pick(rng, (("severe", 0.5), ("moderate", 0.47), ("life_threatening", 0.03)))
            intolerable = severity != "severe" or rng.random() < 0.7
            trial.side_effects.append((onset, effect, severity, intolerable))
        elif fate is _Fate.TOO_SHORT:
            trial.stop = reached + rng.randint(7, max(8, drug.trial_days - 7))
            trial.reason = _pick(
                rng, (("ineffective", 0.4), ("patient_choice", 0.35), ("other", 0.25))
            )
        elif fate is _Fate.LOW_DOSE:
            trial.stop = doses[-1][0] + rng.randint(28, 84)
            trial.reason = "ineffective" if rng.random() < 0.7 else "patient_choice"
        else:
            trial.efficacy = rng.uniform(0.0, 0.6)
            trial.age = rng.randint(3, max(4, reached + drug.trial_days - 3))

        span = trial.span
        for effect, chance in drug.side_effects:
            if rng.random() < chance:
                day = rng.randint(1, reached + 28)
                if day < span:
                    severity = "mild" if rng.random() < 0.7 else "moderate"
                    trial.side_effects.append((day, effect, severity, False))
        if fate is _Fate.FAIL and alone and len(doses) > 1 and rng.random() < 0.1:
            # Dose cut back for a side effect once the trial at dose was long enough.
            day = max(reached + drug.trial_days, doses[-1][0] + 7) + rng.randint(0, 10)
            if day < span:
                doses.append((day, doses[-2][1]))
                trial.side_effects.append((day, _pick(rng, drug.side_effects), "moderate", False))
        return trial

    def _combination(self, drugs: list[_Drug]) -> list[_Trial]:
        """Two drugs of different classes taken together long enough, neither helping."""
        rng = self.rng
        formulary = [drug for drug in drugs if drug.formulary]
        first = formulary[0]
        second = next(drug for drug in formulary if drug.drug_class != first.drug_class)
        drugs.remove(first)
        drugs.remove(second)
        a = self._trial(first, _Fate.FAIL, alone=False)
        b = self._trial(second, _Fate.FAIL, alone=False)
        b.offset = (a.adequate or 0) + rng.randint(14, 35)
        together = b.offset + (b.adequate or 0) + max(b.drug.trial_days, 28) + rng.randint(7, 35)
        a.stop, a.reason = together, "ineffective"
        b.stop, b.reason = together - b.offset + rng.randint(0, 28), "ineffective"
        return [a, b]

    def _place(self, blocks: list[list[_Trial]], target: int) -> int:
        """Lay the blocks of trials out in time; returns the days of history (at least target).

        The slack up to `target` goes where it is plausible: a trial still going has simply
        been going longer; otherwise waits between trials and the follow-up after the last
        one grow.
        """
        rng = self.rng
        if not blocks:
            return target
        last = blocks[-1][-1]
        # Waits: before the first trial, between trials, and the follow-up after the last.
        waits = [rng.randint(14, 90)] + [rng.randint(0, 42) for _ in blocks[1:]]
        waits.append(0 if last.stop is None else rng.randint(14, 120))
        spans = [max(trial.offset + trial.span for trial in block) for block in blocks]
        slack = target - sum(waits) - sum(spans)
        if slack > 0 and last.open_ended:
            last.age = last.span + slack
            spans[-1] += slack
        elif slack > 0:
            weights = [rng.random() for _ in waits]
            if last.stop is None:
                weights[-1] = 0.0
            shares = [int(slack * weight / sum(weights)) for weight in weights]
            shares[0] += slack - sum(shares)
            waits = [wait + share for wait, share in zip(waits, shares, strict=True)]
        day = 0
        for wait, span, block in zip(waits, spans, blocks, strict=False):
            day += wait
            for trial in block:
                trial.start = day + trial.offset
            day += span
        return day + waits[-1]

    # The events.

    def _emit(self, at: int, source: str, event_type: str, /, **data: Any) -> None:
        self.events.append((at, source, event_type, {"patient_id": self.patient_id, **data}))

    def _visit(self, day: int, minutes: int = 0) -> int:
        """When something happened `minutes` into the visit of `day` (one visit a day)."""
        clock = self.clocks.get(day)
        if clock is None:
            clock = self.clocks[day] = self.rng.randrange(7 * 3600, 14 * 3600 + 1800, 60)
        return self.day0 + day * DAY + clock + minutes * 60

    def _condition(self, condition: _Condition, onset_day: int) -> None:
        rng = self.rng
        if rng.random() < 0.08:  # never documented: pain start comes from scores and trials
            return
        onset = (_EPOCH + timedelta(days=onset_day)).date()
        codes = list(condition.icd10)
        self._emit(
            self._visit(0, 5),
            EHR,
            CONDITION,
            onset_date=onset.isoformat(),
            icd10_codes=codes,
            pain_sites=list(condition.sites),
        )
        if rng.random() < 0.1 and self.length > 60:  # the record revised later
            if "G89.29" not in codes and "G89.4" not in codes:
                codes = [*codes, "G89.29"]
            self._emit(
                self._visit(rng.randint(30, self.length), 5),
                EHR,
                CONDITION,
                onset_date=(onset - timedelta(days=rng.choice((0, 0, 30, 90)))).isoformat(),
                icd10_codes=codes,
            )

    def _scores(self, base: float) -> None:
        """A score at every visit (1-4 weeks apart, and when a trial starts or stops)."""
        rng = self.rng
        forced = {trial.start for trial in self.trials}
        forced |= {trial.start + trial.stop for trial in self.trials if trial.stop is not None}
        forced.add(0)
        visits = set(forced)
        day = 0
        while day <= self.length:
            if all(abs(day - other) > 3 for other in forced):
                visits.add(day)
            day += rng.randint(7, 28)
        instrument = _pick(rng, (("nrs", 0.75), ("vas", 0.12), ("peg", 0.13)))
        named = rng.random() < 0.7  # some sources leave out the default instrument
        drift = 0.0
        starts = {trial.start for trial in self.trials}
        for day in sorted(visits):
            if day > self.length:
                continue
            drift = 0.85 * drift + rng.gauss(0, 0.35)
            if rng.random() < (0.02 if day in starts else 0.04):
                continue  # not recorded this time
            relief = 1.0
            for trial in self.trials:
                relief *= 1 - trial.effect(day)
            pain = (base + drift) * relief + (rng.uniform(1, 2.5) if rng.random() < 0.03 else 0)
            used = instrument if rng.random() < 0.9 else rng.choice(("nrs", "vas", "peg"))
            if used == "nrs":
                score: float = min(10, max(0, round(pain + rng.gauss(0, 0.6))))
            elif used == "vas":
                score = min(100, max(0, round(10 * pain + rng.gauss(0, 6))))
            else:
                items = (min(10, max(0, round(pain + rng.gauss(0, 0.9)))) for _ in range(3))
                score = round(sum(items) / 3, 2)
            data: dict[str, Any] = {"score": score}
            if used != "nrs" or named:
                data["instrument"] = used
            self._emit(self._visit(day), EHR, SCORE, **data)

    def _assessments(
        self, classification: str, condition: _Condition, missing: str | None, reclassify: bool
    ) -> None:
        rng = self.rng
        last = self.length

        def at(first: int, latest: int) -> int:
            return self._visit(min(last, rng.randint(first, latest)), rng.randint(10, 25))

        if missing != "medication_history":
            prior = rng.sample(
                ("paracetamol", "ibuprofen", "naproxen", "codeine", "diclofenac"), rng.randint(1, 3)
            )
            self._emit(
                at(0, 0),
                EHR,
                ASSESSMENT,
                kind="medication_history",
                findings={"prior_analgesics": prior, "opioid_naive": "codeine" not in prior},
            )
        exam: dict[str, Any] = {"bmi": round(rng.gauss(28, 4), 1)}
        if condition.icd10[0] == "M79.7":
            exam["tender_points"] = rng.randint(11, 18)
        if missing != "physical_exam":
            # Without a neurological exam, the physical exam carries the classification.
            extra = {"classification": classification} if missing == "neurological_exam" else {}
            self._emit(at(0, 0), EHR, ASSESSMENT, kind="physical_exam", findings=exam, **extra)
        if missing != "neurological_exam":
            neuro = {"allodynia": rng.random() < 0.5, "sensory_loss": rng.random() < 0.5}
            if classification == "neuropathic":
                neuro["neupsig_grade"] = rng.choice(
                    ("possible", "probable", "probable", "definite")
                )
            extra = {} if missing == "classification" else {"classification": classification}
            self._emit(
                at(0, 45), EHR, ASSESSMENT, kind="neurological_exam", findings=neuro, **extra
            )
        if rng.random() < 0.6:
            self._emit(
                at(0, 90),
                EHR,
                ASSESSMENT,
                kind="psychological_screening",
                findings={"phq9": rng.randint(2, 22), "gad7": rng.randint(1, 18)},
            )
        day = rng.randint(0, 60) if rng.random() < 0.55 else last + 1
        while day <= last:
            self._emit(
                self._visit(day, 10),
                EHR,
                ASSESSMENT,
                kind="functional_assessment",
                findings={"odi_percent": rng.randint(18, 72)},
            )
            day += rng.randint(150, 240)
        if reclassify and last > 150 and rng.random() < 0.1:
            other = rng.choice([name for name in _CONDITIONS if name != classification])
            self._emit(
                at(120, last),
                EHR,
                ASSESSMENT,
                kind="neurological_exam",
                classification=other,
                findings={"reassessed": True},
            )
        if missing != "diagnostic":
            for test in condition.tests:
                if test != condition.tests[0] and rng.random() < 0.4:
                    continue
                self._diagnostic(test, at(7, 150))

    def _diagnostic(self, test: str, at: int) -> None:
        rng = self.rng
        if test.endswith("_block"):
            relief = rng.choice((rng.randint(0, 45), rng.randint(40, 100)))
            result = "positive" if relief >= 80 else "negative" if relief < 50 else "inconclusive"
            self._emit(at, EHR, DIAGNOSTIC, test=test, result=result, relief_percent=relief)
            return
        result = _pick(rng, (("positive", 0.55), ("negative", 0.3), ("inconclusive", 0.15)))
        self._emit(at, LAB, DIAGNOSTIC, test=test, result=result)

    def _trial_events(self, trial: _Trial) -> None:
        rng = self.rng
        drug, start = trial.drug, trial.start
        last = min(start + trial.span, self.length) - start  # days of it within the history
        # Recorded at the visit where it is prescribed, after that visit's score.
        started = self._visit(start, 40)
        name = drug.name.replace("_", " ") if rng.random() < 0.5 else drug.name
        if rng.random() < 0.15:
            name = name.capitalize()
        extra = {}
        if drug.rxcui and rng.random() < 0.4:
            extra["rxnorm"] = drug.rxcui
            if drug.name == "lidocaine" and rng.random() < 0.4:
                name = "lidocaine 5% medicated plaster"
        unit, per_unit = drug.unit, 1
        if drug.name == "lidocaine" and rng.random() < 0.05:
            unit, per_unit = "mg", 700  # the plaster's content instead of the plaster count
        self._emit(
            started,
            PHARMACY,
            TRIAL_STARTED,
            trial_id=trial.trial_id,
            drug=name,
            **extra,
            daily_dose=_number(trial.doses[0][1] * per_unit),
            dose_unit=unit,
        )
        for day, dose in trial.doses[1:]:
            if day < last or (trial.stop is None and day <= last):
                self._emit(
                    self.day0 + (start + day) * DAY + rng.randrange(8 * 3600, 17 * 3600),
                    PHARMACY,
                    DOSE_CHANGED,
                    trial_id=trial.trial_id,
                    daily_dose=_number(dose * per_unit),
                    dose_unit=unit,
                )
        for day, effect, severity, intolerable in trial.side_effects:
            if day > last:
                continue
            data: dict[str, Any] = {"trial_id": trial.trial_id}
            if rng.random() < 0.15:  # attributed to the drug only
                data = {"drug": drug.name}
            data.update(effect=effect, severity=severity)
            if intolerable or rng.random() < 0.3:
                data["intolerable"] = intolerable
            self._emit(self._visit(start + day, 20), EHR, SIDE_EFFECT, **data)
        if trial.stop is not None and trial.stop <= last:
            self._emit(
                self._visit(start + trial.stop, 30),
                PHARMACY,
                TRIAL_STOPPED,
                trial_id=trial.trial_id,
                reason=trial.reason,
            )


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# --- Delivery: envelopes, arrival order and imperfections --------------------------------------


@functools.cache
def _summer_time(year: int) -> tuple[int, int]:
    """Central European summer time: 01:00 UTC on the last Sunday of March to that of October."""

    def last_sunday(month: int) -> int:
        day = date(year, month, 31)
        day -= timedelta(days=(day.weekday() + 1) % 7)
        return (day - date(1970, 1, 1)).days * DAY + 3600

    return last_sunday(3), last_sunday(10)


def _time_text(at: int, source: str) -> str:
    moment = _EPOCH + timedelta(seconds=at)
    if source == PHARMACY:  # the pharmacy system stamps UTC, the others local time
        return f"{moment.isoformat()}Z"
    begins, ends = _summer_time(moment.year)
    hours = 2 if begins <= at < ends else 1
    return f"{(moment + timedelta(hours=hours)).isoformat()}+0{hours}:00"


class _Sources:
    """Event ids per source, counted over the whole cohort so they are unique per source."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(SOURCES, 0)

    def next_id(self, source: str) -> str:
        self.counts[source] += 1
        return f"{_ID_PREFIX[source]}-{self.counts[source]:06d}"


def _envelope(
    sources: _Sources, at: int, source: str, kind: str, data: dict[str, Any]
) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": sources.next_id(source),
        "source": source,
        "type": kind,
        "time": _time_text(at, source),
    }
    if source == PHARMACY:
        event["datacontenttype"] = "application/json"
    event["data"] = data
    return event


Delivery = tuple[int, int, int, int, Line]  # arrival, sequence, kind, clinical time, line


def _cohort(patients: int, seed: int, as_of: datetime) -> Iterator[list[Delivery]]:
    """Each patient's deliveries, patient after patient (not yet in arrival order)."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be an aware datetime (with an offset)")
    if patients < 0:
        raise ValueError("patients must be 0 or more")
    rng = random.Random(seed)
    as_of_epoch = int(as_of.timestamp())
    sources = _Sources()
    sequence = itertools.count()
    for number in range(1, patients + 1):
        patient_rng = random.Random(rng.getrandbits(64))
        history = _History(patient_rng, f"sim-{number:06d}", as_of_epoch)
        yield _deliveries(patient_rng, history, sources, sequence, as_of_epoch)


def _deliveries(
    rng: random.Random,
    history: _History,
    sources: _Sources,
    sequence: Iterator[int],
    as_of_epoch: int,
) -> list[Delivery]:
    """A patient's events as delivered: most on time, some late, twice, in error or broken."""
    out: list[Delivery] = []
    events = [
        (at, _envelope(sources, at, source, kind, data))
        for at, source, kind, data in history.events
    ]
    for at, event in events:
        arrival = at + (rng.randint(DAY, 42 * DAY) if rng.random() < LATE_RATE else 0)
        out.append((arrival, next(sequence), _EVENT, at, event))
        if rng.random() < DUPLICATE_RATE:
            out.append(
                (arrival + rng.randint(600, 21 * DAY), next(sequence), _DUPLICATE, at, event)
            )
        if rng.random() < INVALID_RATE:
            broken = _broken(rng, event, sources.next_id(event["source"]))
            out.append((arrival + rng.randint(0, 3600), next(sequence), _INVALID, at, broken))
        if event["type"] in _ERROR_PRONE and rng.random() < _ERROR_RATE:
            out.extend(_entered_in_error(rng, at, event, sources, sequence, as_of_epoch))
    return out


def _entered_in_error(
    rng: random.Random,
    at: int,
    event: dict[str, Any],
    sources: _Sources,
    sequence: Iterator[int],
    as_of_epoch: int,
) -> list[Delivery]:
    """A record entered in error next to `event` (a wrong value, or the same fact twice) and
    its retraction; sometimes the retraction arrives first."""
    data = dict(event["data"])
    if event["type"] == SCORE and rng.random() < 0.5:
        instrument, score = data.get("instrument", "nrs"), data["score"]
        if instrument == "vas":
            data["score"] = (score + rng.randint(30, 70)) % 101
        elif instrument == "peg":
            data["score"] = round((score + rng.uniform(3, 7)) % 10, 2)
        else:
            data["score"] = (score + rng.randint(3, 7)) % 11
    elif event["type"] == DOSE_CHANGED:
        data["daily_dose"] *= 10  # a slipped decimal point
    source = event["source"]
    error_at = at + rng.randint(0, 1800)
    error = _envelope(sources, error_at, source, event["type"], data)
    retract_at = min(error_at + rng.randint(600, 3 * DAY), as_of_epoch - 1)
    retraction = _envelope(
        sources,
        retract_at,
        source,
        RETRACTED,
        {"patient_id": data["patient_id"], "retracted_id": error["id"]},
    )
    arrival = error_at
    if rng.random() < _RETRACTION_FIRST:
        arrival = retract_at + rng.randint(3600, 10 * DAY)
    return [
        (arrival, next(sequence), _EVENT, error_at, error),
        (retract_at, next(sequence), _RETRACTION, retract_at, retraction),
    ]


_REQUIRED_DATA = {
    CONDITION: "onset_date",
    SCORE: "score",
    TRIAL_STARTED: "daily_dose",
    DOSE_CHANGED: "dose_unit",
    TRIAL_STOPPED: "reason",
    SIDE_EFFECT: "severity",
    ASSESSMENT: "kind",
    DIAGNOSTIC: "result",
    RETRACTED: "retracted_id",
}
_OUT_OF_RANGE = {"nrs": 11, "vas": 135, "peg": 10.5}


def _broken(rng: random.Random, event: dict[str, Any], new_id: str) -> Line:
    """A copy of `event` under a new id that breaks the contract in one of the usual ways."""
    broken = {**event, "id": new_id, "data": dict(event["data"])}
    data = broken["data"]
    fault = rng.choice(("out_of_range", "no_offset", "unknown_type", "missing", "truncated"))
    if fault == "out_of_range" and event["type"] == SCORE:
        data["score"] = _OUT_OF_RANGE[data.get("instrument", "nrs")]
    elif fault == "out_of_range" and "daily_dose" in data:
        data["daily_dose"] = -data["daily_dose"]
    elif fault == "out_of_range" and "relief_percent" in data:
        data["relief_percent"] = 100 + data["relief_percent"] + 1
    elif fault == "no_offset":
        broken["time"] = event["time"][:19]
    elif fault == "unknown_type":
        broken["type"] = rng.choice(("pain.medication.administered.v1", "pain.score.recorded.v2"))
    elif fault == "truncated":
        text = json.dumps(broken, separators=(",", ":"))
        return text[: rng.randint(20, len(text) - 2)]
    elif rng.random() < 0.2:
        del data["patient_id"]
    else:
        del data[_REQUIRED_DATA[event["type"]]]
    return broken
