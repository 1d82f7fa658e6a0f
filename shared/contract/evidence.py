"""The events that count as of an instant T: deduplicated, unretracted, at or before T, in order.

The contract's rules for one patient's stream (CONTRACT.md: a (source, id) delivered twice is one
event; a retraction makes it as if the event had never been sent), as contract-level code: the
classifier decides from exactly these events and the coordinator's timeline shows exactly them.

Decisions taken here (the contract and POLICY.md leave them open):
- Duplicates: the first delivered of the same (source, id) is kept, as the idempotent store of a
  stream keeps it; the contract makes a re-delivery the same event.
- Retractions are dropped *first*, before the cut-off at T: a retraction corrects the record, it is
  not a clinical fact that happened at its `time`, so it holds whatever its own `time` and whether
  it arrived before or after the event ("as if that event had never been sent"). The retraction
  itself is never evidence.
- A retraction may retract a retraction, which restores what that one retracted. A retraction on a
  cycle of retractions (only possible with malformed data) stands unless a standing retraction off
  the cycle retracts it.
- Order: by (time, source, id), so ties are broken the same way in any arrival order.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime

from shared.contract.events import Event, EventRetracted

Key = tuple[str, str]


def require_aware(as_of: datetime) -> datetime:
    """`as_of` itself, refused when it has no offset: every rule compares instants."""
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError("as_of must be an aware datetime (with an offset)")
    return as_of


def event_order(event: Event) -> tuple[datetime, str, str]:
    """The order in which a patient's history is read: time, then source and id for ties."""
    return (event.time, event.source, event.id)


def events_as_of(events: Iterable[Event], as_of: datetime) -> list[Event]:
    """The events a determination as of `as_of` is made from, in `event_order`.

    Duplicates and retracted events are dropped, then events later than `as_of`; retraction events
    are never returned. The result depends only on the set of events, not on their arrival order.
    """
    require_aware(as_of)
    unique: dict[Key, Event] = {}
    for event in events:
        unique.setdefault(event.key, event)
    retracted = _retracted_keys(unique)
    kept = [
        event
        for key, event in unique.items()
        if key not in retracted and not isinstance(event, EventRetracted) and event.time <= as_of
    ]
    return sorted(kept, key=event_order)


def _retracted_keys(unique: dict[Key, Event]) -> set[Key]:
    """The keys retracted by a retraction that stands.

    A retraction stands unless a retraction that stands retracts it. Resolved from the
    retractions nobody retracts inwards, so the answer is the same in any order.
    """
    target: dict[Key, Key] = {
        key: (event.source, event.data.retracted_id)
        for key, event in unique.items()
        if isinstance(event, EventRetracted)
    }
    retractors: dict[Key, list[Key]] = defaultdict(list)
    for key, retracted in target.items():
        retractors[retracted].append(key)

    stands: dict[Key, bool] = {}
    pending = {key: len(retractors[key]) for key in target}
    ready = deque(key for key, count in pending.items() if count == 0)
    while ready:
        key = ready.popleft()
        stands[key] = not any(stands.get(r, False) for r in retractors[key])
        retracted = target[key]
        if retracted in pending:
            pending[retracted] -= 1
            if pending[retracted] == 0:
                ready.append(retracted)
    resolved = dict(stands)
    for key in target.keys() - resolved.keys():  # on a cycle: judged by the others alone
        stands[key] = not any(resolved.get(r, False) for r in retractors[key])
    return {target[key] for key, standing in stands.items() if standing}
