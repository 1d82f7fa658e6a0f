"""Checkpoints: what changed since the last one, written to the changelog, then the local store.

For each owned partition with changes: one changelog record per patient changed since the last
checkpoint (its whole state, `changelog.patient_records`), then a marker saying what the
checkpoint covers; once the broker acknowledged them all, the local store is written. The
caller then commits the input offsets the checkpoint covers (`PartitionState.checkpointed`, one
per lane):
never before, so a crash at any point re-delivers what the changelog does not hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection

from services.classifier.changelog import MARKER_KEY, Marker, PatientState, encode_state
from services.classifier.changelog import patient_records as records_of
from services.classifier.delivery import offset_of
from services.classifier.partition import PartitionState
from services.classifier.store import Meta
from shared.loop_stall import TimeSlice

Send = Callable[[bytes, bytes, int], object]  # (value, key, partition) -> the queued send


def changes(state: PartitionState) -> bool:
    """Patients changed, or input records processed, since the partition's last checkpoint."""
    return bool(state.changed) or state.checkpointed != state.next_offset


def checkpoint_due(
    owned: dict[int, PartitionState],
    *,
    waiting: bool,
    since: float,
    every: float,
    at_least_every: float,
) -> bool:
    """Due when something changed and either every waiting patient is decided and `every`
    seconds passed, or `at_least_every` seconds passed (a backlog keeps patients waiting)."""
    if not any(changes(state) for state in owned.values()):
        return False
    return since >= at_least_every or (not waiting and since >= every)


async def write_checkpoint(
    owned: dict[int, PartitionState],
    *,
    waiting: Collection[bytes],
    policy: str,
    send: Send,
    flush: Callable[[], Awaitable[None]],
) -> int:
    """Write a checkpoint of every partition with changes; the records written."""
    written = {}
    records = 0
    slices = TimeSlice()
    for partition, state in owned.items():
        if not changes(state):
            continue
        state.sequence += 1
        documents = {}
        for key in state.changed:
            history = state.patients.get(key)
            if history is None:
                continue
            document = encode_state(
                PatientState(
                    history.raw,
                    history.published,
                    dirty=key in waiting,
                    quarantined=key in state.quarantined,
                )
            )
            documents[key] = document
            for record_key, value in records_of(key, document, state.sequence):
                send(value, record_key, partition)
                records += 1
            await slices.pause()
        marker = Marker(
            checkpoint_id=uuid.uuid4().hex,
            sequence=state.sequence,
            input_offsets=dict(state.next_offset),
            determinations_offsets=dict(state.determinations_offset),
            policy=policy,
            reevaluated_at=state.reevaluated_at,
        )
        written[partition] = (send(marker.encode(), MARKER_KEY, partition), marker, documents)
        records += 1
        state.changed = set()
    await flush()
    for partition, (queued, marker, documents) in written.items():
        state = owned[partition]
        if state.store is not None:
            state.store.write(documents, Meta(marker, offset_of(queued) + 1))
        state.checkpointed = dict(marker.input_offsets)
    return records
