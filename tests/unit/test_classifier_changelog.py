"""The classifier's changelog records and its local store (RocksDB), without a broker."""

from __future__ import annotations

import os
import zlib
from datetime import UTC, datetime

import pytest

from services.classifier.changelog import (
    MARKER_KEY,
    ChangelogError,
    ChangelogReader,
    Marker,
    PatientState,
    decode_events,
    decode_state,
    encode_state,
    patient_records,
    state_head,
)
from services.classifier.history import PatientHistory
from services.classifier.partition import offsets
from services.classifier.store import LocalStore, Meta
from shared.contract import ContractViolation, parse_event

STATE = PatientState(
    events={
        "urn:a\x1fe-1": '{"id": "e-1", "data": {"score": 5}}',
        "urn:a\x1fe-2": '{\n  "note": "\u00e9\u4e2d\U0001f600"\n}',
        "urn:b\x1f" + "x" * 256: "{}",
    },
    published="d" * 64,
    dirty=True,
    quarantined=False,
)


def marker(sequence: int = 1, checkpoint_id: str = "c1") -> Marker:
    return Marker(
        checkpoint_id,
        sequence,
        offsets(120, 40),
        {"live": 7, "backfill": 2},
        "default-v1",
        datetime(2026, 6, 1, tzinfo=UTC),
    )


def test_a_patient_state_keeps_every_text_byte_for_byte_and_in_order():
    decoded = decode_state(encode_state(STATE))

    assert decoded == STATE
    assert list(decoded.events) == list(STATE.events)


def test_flags_and_no_publication_survive_the_round_trip():
    state = PatientState({}, None, dirty=False, quarantined=True)
    assert decode_state(encode_state(state)) == state


def test_a_state_head_is_read_without_its_events_and_they_are_decoded_on_first_use():
    document = encode_state(STATE)
    head = state_head(document)
    assert (head.published, head.dirty, head.quarantined) == (STATE.published, True, False)
    calls = []

    def load():
        calls.append(1)
        return decode_events(document)

    history = PatientHistory(published=head.published, load=load)
    assert not history.loaded and calls == []  # a restored patient costs its document only
    assert history.raw == STATE.events and list(history.raw) == list(STATE.events)
    assert history.loaded and history.raw is history.raw and calls == [1]  # decoded once


def test_a_history_given_its_texts_has_no_loader_to_call():
    history = PatientHistory(raw={"k": "{}"}, load=lambda: pytest.fail("not to be called"))
    assert history.loaded and history.raw == {"k": "{}"}
    assert PatientHistory().raw == {} and PatientHistory().loaded


def test_an_unknown_state_head_is_refused():
    with pytest.raises(ChangelogError):
        state_head(b"\x09" + encode_state(STATE)[1:])


def test_the_state_is_compressed():
    texts = {
        f"urn:a\x1fe-{n}": '{"type": "pain.score.recorded.v1", "score": 5}' for n in range(500)
    }
    document = encode_state(PatientState(texts, None, False, False))
    assert len(document) < sum(len(t) for t in texts.values()) / 4


def test_a_state_written_in_the_length_prefixed_format_2_is_still_read():
    """Local stores and changelogs written before the NUL-joined format keep working."""
    parts = []
    for key, text in STATE.events.items():
        parts += (len(key.encode()).to_bytes(2, "big"), key.encode())
        parts += (len(text.encode()).to_bytes(4, "big"), text.encode())
    published = STATE.published.encode()
    document = bytes((2, 1, len(published))) + published + zlib.compress(b"".join(parts))

    assert decode_state(document) == STATE


def test_a_text_with_a_nul_would_not_survive_so_the_contract_refuses_one():
    """The format joins texts with NUL: a JSON text holds none unescaped, and the contract
    refuses an escaped one."""
    escaped = (
        '{"specversion":"1.0","id":"a\\u0000b","source":"s","type":"pain.score.recorded.v1",'
        '"time":"2026-01-01T00:00:00Z","data":{"patient_id":"p","score":1}}'
    )
    assert "\\u0000" in escaped
    with pytest.raises(ContractViolation) as refused:
        parse_event(escaped)
    assert [v.field for v in refused.value.violations] == ["id"]
    with pytest.raises(ContractViolation):
        parse_event(escaped.replace("\\u0000", "\x00"))  # a raw NUL: not JSON


