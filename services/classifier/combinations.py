"""Combination trials and whether they failed (POLICY.md section 4)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from services.classifier.policy import FormularyDrug, Policy
from services.classifier.scores import Scores, exact, figure, figure_text
from services.classifier.trial_adequacy import AdequatePeriod
from services.classifier.trial_outcome import JudgedTrial
from shared.contract import CombinationTrial, Reason


@dataclass(frozen=True)
class Combinations:
    """Every combination trial, and a reason for each."""

    trials: list[CombinationTrial]
    reasons: list[Reason]

    @property
    def failed_count(self) -> int:
        """How many combination trials failed."""
        return sum(combination.failed for combination in self.trials)


def combination_trials(
    trials: Sequence[JudgedTrial], scores: Scores, policy: Policy
) -> Combinations:
    """Pairs of formulary trials of different classes whose adequate periods overlap for at least
    the combination overlap. Baseline: the earlier-started trial's; on-treatment: median in
    [overlap start + offset, overlap end]. Failed when both exist, the baseline is above 0 and the
    reduction is below the response threshold. `trials` must be in order of start."""
    minimum = timedelta(days=policy.combination_overlap_days)
    offset = timedelta(days=policy.on_treatment_offset_days)
    threshold = exact(policy.response_threshold)
    limit = figure_text(threshold * 100)
    adequate = list(_adequate(trials))
    found: list[CombinationTrial] = []
    reasons: list[Reason] = []
    for index, (first, first_drug, first_period) in enumerate(adequate):
        for second, second_drug, second_period in adequate[index + 1 :]:
            start = max(first_period.start, second_period.start)
            end = min(first_period.end, second_period.end)
            if first_drug.drug_class == second_drug.drug_class or end - start < minimum:
                continue
            baseline = first.baseline
            on_treatment = scores.median_between(start + offset, end)
            reduction = None
            if baseline and on_treatment is not None:
                reduction = (baseline - on_treatment) / baseline
            failed = reduction is not None and reduction < threshold
            found.append(
                CombinationTrial(
                    trial_ids=(first.history.trial_id, second.history.trial_id),
                    drugs=(first_drug.drug, second_drug.drug),
                    overlap_from=start,
                    overlap_until=end,
                    baseline=figure(baseline),
                    on_treatment=figure(on_treatment),
                    reduction=figure(reduction),
                    failed=failed,
                )
            )
            pair = (
                f"combination {first_drug.drug} ({first.history.trial_id}) + {second_drug.drug} "
                f"({second.history.trial_id}) overlapping {(end - start).days} days: "
            )
            if baseline is None or on_treatment is None or reduction is None:
                why = "unevaluable, no baseline above 0 or no on-treatment score"
                reasons.append(Reason(code="combination.unevaluable", text=pair + why))
                continue
            change = (
                f"pain {figure_text(baseline)} -> {figure_text(on_treatment)}, "
                f"reduction {figure_text(reduction * 100)} %"
            )
            if failed:
                why = f"failed, {change}, below {limit} %"
                reasons.append(Reason(code="combination.failed", text=pair + why))
            else:
                why = f"responded, {change} (responds from {limit} %)"
                reasons.append(Reason(code="combination.responded", text=pair + why))
    return Combinations(trials=found, reasons=reasons)


def _adequate(
    trials: Sequence[JudgedTrial],
) -> Iterator[tuple[JudgedTrial, FormularyDrug, AdequatePeriod]]:
    for trial in trials:
        drug, period = trial.history.drug, trial.period
        if drug is not None and period is not None:
            yield trial, drug, period
