"""What a worker keeps per owned partition, in memory."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from services.classifier.history import PatientHistory
from services.classifier.store import LocalStore

# A partition's input comes in two lanes, the same partition of two co-partitioned topics:
# `pain.events.v1` (live) and `pain.events.backfill.v1` (bulk loads, read after the live one).
LIVE = "live"
BACKFILL = "backfill"
LANES = (LIVE, BACKFILL)

Offsets = dict[str, int | None]
"""An offset per lane (None: nothing known of that lane's partition yet)."""


def offsets(live: int | None = None, backfill: int | None = None) -> Offsets:
    return {LIVE: live, BACKFILL: backfill}


@dataclass
class PartitionState:
    patients: dict[bytes, PatientHistory] = field(default_factory=dict)
    next_offset: Offsets = field(default_factory=offsets)  # after the last one processed
    committed: Offsets = field(default_factory=offsets)  # the last committed for the group
    # Patients whose decision raised: not decided again until a new event or a restore.
    quarantined: set[bytes] = field(default_factory=set)
    store: LocalStore | None = None  # the local store (None in unit tests of the rules' side)
    changed: set[bytes] = field(default_factory=set)  # patients changed since the last checkpoint
    sequence: int = 0  # of the last checkpoint
    # Per lane, after the last determination published on this partition of its topic.
    determinations_offset: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    checkpointed: Offsets | None = None  # the input offsets the last checkpoint covers
    reevaluated_at: datetime | None = None  # when time passing last re-decided every patient
    # Determinations published for patients not admitted yet (a replay from the input's start).
    published_before: dict[bytes, str] = field(default_factory=dict)
    # Lanes whose last batch stopped short of the high-water mark its fetch told: more of their
    # records already wait, so their patients are not decided at once on part of them.
    behind: set[str] = field(default_factory=set)


class ParsedCache:
    """The histories that keep their parsed events: those of patients decided for live traffic,
    up to `events` parsed events in all, least recently decided dropped first. A patient with
    live traffic is decided again on each of its events, and parsing its whole history again
    each time would cost more than the decision; a patient decided in a backfill's pass is not
    decided again soon, so it keeps only its texts (its parsed events would cost about 2 KB
    each, four times the text)."""

    def __init__(self, events: int):
        self._limit = events
        self._order: OrderedDict[int, tuple[PatientHistory, int]] = OrderedDict()
        self._events = 0

    def __contains__(self, history: PatientHistory) -> bool:
        return id(history) in self._order

    def keep(self, history: PatientHistory) -> None:
        """Keep `history`'s parsed events (the most recently decided); drop the oldest others'
        while the cache holds more than its limit."""
        self._forget(history)
        count = len(history.raw)
        self._order[id(history)] = (history, count)
        self._events += count
        while self._events > self._limit and self._order:
            _, (evicted, evicted_count) = self._order.popitem(last=False)
            self._events -= evicted_count
            evicted.forget_parsed()

    def decided(self, history: PatientHistory, live: bool) -> None:
        """After a decision: kept when live; otherwise its parsed events are dropped, unless the
        cache keeps them already."""
        if live:
            self.keep(history)
        elif history not in self:
            history.forget_parsed()

    def drop(self, history: PatientHistory) -> None:
        """`history` keeps only its texts from now on (e.g. a patient set aside)."""
        self._forget(history)
        history.forget_parsed()

    def _forget(self, history: PatientHistory) -> None:
        known = self._order.pop(id(history), None)
        if known is not None:
            self._events -= known[1]

    @property
    def events(self) -> int:
        """The parsed events kept (as counted when each history was last kept)."""
        return self._events

    def clear(self) -> None:
        for history, _ in self._order.values():
            history.forget_parsed()
        self._order.clear()
        self._events = 0
