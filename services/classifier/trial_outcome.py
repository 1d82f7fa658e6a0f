"""One trial's outcome as of T: baseline, on-treatment score, reduction (POLICY.md section 3).

Decisions taken here (POLICY.md leaves them open):
- A trial whose stop predates its start (a trial of no length, see `trials`) is `inadequate`
  whatever else: POLICY.md names its outcome, so a stop for side effects or an intolerable side
  effect attributed to it does not make it `intolerant` (nor a failure); the reason says so. It
  has no adequate period, hence no on-treatment score and no part in a combination trial; its
  baseline is still shown. Its reason keeps the code `trial.inadequate` (one reason per trial,
  coded by outcome) and its text says that the stop predates the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from services.classifier.intolerance import intolerance
from services.classifier.policy import Policy
from services.classifier.scores import Scores, exact, figure_text
from services.classifier.trial_adequacy import Adequacy, AdequatePeriod, adequacy
from services.classifier.trials import TrialHistory
from shared.contract import Reason, TrialOutcome

COUNTED_OUTCOMES = frozenset({TrialOutcome.RESPONDED, TrialOutcome.FAILED, TrialOutcome.INTOLERANT})
FAILED_OUTCOMES = frozenset({TrialOutcome.FAILED, TrialOutcome.INTOLERANT})
_NOT_IN_FORMULARY = "not in the formulary: shown, never counts"


@dataclass(frozen=True)
class JudgedTrial:
    """A trial with its outcome, the figures behind it and the reason in one line."""

    history: TrialHistory
    adequacy: Adequacy | None
    baseline: Fraction | None
    on_treatment: Fraction | None
    reduction: Fraction | None
    outcome: TrialOutcome
    reason: Reason

    @property
    def period(self) -> AdequatePeriod | None:
        """The adequate period; None without one, always so for a drug not in the formulary and
        for a trial whose stop predates its start."""
        return self.adequacy.period if self.adequacy is not None else None


def judge_trial(trial: TrialHistory, scores: Scores, policy: Policy) -> JudgedTrial:
    """The first outcome that applies: `intolerant`; not adequate (`in_progress` while active,
    else `inadequate`); `unevaluable` (no baseline, baseline 0, no on-treatment score);
    `responded` (reduction >= the response threshold); `failed`.

    Baseline: median in [start - baseline window, start]; on-treatment: median in [adequate
    start + offset, adequate end]. A drug not in the formulary has no adequate period, nor has a
    trial whose stop predates its start: that one is `inadequate` before anything else.
    """
    baseline = scores.median_between(
        trial.started_at - timedelta(days=policy.baseline_window_days), trial.started_at
    )
    checked = None
    if trial.drug is not None and not trial.stop_predates_start:
        checked = adequacy(trial, trial.drug)
    period = checked.period if checked is not None else None
    on_treatment = None
    if period is not None:
        on_treatment = scores.median_between(
            period.start + timedelta(days=policy.on_treatment_offset_days), period.end
        )
    reduction = None
    if baseline and on_treatment is not None:
        reduction = (baseline - on_treatment) / baseline

    def judged(outcome: TrialOutcome, why: str) -> JudgedTrial:
        reason = Reason(
            code=f"trial.{outcome.value}",
            text=f"trial {trial.trial_id} ({trial.name}): {outcome.value.replace('_', ' ')}, {why}",
        )
        return JudgedTrial(trial, checked, baseline, on_treatment, reduction, outcome, reason)

    not_tolerated = intolerance(trial)
    if trial.stop_predates_start and trial.stopped_at is not None:
        why = _stop_before_start_why(trial, trial.stopped_at, not_tolerated)
        return judged(TrialOutcome.INADEQUATE, why)
    if not_tolerated is not None:
        if trial.drug is None:
            return judged(TrialOutcome.INTOLERANT, f"{not_tolerated}, but {_NOT_IN_FORMULARY}")
        return judged(TrialOutcome.INTOLERANT, f"{not_tolerated}: a failure at any dose")
    if checked is None or period is None:
        outcome = TrialOutcome.IN_PROGRESS if trial.active else TrialOutcome.INADEQUATE
        return judged(outcome, _not_adequate_why(trial, checked))
    if baseline is None:
        return judged(
            TrialOutcome.UNEVALUABLE,
            f"no baseline: no score in the {policy.baseline_window_days} days up to the start",
        )
    if baseline == 0:
        return judged(TrialOutcome.UNEVALUABLE, "baseline 0: no reduction can be measured")
    if on_treatment is None or reduction is None:
        return judged(
            TrialOutcome.UNEVALUABLE,
            f"no on-treatment score from day {policy.on_treatment_offset_days} of the adequate "
            "period on",
        )
    threshold = exact(policy.response_threshold)
    change = (
        f"pain {figure_text(baseline)} -> {figure_text(on_treatment)}, "
        f"reduction {figure_text(reduction * 100)} %"
    )
    if reduction >= threshold:
        return judged(
            TrialOutcome.RESPONDED, f"{change} (responds from {figure_text(threshold * 100)} %)"
        )
    return judged(TrialOutcome.FAILED, f"{change}, below {figure_text(threshold * 100)} %")


def _stop_before_start_why(
    trial: TrialHistory, stopped_at: datetime, not_tolerated: str | None
) -> str:
    reason = f", {trial.stop_reason.value}" if trial.stop_reason is not None else ""
    why = (
        f"the stop ({_instant_text(stopped_at)}{reason}) predates the start "
        f"({_instant_text(trial.started_at)}): a trial of no length, never adequate"
    )
    if not_tolerated is not None:
        why += f"; {not_tolerated} is not counted"
    if trial.drug is None:
        why += f"; {_NOT_IN_FORMULARY}"
    return why


def _instant_text(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_adequate_why(trial: TrialHistory, checked: Adequacy | None) -> str:
    drug = trial.drug
    if drug is None or checked is None:
        return _NOT_IN_FORMULARY
    if checked.longest_at_dose is not None:
        return (
            f"{drug.drug} at or above {drug.dose_text(drug.minimum_dose)} for "
            f"{_duration_text(checked.longest_at_dose)}, short of the {drug.minimum_days} days "
            "required"
        )
    if checked.highest_dose is None:
        units = ", ".join(sorted(unit.value for unit in checked.units))
        return f"dose given in {units}, {drug.drug} is dosed in {drug.unit.value}"
    return (
        f"{drug.drug} {drug.dose_text(checked.highest_dose)} is below the adequate "
        f"{drug.dose_text(drug.minimum_dose)}"
    )


def _duration_text(duration: timedelta) -> str:
    hours = duration.seconds // 3600
    return f"{duration.days} days" + (f" {hours} h" if hours else "")
