"""What a worker keeps per owned partition, in memory."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from services.classifier.history import PatientHistory
from services.classifier.store import LocalStore


@dataclass
class PartitionState:
    patients: dict[bytes, PatientHistory] = field(default_factory=dict)
    next_offset: int | None = None  # the input offset after the last one processed
    committed: int | None = None  # the last offset committed for the group
    # Patients whose decision raised: not decided again until a new event or a restore.
    quarantined: set[bytes] = field(default_factory=set)
    store: LocalStore | None = None  # the local store (None in unit tests of the rules' side)
    changed: set[bytes] = field(default_factory=set)  # patients changed since the last checkpoint
    sequence: int = 0  # of the last checkpoint
    determinations_offset: int = 0  # after the last determination published on this partition
    checkpointed: int | None = None  # the input offset the last checkpoint covers
    reevaluated_at: datetime | None = None  # when time passing last re-decided every patient
    # Determinations published for patients not admitted yet (a replay from the input's start).
    published_before: dict[bytes, str] = field(default_factory=dict)


class ParsedCache:
    """Which histories keep their parsed events (the rest keep only their texts): bounded memory."""

    def __init__(self, size: int):
        self._size = size
        self._order: OrderedDict[int, PatientHistory] = OrderedDict()

    def touch(self, history: PatientHistory) -> None:
        self._order[id(history)] = history
        self._order.move_to_end(id(history))
        while len(self._order) > self._size:
            _, evicted = self._order.popitem(last=False)
            evicted.forget_parsed()

    def clear(self) -> None:
        self._order.clear()
