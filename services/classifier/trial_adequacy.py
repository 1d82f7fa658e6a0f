"""Whether a trial reached an adequate dose for long enough: its adequate period (POLICY.md 3)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.classifier.policy import FormularyDrug
from services.classifier.trials import TrialHistory
from shared.contract import DoseUnit


@dataclass(frozen=True)
class AdequatePeriod:
    """The first continuous stretch at or above the minimum dose that lasted the minimum days."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Adequacy:
    """A trial's adequate period, if any, with what it reached when it has none."""

    period: AdequatePeriod | None
    longest_at_dose: timedelta | None
    highest_dose: float | None
    units: frozenset[DoseUnit]


def adequacy(trial: TrialHistory, drug: FormularyDrug) -> Adequacy:
    """The adequate period: the first stretch within start..end during which the dose is at or
    above the minimum (in the formulary's unit), taken whole from when the dose reaches it until
    it falls below it or the trial ends, that lasts at least `minimum_days` x 24 hours.

    Without one, `longest_at_dose` is the longest stretch at dose (None if never at dose),
    `highest_dose` the highest dose in the formulary's unit and `units` the units given.
    """
    minimum = timedelta(days=drug.minimum_days)
    stretches: list[tuple[datetime, datetime]] = []
    stretch_start: datetime | None = None
    for step in trial.doses:
        if drug.is_adequate_dose(step.daily_dose, step.unit):
            stretch_start = stretch_start or step.at
        elif stretch_start is not None:
            stretches.append((stretch_start, step.at))
            stretch_start = None
    if stretch_start is not None:
        stretches.append((stretch_start, trial.end))

    period = next(
        (AdequatePeriod(start, end) for start, end in stretches if end - start >= minimum), None
    )
    in_unit = [step.daily_dose for step in trial.doses if step.unit is drug.unit]
    return Adequacy(
        period=period,
        longest_at_dose=max((end - start for start, end in stretches), default=None),
        highest_dose=max(in_unit, default=None),
        units=frozenset(step.unit for step in trial.doses),
    )