def test_an_unknown_format_is_refused():
    with pytest.raises(ChangelogError):
        decode_state(b"\x01" + encode_state(STATE)[1:])


def test_a_small_state_is_one_record_under_the_patients_key():
    document = encode_state(STATE)
    [(key, value)] = patient_records(b"pt-1", document, sequence=3)
    reader = ChangelogReader()
    reader.add(0, key, value)

    assert key == b"pt-1"
    assert reader.documents == {b"pt-1": document}


def test_a_large_state_is_split_into_parts_written_before_its_head():
    document = os.urandom(25_000)  # incompressible
    records = patient_records(b"pt-1", document, sequence=3, limit=10_000)
    reader = ChangelogReader()
    for offset, (key, value) in enumerate(records):
        reader.add(offset, key, value)

    assert [key for key, _ in records] == [b"pt-1\x001", b"pt-1\x002", b"pt-1"]
    assert all(len(value) <= 10_000 + 13 for _, value in records)
    assert reader.documents[b"pt-1"] == document


def test_a_head_is_assembled_only_from_parts_of_its_own_checkpoint():
    old = os.urandom(25_000)
    new = os.urandom(25_000)
    reader = ChangelogReader()
    offset = 0
    for key, value in patient_records(b"pt-1", old, sequence=1, limit=10_000):
        reader.add(offset, key, value)
        offset += 1
    # A later checkpoint died after its first part: its part is newer, the head is the old one's.
    first_part = patient_records(b"pt-1", new, sequence=2, limit=10_000)[0]
    reader.add(offset, *first_part)
    assert reader.documents[b"pt-1"] == old

    for key, value in patient_records(b"pt-1", new, sequence=2, limit=10_000):
        reader.add(offset, key, value)
    assert reader.documents[b"pt-1"] == new
    assert reader.inconsistent == 0


def test_a_head_whose_parts_are_gone_is_counted_not_guessed():
    records = patient_records(b"pt-1", os.urandom(25_000), sequence=1, limit=10_000)
    reader = ChangelogReader()
    reader.add(0, *records[-1])  # the head alone (its parts compacted away)

    assert reader.inconsistent == 1
    assert b"pt-1" not in reader.documents


def test_the_latest_record_of_a_patient_and_the_latest_marker_win():
    reader = ChangelogReader()
    first = encode_state(PatientState({"k": "1"}, None, True, False))
    second = encode_state(PatientState({"k": "1", "l": "2"}, "d1", False, False))
    reader.add(0, *patient_records(b"pt-1", first, 1)[0])
    reader.add(1, MARKER_KEY, marker(1, "c1").encode())
    reader.add(2, *patient_records(b"pt-1", second, 2)[0])
    reader.add(3, MARKER_KEY, marker(2, "c2").encode())

    assert dict(reader.states()) == {b"pt-1": decode_state(second)}
    assert (reader.marker.checkpoint_id, reader.marker_offset, reader.records) == ("c2", 3, 4)


def test_a_marker_round_trips_and_garbage_is_refused():
    assert Marker.decode(marker().encode()) == marker()
    with pytest.raises(ChangelogError):
        Marker.decode(b'{"format": 2}')
    with pytest.raises(ChangelogError):
        Marker.decode(b"\xff")


def test_the_local_store_keeps_documents_and_its_checkpoint(tmp_path):
    store = LocalStore.open(tmp_path, "pain.events.v1", 4)
    assert store.meta() is None
    store.write({b"pt-2": b"two", b"pt-1": b"one"}, Meta(marker(), 42))
    store.close()

    again = LocalStore.open(tmp_path, "pain.events.v1", 4)
    assert again.meta() == Meta(marker(), 42)
    assert list(again.documents()) == [(b"pt-1", b"one"), (b"pt-2", b"two")]
    again.clear()
    assert again.meta() is None and list(again.documents()) == []
    again.close()


def test_a_locked_partition_store_gives_a_private_one_removed_on_close(tmp_path):
    holder = LocalStore.open(tmp_path, "pain.events.v1", 0)
    holder.write({b"pt-1": b"one"}, Meta(marker(), 1))

    second = LocalStore.open(tmp_path, "pain.events.v1", 0)  # RocksDB's lock: one process
    assert second.private and second.path != holder.path
    assert second.meta() is None  # empty: it restores from the changelog
    second.close()
    assert not second.path.exists()
    assert holder.meta() is not None
    holder.close()
