"""How long a service's event loop goes without running its other tasks.

A Kafka consumer's heartbeats, `/readyz` and `/metrics` are coroutines on the same loop as the
work: a loop held for longer than the session timeout gets the worker thrown out of its group.
`watch_stalls` wakes every `interval` seconds and records how late it woke (the longest time
something held the loop), so the session timeout can be chosen from a measurement.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


class LoopStalls:
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.stalls = Histogram(
            f"{prefix}_loop_stall_seconds",
            "How late the event loop ran a task due now (something else held it)",
            buckets=BUCKETS,
            registry=registry,
        )
        self.worst = Gauge(
            f"{prefix}_loop_stall_max_seconds",
            "The longest the event loop was held since the process started",
            registry=registry,
        )
        self.longest = 0.0

    def observe(self, late: float) -> None:
        late = max(0.0, late)
        self.stalls.observe(late)
        if late > self.longest:
            self.longest = late
            self.worst.set(late)

    async def watch(self, interval: float = 0.1) -> None:
        """Until cancelled: sleep `interval`, record how late the wake-up came."""
        while True:
            asked = time.monotonic()
            await asyncio.sleep(interval)
            self.observe(time.monotonic() - asked - interval)


class TimeSlice:
    """Long work in slices: `await pause()` between items gives the loop back once `seconds`
    passed since it last did (the heartbeats, `/readyz` and `/metrics` run meanwhile), and
    costs a clock reading otherwise. Slicing by time, not by a count of items, holds whatever
    an item costs and however busy the machine is."""

    def __init__(self, seconds: float = 0.05) -> None:
        self._seconds = seconds
        self._since = time.monotonic()

    async def pause(self) -> None:
        now = time.monotonic()
        if now - self._since >= self._seconds:
            await asyncio.sleep(0)
            self._since = time.monotonic()
