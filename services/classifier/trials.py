"""Medication trials rebuilt from a patient's events: drug, doses over time, stop, side effects.

Decisions taken here (POLICY.md leaves them open):
- A trial is identified by its `trial_id` (unique per patient); a second start of the same
  `trial_id` is ignored. Dose changes, stops and side effects of a trial never started are ignored.
- The first stop at or after the start ends the trial; dose changes outside start..end are ignored;
  of dose changes at the same instant, the last in event order holds.
- A side effect with a `trial_id` belongs to that trial whenever it was reported; one with only a
  `drug` belongs to every trial of that drug active at its time, ends included. The drug is
  matched by name against the formulary first, so `Gabapentin` meets a trial given by RXCUI.
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
    """One trial as of T. `end` is its stop time, or T while it is still active."""

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
        stop = next((s for s in stops[trial_id] if s.time >= started_at), None)
        end = stop.time if stop is not None else as_of
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
