"""The local store: one RocksDB database per owned partition (through `rocksdict`).

It holds what the changelog holds, materialised: each patient's latest state document (see
`changelog`) and the marker of the last checkpoint written, with the changelog offset after it.
A worker that restarts, or gets back a partition it held, reads its local store and then only the
changelog's tail past that offset; a worker that never held the partition starts from an empty
store and reads the whole changelog.

Databases live under `CLASSIFIER_STATE_DIR` (default `$PAINPATH_STATE_DIR/classifier-state`),
one folder per (input topic, partition), so the workers of one machine can share the folder, as
Kafka Streams' state directory: the group gives each partition to one of them, and RocksDB's own
lock keeps a second process out. A worker that finds a partition's database locked (its previous
owner, paused past its session timeout, still has it open) uses a private folder of its own,
removed when it closes, and restores that partition from the changelog.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict, WriteBatch

from services.classifier.changelog import FORMAT, Marker
from shared.logging import get_logger

log = get_logger("painpath.classifier.store")

_PATIENT = b"p"  # patient keys: this byte, then the patient's key
_META = b"m"
WRITE_BUFFER_BYTES = 4 * 1024 * 1024  # per partition: 12 partitions must not cost a GB of memtables
BLOCK_CACHE_BYTES = 16 * 1024 * 1024  # one cache for all the process's stores
_cache: Cache | None = None


@dataclass(frozen=True)
class Meta:
    """The last checkpoint a store holds: its marker and the changelog offset after it."""

    marker: Marker
    changelog_offset: int  # the offset after the marker's record

    def encode(self) -> bytes:
        return (
            json.dumps({"format": FORMAT, "changelog_offset": self.changelog_offset}).encode()
            + b"\n"
            + self.marker.encode()
        )

    @classmethod
    def decode(cls, value: bytes) -> Meta:
        head, _, marker = value.partition(b"\n")
        body = json.loads(head)
        if body.get("format") != FORMAT:
            raise ValueError("unknown local store format")
        return cls(Marker.decode(marker), body["changelog_offset"])


def _options() -> Options:
    global _cache
    if _cache is None:
        _cache = Cache(BLOCK_CACHE_BYTES)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(_cache)
    options.set_block_based_table_factory(table)
    return options


class LocalStore:
    """One partition's database."""

    def __init__(self, path: Path, private: bool = False):
        self.path = path
        self.private = private  # a folder of this process only: removed on close
        self._db: Rdict | None = Rdict(str(path), _options(), access_type=AccessType.read_write())

    @classmethod
    def open(cls, root: Path, topic: str, partition: int) -> LocalStore:
        path = root / topic / str(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return cls(path)
        except Exception as error:  # rocksdict raises a plain Exception naming the lock
            if "lock" not in str(error).lower():
                raise
        private = path.with_name(f"{partition}.{os.getpid()}")
        shutil.rmtree(private, ignore_errors=True)
        log.warning("local_store_locked_using_private", partition=partition)
        return cls(private, private=True)

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError("the local store is closed")
        return self._db

    def meta(self) -> Meta | None:
        value = self.db.get(_META)
        if value is None:
            return None
        try:
            return Meta.decode(value)
        except (ValueError, KeyError, TypeError):
            log.warning("local_store_meta_unreadable", path=self.path.name)
            return None

    def documents(self) -> Iterator[tuple[bytes, bytes]]:
        """(patient key, state document) of every patient, in key order."""
        for key, value in self.db.items(from_key=_PATIENT):
            if not key.startswith(_PATIENT):
                break
            yield key[1:], value

    def write(self, documents: dict[bytes, bytes], meta: Meta) -> None:
        """The patients' documents and the checkpoint's meta, atomically."""
        batch = WriteBatch(raw_mode=True)
        for key, document in documents.items():
            batch.put(_PATIENT + key, document)
        batch.put(_META, meta.encode())
        self.db.write(batch)

    def clear(self) -> None:
        """Forget everything (the store belongs to another changelog: a rebuilt broker)."""
        self.db.delete_range(b"\x00", b"\xff")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)
