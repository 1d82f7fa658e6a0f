"""Pure helpers of the benchmark: percentiles, rates, targets, profiles (no I/O, unit-tested)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ONE_MILLION = 1_000_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p95, p99 and max, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def windowed_rates(samples: Sequence[tuple[float, float]], window: float = 5.0) -> list[float]:
    """Rates (count per second) over consecutive windows of a (time, cumulative count) series."""
    rates, start = [], None
    for at, count in samples:
        if start is None:
            start = (at, count)
            continue
        if at - start[0] >= window:
            rates.append((count - start[1]) / (at - start[0]))
            start = (at, count)
    return rates


def idle_until(samples: Sequence[tuple[float, float]]) -> float:
    """The time of the last sample before the count first moved (0.0 when the first already
    had): when work began, at the latest, in a (time, cumulative count) series."""
    began = 0.0
    for at, count in samples:
        if count:
            break
        began = at
    return began


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    unit: str
    goal: float
    higher_is_better: bool

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.goal if self.higher_is_better else value < self.goal

    @property
    def text(self) -> str:
        return f"{'≥' if self.higher_is_better else '<'} {self.goal:,g} {self.unit}"


# The targets of issue 7.
TARGETS = (
    Target("classifier_one_worker_eps", "classifier, one worker", "events/s", 20_000, True),
    Target("two_workers_speedup", "two workers / one worker", "×", 1.7, True),
    Target("e2e_p99_ms", "end-to-end p99 at 200 events/s", "ms", 250, False),
    Target("backfill_1m_two_workers_s", "1M-event backfill, two workers", "s", 120, False),
)


def check_targets(figures: dict[str, float | None]) -> list[dict[str, object]]:
    return [
        {
            "key": target.key,
            "label": target.label,
            "target": target.text,
            "value": figures.get(target.key),
            "met": target.check(figures.get(target.key)),
        }
        for target in TARGETS
    ]


def top_frames(collapsed: Iterable[str], limit: int = 15) -> dict[str, object]:
    """The hottest functions of a py-spy `--format raw` profile (collapsed stacks, one per line:
    `frame;frame;...;leaf count`): by own samples (the leaf) and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[object]]:
        return [[frame, round(100 * n / total, 1)] for frame, n in counter.most_common(limit)]

    ours = Counter({frame: n for frame, n in inclusive.items() if _is_project(frame)})
    return {
        "samples": total,
        "own_percent": share(own),
        "inclusive_percent_project": share(ours),
    }


def _is_project(frame: str) -> bool:
    """A frame of Painpath's own code (py-spy names it `function (path:line)`)."""
    location = frame.rpartition("(")[2]
    if "site-packages" in location or "painpath/__main__" in location:
        return False
    return any(
        location.startswith(package) or f"/{package}" in location
        for package in ("services/", "shared/", "painpath/")
    )
