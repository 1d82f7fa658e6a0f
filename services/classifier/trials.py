"""Medication trials as the policy judges them: each trial's course with its drug and side effects.

The course of a trial (start, dose steps, stop, end) is contract-level code shared with the
coordinator (`shared.contract.trials`, whose docstring holds the decisions it takes); here it
gains what takes the policy.

Decisions taken here (POLICY.md leaves them open):
- Side effects of a trial never started are ignored.
- A side effect with a `trial_id` belongs to that trial whenever it was reported; one with only a
  `drug` belongs to every trial of that drug active at its time, ends included. Both sides are
  known by the same identity (`drug_identity`): the formulary drug if there is one (by RXCUI for
  the trial, else by name), else the folded name (`fold_drug_name`). So `Gabapentin`
  meets a trial given by RXCUI 25480, and `Foo-Bar` meets a trial of `foo bar`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.classifier.policy import FormularyDrug, Policy
from shared.contract import Event, SideEffectReported
from shared.contract.evidence import event_order
from shared.contract.trials import TrialCourse, fold_drug_name, trial_courses


@dataclass(frozen=True)
class TrialHistory(TrialCourse):
    """One trial as of T (see `TrialCourse`), its formulary drug (None when not in the
    formulary) and the side effects that belong to it, in event order."""

    drug: FormularyDrug | None
    side_effects: tuple[SideEffectReported, ...]

    @property
    def drug_name(self) -> str:
        """The drug's name as sent."""
        return self.start.data.drug

    @property
    def name(self) -> str:
        return drug_identity(self.drug, self.drug_name)


def drug_identity(drug: FormularyDrug | None, name: str) -> str:
    """What a drug is known as: its formulary name, else its folded name."""
    return drug.drug if drug is not None else fold_drug_name(name)


def trial_histories(events: Sequence[Event], as_of: datetime, policy: Policy) -> list[TrialHistory]:
    """Every trial started by T, in order of start (then `trial_id`). `events` in event order."""
    by_trial: dict[str, list[SideEffectReported]] = defaultdict(list)
    by_drug: dict[str, list[SideEffectReported]] = defaultdict(list)
    for event in events:
        match event:
            case SideEffectReported() if event.data.trial_id is not None:
                by_trial[event.data.trial_id].append(event)
            case SideEffectReported() if event.data.drug is not None:
                name = event.data.drug
                by_drug[drug_identity(policy.formulary_drug(name), name)].append(event)

    histories = []
    for course in trial_courses(events, as_of):
        start = course.start.data
        drug = policy.formulary_drug(start.drug, start.rxnorm)
        side_effects = by_trial[course.trial_id] + [
            s
            for s in by_drug.get(drug_identity(drug, start.drug), ())
            if course.started_at <= s.time <= course.end
        ]
        histories.append(
            TrialHistory(
                trial_id=course.trial_id,
                start=course.start,
                doses=course.doses,
                stopped_at=course.stopped_at,
                stop_reason=course.stop_reason,
                end=course.end,
                drug=drug,
                side_effects=tuple(sorted(side_effects, key=event_order)),
            )
        )
    return histories
