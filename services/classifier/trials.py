"""Medication trials rebuilt from a patient's events: drug, doses over time, stop, side effects.

Decisions taken here (POLICY.md leaves them open):
- A trial is identified by its `trial_id` (unique per patient); a second start of the same
  `trial_id` is ignored. Dose changes, stops and side effects of a trial never started are ignored.
- Of several stops of one trial, the earliest by time counts (of stops at the same instant, the
  first in event order: `source`, then `id`); only stops at or before T are read.
- A stop dated before the trial's start ends the trial at its start (POLICY.md section 3): `end`
  is the start, the trial is stopped (not active) and has no length. `stopped_at` and
  `stop_reason` stay those of the stop as sent, so the determination shows the data as received
  and `stop_predates_start` tells the two apart; `trial_outcome` judges such a trial `inadequate`.
- Dose changes outside start..end are ignored; of dose changes at the same instant, the last in
  event order holds (for a trial of no length, only a change at the start instant itself).
- A side effect with a `trial_id` belongs to that trial whenever it was reported; one with only a
  `drug` belongs to every trial of that drug active at its time, ends included. Both sides are
  known by the same identity (`drug_identity`): the formulary drug if there is one (by RXCUI for
  the trial, else by name), else the folded name (`policy.fold_drug_name`). So `Gabapentin`
  meets a trial given by RXCUI 25480, and `Foo-Bar` meets a trial of `foo bar`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.classifier.evidence import event_order
from services.classifier.policy import FormularyDrug, Policy, fold_drug_name
from shared.contract import (
    DoseUnit,
    Event,
    SideEffectReported,
    StopReason,
    TrialDoseChanged,
    TrialStarted,
    TrialStopped,
)


@dataclass(frozen=True)
class DoseStep:
    """The daily dose from `at` until the next step or the end of the trial."""

    at: datetime
    daily_dose: float
    unit: DoseUnit


@dataclass(frozen=True)
class TrialHistory:
    """One trial as of T. `end` is its stop time, or T while it is still active, or its start
    when the stop predates the start (`stopped_at` is then the stop's time, before the start)."""

    trial_id: str
    drug_name: str
    drug: FormularyDrug | None
    started_at: datetime
    doses: tuple[DoseStep, ...]
    stopped_at: datetime | None
    stop_reason: StopReason | None
    end: datetime
    side_effects: tuple[SideEffectReported, ...]

    @property
    def active(self) -> bool:
        return self.stopped_at is None

    @property
    def stop_predates_start(self) -> bool:
        """True when the trial's stop is dated before its start: a trial of no length."""
        return self.stopped_at is not None and self.stopped_at < self.started_at

    @property
    def name(self) -> str:
        return drug_identity(self.drug, self.drug_name)


def drug_identity(drug: FormularyDrug | None, name: str) -> str:
    """What a drug is known as: its formulary name, else its folded name."""
    return drug.drug if drug is not None else fold_drug_name(name)


def trial_histories(events: Sequence[Event], as_of: datetime, policy: Policy) -> list[TrialHistory]:
    """Every trial started by T, in order of start (then `trial_id`). `events` in event order."""
    starts: dict[str, TrialStarted] = {}
    changes: dict[str, list[TrialDoseChanged]] = defaultdict(list)
    stops: dict[str, list[TrialStopped]] = defaultdict(list)
    by_trial: dict[str, list[SideEffectReported]] = defaultdict(list)
    by_drug: dict[str, list[SideEffectReported]] = defaultdict(list)
    for event in events:
        match event:
            case TrialStarted():
                starts.setdefault(event.data.trial_id, event)
            case TrialDoseChanged():
                changes[event.data.trial_id].append(event)
            case TrialStopped():
                stops[event.data.trial_id].append(event)
            case SideEffectReported() if event.data.trial_id is not None:
                by_trial[event.data.trial_id].append(event)
            case SideEffectReported() if event.data.drug is not None:
                name = event.data.drug
                by_drug[drug_identity(policy.formulary_drug(name), name)].append(event)

    histories = []
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
        drug = policy.formulary_drug(start.data.drug, start.data.rxnorm)
        side_effects = by_trial[trial_id] + [
            s
            for s in by_drug.get(drug_identity(drug, start.data.drug), ())
            if started_at <= s.time <= end
        ]
        histories.append(
            TrialHistory(
                trial_id=trial_id,
                drug_name=start.data.drug,
                drug=drug,
                started_at=started_at,
                doses=tuple(steps),
                stopped_at=stop.time if stop is not None else None,
                stop_reason=stop.data.reason if stop is not None else None,
                end=end,
                side_effects=tuple(sorted(side_effects, key=event_order)),
            )
        )
    return sorted(histories, key=lambda trial: (trial.started_at, trial.trial_id))
