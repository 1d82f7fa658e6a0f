"""Medication trials rebuilt from a patient's events: start, dose steps over time, stop.

Contract-level code over the trial events alone (no policy, no formulary): the classifier judges
trials from these courses and the coordinator's timeline plots them, so both see the same trials.

Decisions taken here (the contract and POLICY.md leave them open):
- A trial is identified by its `trial_id` (unique per patient); a second start of the same
  `trial_id` is ignored. Dose changes and stops of a trial never started are ignored.
- Of several stops of one trial, the earliest by time counts (of stops at the same instant, the
  first in event order: `source`, then `id`); only stops at or before T are read.
- A stop dated before the trial's start ends the trial at its start (POLICY.md section 3): `end`
  is the start, the trial is stopped (not active) and has no length. `stopped_at` and
  `stop_reason` stay those of the stop as sent, and `stop_predates_start` tells the two apart.
- Dose changes outside start..end are ignored; of dose changes at the same instant, the last in
  event order holds (for a trial of no length, only a change at the start instant itself).
- A drug's name is matched folded (`fold_drug_name`): trimmed of whitespace only (Python's
  `str.strip()`), lower-cased, then every run of whitespace, hyphens and underscores, mixed or
  not, becomes one `_`. Underscores or hyphens at either end are kept as a `_`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.contract.events import (
    DoseUnit,
    Event,
    StopReason,
    TrialDoseChanged,
    TrialStarted,
    TrialStopped,
)
from shared.contract.evidence import event_order

_FOLDED = re.compile(r"[\s_-]+")


def fold_drug_name(name: str) -> str:
    """The name drugs are matched by: trimmed of whitespace, lower case, every run of spaces,
    hyphens and underscores folded to one `_` (`Botulinum  Toxin-A` is `botulinum_toxin_a`)."""
    return _FOLDED.sub("_", name.strip().lower())


@dataclass(frozen=True)
class DoseStep:
    """The daily dose from `at` until the next step or the end of the trial."""

    at: datetime
    daily_dose: float
    unit: DoseUnit


@dataclass(frozen=True)
class TrialCourse:
    """One trial as of T. `end` is its stop time, or T while it is still active, or its start
    when the stop predates the start (`stopped_at` is then the stop's time, before the start)."""

    trial_id: str
    start: TrialStarted
    doses: tuple[DoseStep, ...]
    stopped_at: datetime | None
    stop_reason: StopReason | None
    end: datetime

    @property
    def started_at(self) -> datetime:
        return self.start.time

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    @property
    def stop_predates_start(self) -> bool:
        """True when the trial's stop is dated before its start: a trial of no length."""
        return self.stopped_at is not None and self.stopped_at < self.started_at


def trial_courses(events: Sequence[Event], as_of: datetime) -> list[TrialCourse]:
    """Every trial started by T, in order of start (then `trial_id`). `events` in event order,
    as `evidence.events_as_of` gives them."""
    starts: dict[str, TrialStarted] = {}
    changes: dict[str, list[TrialDoseChanged]] = defaultdict(list)
    stops: dict[str, list[TrialStopped]] = defaultdict(list)
    for event in events:
        match event:
            case TrialStarted():
                starts.setdefault(event.data.trial_id, event)
            case TrialDoseChanged():
                changes[event.data.trial_id].append(event)
            case TrialStopped():
                stops[event.data.trial_id].append(event)

    courses = []
    for trial_id, start in starts.items():
        started_at = start.time
        stop = min((s for s in stops[trial_id] if s.time <= as_of), key=event_order, default=None)
        end = as_of if stop is None else max(stop.time, started_at)
        steps = [DoseStep(started_at, start.data.daily_dose, start.data.dose_unit)]
        for change in changes[trial_id]:
            if started_at <= change.time <= end:
                step = DoseStep(change.time, change.data.daily_dose, change.data.dose_unit)
                if steps[-1].at == step.at:
                    steps[-1] = step
                else:
                    steps.append(step)
        courses.append(
            TrialCourse(
                trial_id=trial_id,
                start=start,
                doses=tuple(steps),
                stopped_at=stop.time if stop is not None else None,
                stop_reason=stop.data.reason if stop is not None else None,
                end=end,
            )
        )
    return sorted(courses, key=lambda course: (course.started_at, course.trial_id))
