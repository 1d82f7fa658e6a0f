"""Pain start, `pain_days` and whether the pain is chronic (POLICY.md section 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from services.classifier.policy import Policy
from services.classifier.scores import Scores
from shared.contract import ConditionRecorded, Reason

_PAINFUL = 1.0


def utc_date(instant: datetime) -> date:
    """The UTC calendar date of an instant: `pain_days` counts these."""
    return instant.astimezone(UTC).date()


@dataclass(frozen=True)
class PainDuration:
    """When the pain started, for how many calendar days as of T, and whether that is chronic."""

    start: date | None
    days: int | None
    chronic: bool
    reason: Reason


def pain_duration(
    conditions: Sequence[ConditionRecorded],
    scores: Scores,
    first_trial_start: datetime | None,
    as_of: datetime,
    policy: Policy,
) -> PainDuration:
    """Pain start is the onset of the latest condition event (`conditions` in time order);
    without one, the earlier of the first score >= 1 and the first trial start. `pain_days` are
    the UTC calendar days from it to T; chronic from `policy.chronic_days`."""
    if conditions:
        start, origin = conditions[-1].data.onset_date, "onset of the latest condition record"
    else:
        candidates = [
            (when, origin)
            for when, origin in (
                (scores.first_time_at_least(_PAINFUL), "first score of 1 or more"),
                (first_trial_start, "first trial start"),
            )
            if when is not None
        ]
        if not candidates:
            reason = Reason(
                code="pain.no_start",
                text="no pain start: no condition record, no score of 1 or more, no trial",
            )
            return PainDuration(start=None, days=None, chronic=False, reason=reason)
        when, origin = min(candidates)
        start = utc_date(when)
    days = (utc_date(as_of) - start).days
    chronic = days >= policy.chronic_days
    text = f"pain for {days} day{'' if days == 1 else 's'} since {start.isoformat()} ({origin}); "
    if chronic:
        reason = Reason(code="pain.chronic", text=text + f"chronic from {policy.chronic_days} days")
    else:
        reason = Reason(
            code="pain.not_chronic", text=text + f"chronic only from {policy.chronic_days} days"
        )
    return PainDuration(start=start, days=days, chronic=chronic, reason=reason)
