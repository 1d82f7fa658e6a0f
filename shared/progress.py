"""A consumer's progress: lag per partition, and the stuck-consumer watchdog.

Kafka clients can stop consuming with no error (aiokafka#1154, faust#175): the socket is open,
partitions are assigned, but nothing is processed while the lag grows. Readiness must say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Progress:
    """A consumer's progress by partition: a partition number, or, for a consumer of several
    topics, anything naming the partition (aiokafka's `TopicPartition`)."""

    def __init__(self, stall_after: float, clock: Callable[[], float] = time.monotonic):
        self._stall_after = stall_after
        self._clock = clock
        self._next: dict[Hashable, int] = {}  # partition -> the offset after the last processed
        self._last = clock()

    def processed(self, partition: Hashable, offset: int) -> None:
        self._next[partition] = offset + 1
        self._last = self._clock()

    def forget(self) -> None:
        """On a rebalance: what is known of partitions may belong to another consumer now."""
        self._next.clear()

    def lag(self, partition: Hashable, highwater: int, position: int) -> int:
        """Records not yet processed: fetched-but-unprocessed ones count too."""
        return max(0, highwater - self._next.get(partition, position))

    def idle_seconds(self) -> float:
        return self._clock() - self._last

    def stalled(self, total_lag: int) -> bool:
        """Records wait, yet nothing was processed for longer than the watchdog allows."""
        return total_lag > 0 and self.idle_seconds() > self._stall_after
