"""The classifier's changelog records: one per changed patient per checkpoint, and a marker.

The changelog topic (`painpath.classifier.changelog.v1`, co-partitioned with the input) is
keyed by patient: each checkpoint writes, for every patient whose state changed since the
previous one, the patient's whole state (its admitted events' original texts in admission order,
the determination last published, whether it waits for a decision or is set aside), then one
marker record saying what the checkpoint covers (the input offset, the determinations' offset,
the policy, the last re-evaluation). So the latest record of each key is the state: a compacted
topic (`cleanup.policy=compact` on a real cluster) keeps one record per patient, and a new owner
of the partition reads that. Correctness never depends on compaction (the local broker has
none): a reader keeps the latest record per key.

A patient's state is compressed (zlib, level 1: JSON compresses about fivefold, at a few hundred
MB/s); one too big for a broker message is split into parts written before its head record, all
tagged with the checkpoint's sequence number, so that a reader only ever assembles parts of one
checkpoint.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

FORMAT = 2  # of markers, and of patient states written before STATE_FORMAT (still read)
STATE_FORMAT = 3  # a patient state's events joined by NUL (2: length-prefixed, 4x slower)
_SEPARATOR = "\x00"
MARKER_KEY = b"\x00checkpoint"  # a patient id has no control character (the contract's pattern)
PART_SEPARATOR = b"\x00"  # a part's key: the patient's key, this byte, the part's number
PART_BYTES = 768 * 1024  # a record's value stays well under the broker's message limit

_DIRTY = 1
_QUARANTINED = 2
_HEAD = b"H"
_PART = b"P"


class ChangelogError(ValueError):
    """A changelog record this code cannot read (another format, or parts that do not match)."""


@dataclass(frozen=True)
class PatientState:
    """What the changelog and the local store keep of one patient."""

    events: dict[str, str]  # the history's (source, id) key -> original JSON text, in order
    published: str | None  # the determination id last published
    dirty: bool  # admitted events not decided yet
    quarantined: bool  # deciding raised: set aside until a new event or a restore


def encode_state(state: PatientState) -> bytes:
    """A patient's state as one compressed document (the local store's value): its events'
    keys and texts joined by NUL characters, which neither can hold (a JSON text has none
    unescaped, and the contract refuses an escaped one in every string)."""
    fields = []
    for key, text in state.events.items():
        fields += (key, text)
    flags = (_DIRTY if state.dirty else 0) | (_QUARANTINED if state.quarantined else 0)
    published = (state.published or "").encode()
    head = bytes((STATE_FORMAT, flags, len(published))) + published
    return head + zlib.compress(_SEPARATOR.join(fields).encode(), 1)


@dataclass(frozen=True)
class StateHead:
    """What a patient state's head says, read without decompressing its events."""

    published: str | None
    dirty: bool
    quarantined: bool
    body_at: int  # where the compressed events begin


def state_head(document: bytes) -> StateHead:
    if len(document) < 3 or document[0] not in (STATE_FORMAT, FORMAT):
        raise ChangelogError("unknown patient state format")
    flags, length = document[1], document[2]
    published = document[3 : 3 + length].decode() or None
    return StateHead(published, bool(flags & _DIRTY), bool(flags & _QUARANTINED), 3 + length)


def decode_events(document: bytes) -> dict[str, str]:
    """A patient state's events (key -> text, in order)."""
    return _events(document, state_head(document).body_at)


def _events(document: bytes, body_at: int) -> dict[str, str]:
    body = zlib.decompress(document[body_at:])
    if document[0] == FORMAT:
        return _length_prefixed(body)
    if not body:
        return {}
    fields = iter(body.decode().split(_SEPARATOR))
    return dict(zip(fields, fields, strict=True))


def decode_state(document: bytes) -> PatientState:
    head = state_head(document)
    return PatientState(
        _events(document, head.body_at), head.published, head.dirty, head.quarantined
    )


def _length_prefixed(body: bytes) -> dict[str, str]:
    """The events of a state written in format 2 (length-prefixed keys and texts)."""
    events: dict[str, str] = {}
    position, end = 0, len(body)
    while position < end:
        key_length = int.from_bytes(body[position : position + 2], "big")
        key = body[position + 2 : position + 2 + key_length].decode()
        position += 2 + key_length
        text_length = int.from_bytes(body[position : position + 4], "big")
        events[key] = body[position + 4 : position + 4 + text_length].decode()
        position += 4 + text_length
    return events


