"""Pain scores on the 0-10 scale, their medians over windows, and the current pain.

Figures are exact fractions. A score is the decimal it was sent as (the contract's decoder keeps
its text: `4.9` is 49/10, `49.99999999999999999999` mm is below 5/10 cm), so that a reduction of
exactly 30 % is decided by the rule, not by rounding. A setting of the policy file (a float read
from TOML) is read as the nearest fraction with a denominator of at most a million (0.3 is 3/10).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

from services.classifier.policy import Policy
from shared.contract import Reason, ScoreRecorded


@lru_cache(maxsize=4096, typed=True)  # a few distinct scores and settings, read again and again
def exact(value: Decimal | float) -> Fraction:
    """A score, dose or setting as the exact number it was written as (a Fraction is
    immutable: one may be shared by every caller)."""
    if isinstance(value, Decimal):
        return Fraction(value)
    return Fraction(value).limit_denominator(1_000_000)


def median(values: Sequence[Decimal]) -> Fraction | None:
    """The exact median; of an even count, the mean of the middle two. None without values."""
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return exact(ordered[middle])
    return (exact(ordered[middle - 1]) + exact(ordered[middle])) / 2


def figure(value: Fraction | None) -> float | None:
    """A figure as it is published."""
    return None if value is None else float(value)


def figure_text(value: Fraction) -> str:
    """A figure as a clinician reads it: `6`, `6.5`, `6.67`.

    Rounding never makes a figure look whole when it is not: 4.999999 is `4.99`, not `5`, so
    that "current pain 5/10, needs 5, not met" cannot be written of a score just below 5.
    """
    text = f"{float(value):.2f}".rstrip("0").rstrip(".")
    if "." not in text and 0 < value < int(text):  # rounded up to a whole number: say less
        text = f"{math.floor(value * 100) / 100:.2f}"
    return text


class Scores:
    """One patient's scores on the 0-10 scale in time order, for medians over windows."""

    def __init__(self, scores: Sequence[ScoreRecorded]) -> None:
        """`scores` must already be in time order."""
        self._times = [score.time for score in scores]
        self._values = [score.data.score_0_10 for score in scores]

    def between(self, start: datetime, end: datetime, *, include_start: bool) -> list[Decimal]:
        """The scores in [start, end], or in (start, end] without `include_start`."""
        low = (bisect_left if include_start else bisect_right)(self._times, start)
        return self._values[low : bisect_right(self._times, end)]

    def median_between(
        self, start: datetime, end: datetime, *, include_start: bool = True
    ) -> Fraction | None:
        """The median of the scores in [start, end] (or (start, end]), None without any."""
        return median(self.between(start, end, include_start=include_start))

    def first_time_at_least(self, value: float) -> datetime | None:
        """When a score reached `value` for the first time, None if it never did."""
        return next((t for t, v in zip(self._times, self._values, strict=True) if v >= value), None)

    def latest(self) -> tuple[datetime, Fraction] | None:
        """The latest score and its time, None without any score."""
        return (self._times[-1], exact(self._values[-1])) if self._times else None


@dataclass(frozen=True)
class CurrentPain:
    """The current pain as of T, None when unknown, and how it was found."""

    value: Fraction | None
    reason: Reason


def current_pain(scores: Scores, as_of: datetime, policy: Policy) -> CurrentPain:
    """The median of the scores in (T - window, T]; if none, the latest score; else unknown."""
    days = policy.current_pain_window_days
    window = scores.between(as_of - timedelta(days=days), as_of, include_start=False)
    value = median(window)
    if value is not None:
        text = f"current pain {figure_text(value)}/10: median of {len(window)} score(s) in the "
        return CurrentPain(value, Reason(code="pain.current", text=f"{text}last {days} days"))
    latest = scores.latest()
    if latest is not None:
        at, value = latest
        text = f"current pain {figure_text(value)}/10: no score in the last {days} days, "
        text += f"latest score of {at.astimezone(UTC).date().isoformat()}"
        return CurrentPain(value, Reason(code="pain.current_from_latest", text=text))
    return CurrentPain(
        None, Reason(code="pain.current_unknown", text="current pain unknown: no score at all")
    )
