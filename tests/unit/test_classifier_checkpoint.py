"""When a checkpoint is due, and what one writes: the changelog records (through a recording
send; the broker's side is in tests/integration/test_classifier_state.py) and the local store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.classifier.changelog import MARKER_KEY, ChangelogReader, Marker
from services.classifier.checkpoint import changes, checkpoint_due, write_checkpoint
from services.classifier.history import PatientHistory
from services.classifier.partition import PartitionState, offsets
from services.classifier.store import LocalStore


@dataclass
class Metadata:
    offset: int


class Changelog:
    """Records as a broker would give them offsets, one log per partition."""

    def __init__(self) -> None:
        self.logs: dict[int, list[tuple[bytes, bytes]]] = {}
        self.flushed = 0

    def send(self, value: bytes, key: bytes, partition: int):
        log = self.logs.setdefault(partition, [])
        log.append((key, value))
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(Metadata(len(log) - 1))
        queued = asyncio.get_running_loop().create_future()
        queued.set_result(delivered)
        return queued

    async def flush(self) -> None:
        self.flushed += 1


def partition(tmp_path, number: int, patients: int) -> PartitionState:
    state = PartitionState(
        next_offset=offsets(patients), committed=offsets(0), checkpointed=offsets(0)
    )
    state.store = LocalStore.open(tmp_path, "events", number)
    for n in range(patients):
        key = f"pt-{number}-{n}".encode()
        state.patients[key] = PatientHistory(raw={f"s\x1fe{n}": f'{{"n": {n}}}'}, published=None)
        state.changed.add(key)
    return state


def test_nothing_changed_is_never_due():
    idle = {0: PartitionState(next_offset=offsets(5), checkpointed=offsets(5))}
    assert not checkpoint_due(idle, waiting=False, since=1e6, every=1, at_least_every=30)


def test_due_once_decided_and_a_second_passed_or_at_least_every_thirty():
    busy = {
        0: PartitionState(next_offset=offsets(6), checkpointed=offsets(5))
    }  # a duplicate processed
    assert changes(busy[0])
    assert not checkpoint_due(busy, waiting=False, since=0.5, every=1, at_least_every=30)
    assert checkpoint_due(busy, waiting=False, since=1.0, every=1, at_least_every=30)
    assert not checkpoint_due(busy, waiting=True, since=29.9, every=1, at_least_every=30)
    assert checkpoint_due(busy, waiting=True, since=30, every=1, at_least_every=30)


async def test_a_checkpoint_writes_each_changed_patient_then_a_marker_then_the_store(tmp_path):
    owned = {3: partition(tmp_path, 3, 4), 7: partition(tmp_path, 7, 2)}
    owned[7].changed = {b"pt-7-1"}
    owned[7].quarantined = {b"pt-7-1"}
    changelog = Changelog()

    records = await write_checkpoint(
        owned, waiting={b"pt-3-0"}, policy="p1", send=changelog.send, flush=changelog.flush
    )

    assert records == 4 + 1 + 1 + 1 and changelog.flushed == 1
    for number, state in owned.items():
        log = changelog.logs[number]
        assert log[-1][0] == MARKER_KEY  # the marker last
        reader = ChangelogReader()
        for offset, (key, value) in enumerate(log):
            reader.add(offset, key, value)
        assert reader.marker == Marker.decode(log[-1][1])
        assert (reader.marker.sequence, reader.marker.input_offsets) == (1, state.next_offset)
        assert state.checkpointed == state.next_offset and state.changed == set()
        meta = state.store.meta()
        assert meta.marker == reader.marker and meta.changelog_offset == len(log)
        assert dict(state.store.documents()) == reader.documents
    states = dict(_read(changelog.logs[3]).states())
    assert states[b"pt-3-0"].dirty and not states[b"pt-3-1"].dirty
    assert dict(_read(changelog.logs[7]).states())[b"pt-7-1"].quarantined

    again = await write_checkpoint(
        owned, waiting=set(), policy="p1", send=changelog.send, flush=changelog.flush
    )
    assert again == 0  # nothing changed: no record, not even a marker
    for state in owned.values():
        state.store.close()


def _read(log) -> ChangelogReader:
    reader = ChangelogReader()
    for offset, (key, value) in enumerate(log):
        reader.add(offset, key, value)
    return reader
