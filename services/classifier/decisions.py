"""The decision scheduler's parts: who waits for a decision, when a pass is due, what it costs
(a patient whose decision raises is set aside: `dead_letters` says what it leaves behind).

A patient touched by a batch is marked dirty; dirty patients are decided (`rules.evaluate`) at
once when the worker has caught up (lag under `CAUGHT_UP_RECORDS`; a partition whose last batch
stopped short of its fetch's high-water mark keeps its patients for the rest, up to the delay),
or, during a backfill, once
they have waited `CLASSIFIER_DECISION_DELAY_SECONDS` and four times what the pass is expected to
take (`decision_due`), so that deciding takes at most a fifth of the time and a patient with a
hundred events in a backfill is decided a few times, not a hundred.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.classifier.history import PatientHistory
from services.classifier.metrics import Metrics
from services.classifier.partition import PartitionState
from services.classifier.policy import Policy
from services.classifier.rules import evaluate
from shared.loop_stall import TimeSlice

FREEZE_EVERY = 200  # patients decided between two freezes of what the pass allocated
CAUGHT_UP_RECORDS = 1_000  # below this lag a worker decides at once: latency over batching
DECISION_SHARE = 4  # during a backfill, wait 4x a pass's expected duration: a fifth deciding


@dataclass
class Dirty:
    partition: int
    parent: str | bytes | None  # the trace context a determination continues (None: a new one)
    timestamp_ms: int | None  # the newest record's broker timestamp, for the latency histogram
    backfill: bool = False  # every cause since the last decision was a backfill record


@dataclass(frozen=True)
class Decided:
    """A determination to publish, serialised."""

    key: bytes
    partition: int
    value: bytes
    determination_id: str
    status: str
    parent: str | bytes | None
    backfill: bool = False  # published on the backfill lane's determinations topic


class PassCost:
    """What deciding costs, per event of the histories decided: learnt from each pass, so the
    next pass's duration is known before it starts (a pass re-reads whole histories, which grow
    during a backfill, so the last pass's duration under-estimates the next one's)."""

    PRIOR = 20e-6  # seconds per event before any pass was measured (measured: 12-17 us)
    MIN_EVENTS = 1_000  # a smaller pass is too noisy to learn from

    def __init__(self) -> None:
        self.seconds_per_event = self.PRIOR

    def expected(self, events: int) -> float:
        return events * self.seconds_per_event

    def observe(self, events: int, seconds: float) -> None:
        if events >= self.MIN_EVENTS:
            self.seconds_per_event = (self.seconds_per_event + seconds / events) / 2


def decision_due(waited: float, delay: float, expected_pass_seconds: float) -> bool:
    """During a backfill: decide once the dirty patients have waited `delay`, and at least
    DECISION_SHARE times what their pass will take, so deciding takes at most a fifth of the
    time and the rest goes to reading the backlog."""
    return waited >= max(delay, DECISION_SHARE * expected_pass_seconds)


class BacklogShare:
    """While fresh events arrive (records read within `CLASSIFIER_LIVE_SECONDS` of their broker
    timestamp, seen in the last `FRESH_WINDOW` seconds), backlog work (backfill-lane batches and
    decision-pass slices) takes at most `share` of the worker's CPU: after a loop that did some,
    the worker takes live records only, for as long as keeps the share, and decides them at once.
    What it leaves idle goes to the live path of every service on the machine (the broker, the
    coordinator, the gateway, the other workers); the backlog goes on as soon as the live traffic
    stops. `share` 1: no limit."""

    FRESH_WINDOW = 1.0

    def __init__(self, share: float):
        self.share = share
        self._fresh_at = float("-inf")
        self._idle_until = 0.0

    def fresh(self, now: float) -> None:
        self._fresh_at = now

    def spent(self, cpu_seconds: float, now: float) -> float:
        """A loop spent `cpu_seconds` on backlog work: the seconds left idle for it (0 when no
        fresh event was seen lately)."""
        if self.share >= 1 or now - self._fresh_at > self.FRESH_WINDOW:
            return 0.0
        idle = cpu_seconds * (1 - self.share) / self.share
        self._idle_until = max(self._idle_until, now + idle)
        return idle

    def idle_for(self, now: float) -> float:
        """Seconds left in which backlog work waits (live records are taken meanwhile)."""
        return max(0.0, self._idle_until - now)


SetAside = Callable[[bytes, int, PartitionState, PatientHistory, Exception, datetime], None]


async def decide(
    dirty: dict[bytes, Dirty],
    owned: dict[int, PartitionState],
    policy: Policy,
    now: datetime,
    *,
    decided: Callable[[bytes, PatientHistory], None],
    metrics: Metrics,
    set_aside: SetAside,
) -> tuple[list[Decided], int]:
    """Decide every dirty patient: the determinations to publish (those whose id differs from
    the last one published), already serialised (a pass over many patients keeps bytes, not
    object trees), and the events read. A patient whose decision raises goes to `set_aside`
    (the bulkhead: no rule's bug may stop the worker) and every other one goes on."""
    changed = []
    events = 0
    slices = TimeSlice()
    for done, (key, mark) in enumerate(dirty.items(), start=1):
        state = owned.get(mark.partition)
        history = state.patients.get(key) if state is not None else None
        if history is not None:
            events += len(history.raw)
            try:
                determination = evaluate(history.events, policy, now)
                value = determination.model_dump_json().encode()
            except Exception as error:
                set_aside(key, mark.partition, state, history, error, now)
            else:
                decided(key, history)
                metrics.decided.inc()
                if mark.timestamp_ms is not None:
                    metrics.latency.observe(max(0.0, time.time() - mark.timestamp_ms / 1000))
                if determination.determination_id != history.published:
                    changed.append(
                        Decided(
                            key,
                            mark.partition,
                            value,
                            determination.determination_id,
                            determination.status.value,
                            mark.parent,
                            mark.backfill,
                        )
                    )
        if done % FREEZE_EVERY == 0:
            gc.freeze()  # what the pass allocated so far stays out of the collector's way
        await slices.pause()  # heartbeats, health and metrics stay answered during a long pass
    return changed, events
