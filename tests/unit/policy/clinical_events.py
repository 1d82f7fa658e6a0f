"""Builds one patient's clinical events as raw CloudEvents, parsed through the contract."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.classifier.policy import load_policy
from services.classifier.rules import evaluate
from shared.contract import Determination, Event, Trial, parse_event

POLICY = load_policy()
SOURCE = "urn:hospital:test:ehr"
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)


def day(days: float, hours: float = 0) -> datetime:
    """An instant `days` (and `hours`) after START; durations are elapsed time."""
    return START + timedelta(days=days, hours=hours)


AS_OF = day(150)


class History:
    """One patient's events in the order they were built (the arrival order of a test)."""

    def __init__(
        self, patient_id: str = "p-1", source: str = SOURCE, id_prefix: str | None = None
    ) -> None:
        self.patient_id = patient_id
        self.source = source
        self.id_prefix = id_prefix or patient_id
        self.events: list[Event] = []
        self._next = 0

    def add(self, event_type: str, at: datetime, event_id: str | None = None, **data: Any) -> Event:
        self._next += 1
        raw = {
            "specversion": "1.0",
            "id": event_id or f"{self.id_prefix}-e{self._next}",
            "source": self.source,
            "type": f"pain.{event_type}.v1",
            "time": at.isoformat(),
            "data": {"patient_id": self.patient_id}
            | {key: value for key, value in data.items() if value is not None},
        }
        event = parse_event(raw)
        self.events.append(event)
        return event

    def condition(self, at: datetime, onset: date) -> Event:
        return self.add("condition.recorded", at, onset_date=onset.isoformat())

    def score(self, at: datetime, score: float, instrument: str | None = None) -> Event:
        """A score; one with decimals is sent as a PEG-3 mean, NRS being whole numbers only."""
        if instrument is None and score != int(score):
            instrument = "peg"
        return self.add("score.recorded", at, score=score, instrument=instrument)

    def scores(self, value: float, *days: float) -> None:
        for when in days:
            self.score(day(when), value)

    def start(
        self,
        at: datetime,
        trial_id: str,
        drug: str,
        dose: float,
        unit: str = "mg",
        rxnorm: str | None = None,
    ) -> Event:
        return self.add(
            "trial.started",
            at,
            trial_id=trial_id,
            drug=drug,
            daily_dose=dose,
            dose_unit=unit,
            rxnorm=rxnorm,
        )

    def dose(self, at: datetime, trial_id: str, dose: float, unit: str = "mg") -> Event:
        return self.add(
            "trial.dose_changed", at, trial_id=trial_id, daily_dose=dose, dose_unit=unit
        )

    def stop(self, at: datetime, trial_id: str, reason: str = "ineffective") -> Event:
        return self.add("trial.stopped", at, trial_id=trial_id, reason=reason)

    def side_effect(
        self,
        at: datetime,
        *,
        trial_id: str | None = None,
        drug: str | None = None,
        severity: str = "mild",
        intolerable: bool | None = None,
        effect: str = "dizziness",
    ) -> Event:
        return self.add(
            "side_effect.reported",
            at,
            trial_id=trial_id,
            drug=drug,
            effect=effect,
            severity=severity,
            intolerable=intolerable,
        )

    def assess(self, at: datetime, kind: str, classification: str | None = None) -> Event:
        return self.add("assessment.recorded", at, kind=kind, classification=classification)

    def diagnostic(self, at: datetime, test: str = "mri", result: str = "positive") -> Event:
        return self.add("diagnostic.resulted", at, test=test, result=result)

    def retract(self, at: datetime, event: Event, event_id: str | None = None) -> Event:
        return self.add("event.retracted", at, event_id=event_id, retracted_id=event.id)

    def complete_assessment(self, at: datetime, classification: str = "mixed") -> None:
        self.assess(at, "medication_history")
        self.assess(at, "physical_exam")
        self.assess(at, "neurological_exam", classification=classification)
        self.diagnostic(at)


def refractory_history(
    classification: str = "mixed", current_pain: float = 7, complete: bool = True
) -> History:
    """A patient refractory under the default criteria as of `AS_OF` (day 150): chronic pain for
    350 days, gabapentin, duloxetine and pregabalin failed (2 classes), gabapentin + duloxetine a
    failed combination, pain 7 throughout, `current_pain` from day 130 on, assessment complete."""
    history = History()
    history.condition(day(0), (START - timedelta(days=200)).date())
    history.scores(7, *range(-20, 121, 10))
    history.scores(current_pain, 130, 140, 150)
    history.start(day(0), "t-gaba", "gabapentin", 1200)
    history.stop(day(60), "t-gaba")
    history.start(day(10), "t-dulo", "duloxetine", 60)
    history.stop(day(70), "t-dulo")
    history.start(day(80), "t-pre", "pregabalin", 300)
    history.stop(day(120), "t-pre")
    if complete:
        history.complete_assessment(day(100), classification)
    return history


def chronic_history() -> History:
    """A patient in chronic pain for 300 days as of `AS_OF`, with nothing else yet."""
    history = History()
    history.condition(day(0), (START - timedelta(days=150)).date())
    return history


def determine(history: History, as_of: datetime = AS_OF) -> Determination:
    """The determination of the history's patient as of `as_of` under the default policy."""
    return evaluate(history.events, POLICY, as_of)


def trial_of(determination: Determination, trial_id: str) -> Trial:
    """The determination's entry for one trial."""
    return next(trial for trial in determination.trials if trial.trial_id == trial_id)


def codes(determination: Determination) -> list[str]:
    """The reason codes of a determination."""
    return [reason.code for reason in determination.reasons]


def text_of(determination: Determination, code_prefix: str) -> str:
    """The texts of the reasons whose code starts with `code_prefix`, one per line."""
    return "\n".join(r.text for r in determination.reasons if r.code.startswith(code_prefix))
