"""Whether the treatment criteria are met (POLICY.md section 6)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from services.classifier.policy import Policy
from services.classifier.scores import exact, figure_text
from shared.contract import Classification, Reason


@dataclass(frozen=True)
class CriteriaJudgement:
    """Which criteria applied (`neuropathic` or `default`), whether all were met, and why."""

    name: str
    met: bool
    reasons: list[Reason]


def treatment_criteria(
    classification: Classification | None,
    pain_days: int | None,
    failed_drugs: list[str],
    failed_classes: list[str],
    failed_combinations: int,
    current_pain: Fraction | None,
    policy: Policy,
) -> CriteriaJudgement:
    """Judge the criteria of the patient's classification (else `default`): minimum pain days,
    failed drugs, failed classes, failed combination trials and current pain. A criterion with a
    minimum of 0 does not apply; an unknown current pain never meets its criterion."""
    name, criteria = policy.criteria_for(classification)
    checks = [
        (
            "pain_days",
            criteria.min_pain_days,
            pain_days,
            f"pain for {pain_days} day{'' if pain_days == 1 else 's'}",
        ),
        (
            "failed_drugs",
            criteria.min_failed_drugs,
            len(failed_drugs),
            f"{len(failed_drugs)} failed drug(s) ({', '.join(failed_drugs) or 'none'})",
        ),
        (
            "failed_classes",
            criteria.min_failed_classes,
            len(failed_classes),
            f"{len(failed_classes)} failed class(es) ({', '.join(failed_classes) or 'none'})",
        ),
        (
            "failed_combinations",
            criteria.min_failed_combinations,
            failed_combinations,
            f"{failed_combinations} failed combination trial(s)",
        ),
    ]
    reasons = []
    unmet = []
    for key, minimum, value, text in checks:
        if minimum == 0:
            continue
        met = value is not None and value >= minimum
        reasons.append(_criterion(name, key, met, f"{text}, needs {minimum}"))
        if not met:
            unmet.append(key)

    pain_minimum = exact(criteria.min_current_pain)
    met = current_pain is not None and current_pain >= pain_minimum
    pain = "unknown" if current_pain is None else f"{figure_text(current_pain)}/10"
    reasons.append(
        _criterion(
            name, "current_pain", met, f"current pain {pain}, needs {figure_text(pain_minimum)}"
        )
    )
    if not met:
        unmet.append("current_pain")

    if unmet:
        overall = Reason(
            code="criteria.not_met",
            text=f"treatment criteria ({name}) not met: {', '.join(unmet)}",
        )
    else:
        overall = Reason(code="criteria.met", text=f"treatment criteria ({name}) met")
    return CriteriaJudgement(name=name, met=not unmet, reasons=[*reasons, overall])


def _criterion(name: str, key: str, met: bool, text: str) -> Reason:
    code = f"criteria.{key}.{'met' if met else 'not_met'}"
    return Reason(code=code, text=f"{name} criteria: {text}, {'met' if met else 'not met'}")
