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
    issue: int = 12

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.goal if self.higher_is_better else value < self.goal

    @property
    def text(self) -> str:
        return f"{'≥' if self.higher_is_better else '<'} {self.goal:,g} {self.unit}".rstrip()


# The figures of issue 12, and the two targets of issue 7 it did not restate.
TARGETS = (
    Target("classifier_one_worker_of_ceiling", "one worker / parse_event ceiling", "×", 0.4, True),
    Target("two_workers_speedup", "two workers / one worker", "×", 1.7, True),
    Target("pipeline_1m_seconds", "1M events through the pipeline", "s", 180, False),
    Target("classifier_restart_ready_s", "worker holding the backfill restarted", "s", 5, False),
    Target("classifier_takeover_s_per_1m", "takeover by a new worker, per 1M", "s", 5, False),
    Target("e2e_p99_ms", "event → determination p99 at 200/s", "ms", 250, False),
    Target("e2e_task_p99_ms", "request → task change p99 at 200/s", "ms", 500, False),
    Target("e2e_p99_during_backfill_ms", "event → determination p99, backfill", "ms", 250, False),
    Target("classifier_rss_bytes_per_event", "classifier RSS per admitted event", "B", 1024, False),
    Target("classifier_one_worker_eps", "classifier, one worker", "events/s", 20_000, True, 7),
    Target("backfill_1m_two_workers_s", "1M-event backfill, two workers", "s", 120, False, 7),
)


def check_targets(figures: dict[str, float | None]) -> list[dict[str, object]]:
    return [
        {
            "key": target.key,
            "label": target.label,
            "target": target.text,
            "goal": target.goal,
            "higher_is_better": target.higher_is_better,
            "issue": target.issue,
            "value": figures.get(target.key),
            "met": target.check(figures.get(target.key)),
        }
        for target in TARGETS
    ]


# Every figure of a results file's `figures`, in the table's order: (label, unit).
FIGURES: dict[str, tuple[str, str]] = {
    "classifier_one_worker_of_ceiling": ("one worker / ceiling (parse_event)", "×"),
    "two_workers_speedup": ("two workers / one worker", "×"),
    "pipeline_1m_seconds": ("1M events through the whole pipeline", "s"),
    "classifier_restart_ready_s": ("worker holding the backfill restarted: to ready", "s"),
    "classifier_takeover_s_per_1m": ("takeover by a new worker: to ready, per 1M", "s"),
    "e2e_p99_ms": ("event → determination processed, p99", "ms"),
    "e2e_task_p99_ms": ("request → first task change, p99", "ms"),
    "e2e_p99_during_backfill_ms": ("event → determination p99, during a backfill", "ms"),
    "classifier_rss_bytes_per_event": ("classifier RSS per admitted event", "B"),
    "ceiling_json_loads_eps": ("ceiling: aiokafka + json.loads", "events/s"),
    "ceiling_parse_event_eps": ("ceiling: aiokafka + parse_event", "events/s"),
    "classifier_one_worker_eps": ("classifier, one worker", "events/s"),
    "classifier_two_workers_eps": ("classifier, two workers", "events/s"),
    "classifier_two_workers_of_ceiling": ("two workers / ceiling (parse_event)", "×"),
    "backfill_1m_two_workers_s": ("1M backfill, two workers (projected)", "s"),
    "classifier_one_worker_start_s": ("start-up to first record, one worker", "s"),
    "classifier_two_workers_start_s": ("start-up to first record, two workers", "s"),
    "classifier_restart_restore_s": ("one worker restarted: restoring", "s"),
    "classifier_takeover_ready_s": ("takeover by a new worker: to ready", "s"),
    "classifier_loop_stall_max_s": ("longest a worker's event loop was held", "s"),
    "determination_mismatches_one_worker": ("determination mismatches, one worker", ""),
    "determination_mismatches_two_workers": ("determination mismatches, two workers", ""),
    "gateway_eps": ("gateway ingest, batches of 500", "events/s"),
    "e2e_p50_ms": ("event → determination processed, p50", "ms"),
    "e2e_p95_ms": ("event → determination processed, p95", "ms"),
    "e2e_p50_during_backfill_ms": ("event → determination p50, during a backfill", "ms"),
}


def figure_text(value: float | None, unit: str) -> str:
    """Ratios to 3 significant digits, seconds to a tenth, rates, bytes and milliseconds whole."""
    if value is None:
        return "n/a"
    if unit == "×":
        text = f"{value:,.3g}"
    elif unit == "s":
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".rstrip()


def comparison_rows(
    figures: dict[str, float | None],
    targets: list[dict[str, object]],
    previous: dict[str, float | None] | None,
) -> list[tuple[str, str, str, str, str]]:
    """The table's rows: (figure, value, target, met, the previous results file's value).

    A figure the previous file does not have shows as "absent"; with no previous file at all,
    the last column is empty."""
    by_key = {target["key"]: target for target in targets}
    rows = []
    for key, (label, unit) in FIGURES.items():
        target = by_key.get(key)
        met = "" if target is None else {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        if previous is None:
            before = ""
        elif previous.get(key) is None:
            before = "absent"
        else:
            before = figure_text(previous[key], unit)
        goal = str(target["target"]) if target else ""
        rows.append((label, figure_text(figures.get(key), unit), goal, met, before))
    return rows


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sum of a Prometheus text exposition's samples of `name` whose labels include
    `labels` (all of its samples without labels given)."""
    wanted = [f'{label}="{value}"' for label, value in (labels or {}).items()]
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        series, _, value = line.rpartition(" ")
        inside = series[len(name) :].strip("{}")
        if all(item in inside.split(",") for item in wanted):
            total += float(value)
    return total


def projected_1m(seconds: float, startup: float, events: int) -> tuple[float | None, bool]:
    """The time a million events would take, and whether it is a projection: a run of fewer
    events keeps its start-up (a fixed cost) and scales the rest; a run of a million or more is
    its own measured time."""
    if events <= 0 or seconds <= 0:
        return None, False
    if events >= ONE_MILLION:
        return round(seconds, 1), False
    startup = min(max(startup, 0.0), seconds)
    return round(startup + (seconds - startup) * ONE_MILLION / events, 1), True


def per_million(seconds: float | None, events: int) -> float | None:
    """Seconds for `events`, per million events."""
    if seconds is None or events <= 0:
        return None
    return round(seconds * ONE_MILLION / events, 2)


def bytes_per_event(peak: int | None, baseline: int | None, admitted: float) -> float | None:
    """What a worker's peak RSS grew by over its state-less RSS, per admitted event."""
    if peak is None or baseline is None or admitted <= 0:
        return None
    return round((peak - baseline) / admitted, 1)


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