def patient_records(
    key: bytes, document: bytes, sequence: int, limit: int = PART_BYTES
) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of one patient's state at checkpoint `sequence`: its parts
    first (when the document is bigger than `limit`), its head record last."""
    slices = [document[start : start + limit] for start in range(0, len(document), limit)] or [b""]
    tag = sequence.to_bytes(8, "big")
    records = [
        (key + PART_SEPARATOR + str(number).encode(), _PART + tag + piece)
        for number, piece in enumerate(slices[1:], start=1)
    ]
    head = _HEAD + tag + len(slices).to_bytes(4, "big") + slices[0]
    return [*records, (key, head)]


@dataclass(frozen=True)
class Marker:
    """What a checkpoint covers, per partition: written after its patients' records."""

    checkpoint_id: str  # unique: a local store checks that the changelog is the one it saw
    sequence: int  # increasing per partition (parts are matched to heads by it)
    # Per input lane (`partition.LANES`), the offset after the last record the state reflects.
    input_offsets: dict[str, int | None]
    # Per lane, the offset after the last determination published on its topic.
    determinations_offsets: dict[str, int]
    policy: str
    reevaluated_at: datetime | None  # when every patient was last re-decided for time passing

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "checkpoint_id": self.checkpoint_id,
                "sequence": self.sequence,
                "input_offsets": self.input_offsets,
                "determinations_offsets": self.determinations_offsets,
                "policy": self.policy,
                "reevaluated_at": self.reevaluated_at.isoformat() if self.reevaluated_at else None,
            }
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> Marker:
        try:
            body = json.loads(value)
            if body["format"] != FORMAT:
                raise ChangelogError("unknown checkpoint marker format")
            at = body["reevaluated_at"]
            return cls(
                body["checkpoint_id"],
                body["sequence"],
                _input_offsets(body),
                _determinations_offsets(body),
                body["policy"],
                datetime.fromisoformat(at) if at else None,
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ChangelogError("unreadable checkpoint marker") from error


def _input_offsets(body: dict) -> dict[str, int | None]:
    """A marker's input offsets; one written before the backfill lane has the live one only."""
    if "input_offsets" in body:
        found = body["input_offsets"]
        if not isinstance(found, dict) or not all(
            isinstance(lane, str) and (offset is None or type(offset) is int)
            for lane, offset in found.items()
        ):
            raise ChangelogError("unreadable checkpoint marker offsets")
        return dict(found)
    return {"live": body["input_offset"]}


def _determinations_offsets(body: dict) -> dict[str, int]:
    """A marker's determinations offsets; one written before the backfill lane, the live one."""
    found = body.get("determinations_offsets", {"live": body.get("determinations_offset")})
    if not isinstance(found, dict) or not all(
        isinstance(lane, str) and type(offset) is int for lane, offset in found.items()
    ):
        raise ChangelogError("unreadable checkpoint marker determinations offsets")
    return dict(found)


class ChangelogReader:
    """Folds a partition's changelog records, in offset order, into the latest state per patient
    and the latest marker. Documents are kept as bytes: decoded only once, at the end."""

    def __init__(self) -> None:
        self.documents: dict[bytes, bytes] = {}
        self.marker: Marker | None = None
        self.marker_offset: int | None = None  # the offset of the latest marker
        self.records = 0
        self.inconsistent = 0  # heads whose parts were missing (only possible after compaction)
        self._parts: dict[tuple[bytes, int, bytes], bytes] = {}

    def add(self, offset: int, key: bytes, value: bytes) -> None:
        self.records += 1
        if key == MARKER_KEY:
            self.marker, self.marker_offset = Marker.decode(value), offset
            return
        kind, tag, rest = value[:1], value[1:9], value[9:]
        if kind == _PART:
            base, _, number = key.rpartition(PART_SEPARATOR)
            self._parts[(base, int(number), tag)] = rest
        elif kind == _HEAD:
            count = int.from_bytes(rest[:4], "big")
            pieces = [rest[4:]]
            for number in range(1, count):
                piece = self._parts.pop((key, number, tag), None)
                if piece is None:
                    self.inconsistent += 1
                    return
                pieces.append(piece)
            self.documents[key] = b"".join(pieces)
        else:
            raise ChangelogError("unknown changelog record kind")

    def states(self) -> Iterator[tuple[bytes, PatientState]]:
        for key, document in self.documents.items():
            yield key, decode_state(document)
