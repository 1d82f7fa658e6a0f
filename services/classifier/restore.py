"""Rebuilding an assigned partition's state: local store, changelog tail, determinations tail.

For each partition, all read at once by one reader outside the group:

1. **The local store** (`store.LocalStore`), if it has a checkpoint: its patients, and the
   changelog offset after its marker. The changelog's record just before that offset must be
   that very marker (its `checkpoint_id`): otherwise the store belongs to another changelog (a
   rebuilt broker, a re-created topic) and is cleared.
2. **The changelog** from there to its end (the fetch's high-water mark: the local broker's
   ListOffsets is short, see `shared.kafka.end_offsets`; the ends of the changelog and of both
   determinations topics are taken once, together, when the restore begins): the whole
   changelog for a worker that never held the partition, usually nothing for one that
   restarts. The latest record of each patient wins. What was read is written to the local
   store. Each patient's events stay compressed until its history is first used.
3. **The determinations** published after the last checkpoint (from its marker's offset): what
   a worker published and then died before checkpointing is known, so it is not published again.
4. **Who is decided again**: the patients that waited for a decision or were set aside at the
   checkpoint; every patient when the policy changed or the last re-evaluation for time passing
   is older than `CLASSIFIER_REEVALUATE_SECONDS`.

When a partition has no checkpoint at all while the group has committed input offsets for it
(the changelog was lost, or the state was kept in an older format), or has committed offsets of
a lane past its checkpoint's, its state cannot be known: both lanes of the input partition are
replayed from their first offsets (admission is idempotent, and what was published is read back,
so nothing is published twice).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.classifier.changelog import (
    ChangelogError,
    ChangelogReader,
    Marker,
    decode_events,
    state_head,
)
from services.classifier.history import PatientHistory
from services.classifier.partition import LANES, Offsets, PartitionState
from services.classifier.store import LocalStore, Meta
from shared.kafka import end_offsets
from shared.logging import get_logger
from shared.loop_stall import TimeSlice

log = get_logger("painpath.classifier.restore")


@dataclass
class Restored:
    """One partition's state as rebuilt."""

    patients: dict[bytes, PatientHistory] = field(default_factory=dict)
    dirty: set[bytes] = field(default_factory=set)  # to decide again
    flagged: set[bytes] = field(default_factory=set)  # waiting or set aside at the checkpoint
    marker: Marker | None = None  # the last checkpoint's
    # Per lane, after the last determination published on that lane's topic.
    determinations_offset: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    replay: bool = False  # no checkpoint, yet offsets committed: read both lanes from 0
    # What was published for patients not restored (a replay): applied when they are admitted.
    published: dict[bytes, str] = field(default_factory=dict)
    reevaluate_all: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # records read, by source


async def read_partitions(
    reader: AIOKafkaConsumer, topic: str, starts: dict[int, int], end: dict[TopicPartition, int]
) -> AsyncIterator[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of `topic`'s records from each partition's start offset to
    its `end` offset (`shared.kafka.end_offsets`), in order within a partition. `reader` is
    outside any group; its assignment is replaced."""
    tps = {TopicPartition(topic, partition): start for partition, start in starts.items()}
    reading = [tp for tp, start in tps.items() if start < end[tp]]
    reader.assign(reading)
    for tp in reading:
        reader.seek(tp, tps[tp])
    while reading:
        batches = await reader.getmany(*reading, timeout_ms=500, max_records=10_000)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= end[tp]:
                    break
                yield tp.partition, record.offset, record.key, record.value
        reading = [tp for tp in reading if await reader.position(tp) < end[tp]]


async def restore(
    reader: AIOKafkaConsumer,
    *,
    changelog_topic: str,
    determinations_topics: dict[str, str],
    committed: dict[int, Offsets],
    stores: dict[int, LocalStore],
    policy: str,
    now: datetime,
    reevaluate_seconds: float,
) -> dict[int, Restored]:
    """Each partition of `committed` (its group offsets, per lane) rebuilt; see the module's
    docstring."""
    metas: dict[int, Meta | None] = {p: stores[p].meta() for p in committed}
    # Every topic's end at once: one ListOffsets and one fetch, not one of each per topic.
    end = await end_offsets(
        reader,
        [
            TopicPartition(topic, partition)
            for topic in (changelog_topic, *determinations_topics.values())
            for partition in committed
        ],
    )
    tails = await _read_changelog(reader, changelog_topic, metas, end)
    stale = [p for p, tail in tails.items() if tail is None]
    for partition in stale:
        log.warning("local_store_not_of_this_changelog", partition=partition)
        stores[partition].clear()
        metas[partition] = None
    if stale:
        tails |= await _read_changelog(reader, changelog_topic, dict.fromkeys(stale), end)
    results: dict[int, Restored] = {}
    for partition, tail in tails.items():
        assert tail is not None  # a store without a checkpoint cannot be stale
        results[partition] = await _rebuild(
            stores[partition], metas[partition], tail, committed[partition]
        )
    await _read_determinations(reader, determinations_topics, results, end)
    for restored in results.values():
        marker = restored.marker
        restored.reevaluate_all = (
            marker is None
            or marker.policy != policy
            or marker.reevaluated_at is None
            or (now - marker.reevaluated_at).total_seconds() >= reevaluate_seconds
        )
        if restored.reevaluate_all:
            restored.dirty = set(restored.patients)
    return results


async def _read_determinations(
    reader: AIOKafkaConsumer,
    topics: dict[str, str],
    results: dict[int, Restored],
    end: dict[TopicPartition, int],
) -> None:
    """What was published since the checkpoint, on each lane's determinations topic: each
    patient's last one (of both lanes, the one as of the later instant) is its published one.
    When the lanes' last ones are as of the same instant and differ, which one the coordinator
    follows depends on the order it read them: none is taken as published, so the patient's
    decision is published again (a repeat changes nothing downstream)."""
    last: dict[str, dict[int, dict[bytes, tuple[datetime, str]]]] = {}
    for lane, topic in topics.items():
        last[lane] = of_lane = {p: {} for p in results}
        starts = {p: r.determinations_offset.get(lane, 0) for p, r in results.items()}
        async for partition, offset, key, value in read_partitions(reader, topic, starts, end):
            restored = results[partition]
            restored.determinations_offset[lane] = offset + 1
            restored.counts["determinations"] = restored.counts.get("determinations", 0) + 1
            body = json.loads(value)  # a topic's later record is published after its earlier
            of_lane[partition][key] = (_instant(body.get("as_of")), body["determination_id"])
    for partition, restored in results.items():
        found: dict[bytes, tuple[datetime, str | None]] = {}
        for of_lane in last.values():
            for key, (as_of, determination_id) in of_lane[partition].items():
                other = found.get(key)
                if other is None or as_of > other[0]:
                    found[key] = (as_of, determination_id)
                elif as_of == other[0] and determination_id != other[1]:
                    found[key] = (as_of, None)
        for key, (_, determination_id) in found.items():
            history = restored.patients.get(key)
            if history is not None:
                history.published = determination_id
            else:
                restored.published[key] = determination_id


def _instant(value: object) -> datetime:
    """A determination's `as_of` (the earliest instant when unreadable: never the later one)."""
    try:
        found = datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return found if found.tzinfo else found.replace(tzinfo=UTC)


async def _read_changelog(
    reader: AIOKafkaConsumer,
    topic: str,
    metas: dict[int, Meta | None],
    end: dict[TopicPartition, int],
) -> dict[int, ChangelogReader | None]:
    """Each partition's changelog from its store's checkpoint (None: the store is stale)."""
    starts = {p: meta.changelog_offset - 1 if meta else 0 for p, meta in metas.items()}
    tails: dict[int, ChangelogReader | None] = {p: ChangelogReader() for p in metas}
    checked = {p: meta is None for p, meta in metas.items()}
    async for partition, offset, key, value in read_partitions(reader, topic, starts, end):
        tail = tails[partition]
        if tail is None:
            continue
        if not checked[partition]:
            checked[partition] = True
            meta = metas[partition]
            try:
                mine = Marker.decode(value).checkpoint_id == meta.marker.checkpoint_id
            except ChangelogError:
                mine = False
            if offset != starts[partition] or not mine:
                tails[partition] = None
            continue  # the store's own marker: already applied
        tail.add(offset, key, value)
    for partition, done in checked.items():
        if not done:  # the changelog ends before the store's checkpoint
            tails[partition] = None
    return tails


async def _rebuild(
    store: LocalStore, meta: Meta | None, tail: ChangelogReader, committed: Offsets
) -> Restored:
    documents = dict(store.documents()) if meta is not None else {}
    local = len(documents)
    documents.update(tail.documents)
    marker = tail.marker or (meta.marker if meta else None)
    restored = Restored(marker=marker)
    restored.counts = {"local": local, "changelog": tail.records}
    if tail.inconsistent:
        log.error("changelog_parts_missing", patients=tail.inconsistent)
    if marker is None and any(offset for offset in committed.values()) or tail.inconsistent:
        restored.replay = True
    elif marker is not None and any(
        offset is not None and offset > (marker.input_offsets.get(lane) or 0)
        for lane, offset in committed.items()
    ):
        restored.replay = True  # offsets committed past every checkpoint: the state was lost
    if restored.replay:
        store.clear()
        return restored
    if tail.marker is not None:
        store.write(tail.documents, Meta(tail.marker, tail.marker_offset + 1))
    if marker is not None:
        restored.determinations_offset |= marker.determinations_offsets
    slices = TimeSlice()
    for key, document in documents.items():
        await slices.pause()
        head = state_head(document)  # the events are decoded on the history's first use
        history = PatientHistory(published=head.published, load=partial(decode_events, document))
        restored.patients[key] = history
        if head.dirty or head.quarantined:
            restored.flagged.add(key)
    restored.dirty = set(restored.flagged)
    return restored


async def assign(
    committed: dict[int, Offsets],
    *,
    options: dict[str, object],
    state_dir: Path,
    events_topic: str,
    changelog_topic: str,
    determinations_topics: dict[str, str],
    policy: str,
    reevaluate_seconds: float,
) -> tuple[dict[int, PartitionState], dict[int, Restored]]:
    """The assigned partitions (with their group offsets per lane) restored: their local stores
    opened,
    `restore` run by one reader for all of them, each partition's in-memory state."""
    started = time.monotonic()
    stores = {p: LocalStore.open(state_dir, events_topic, p) for p in committed}
    # "earliest": should a topic's first records ever be gone (compaction, retention changed
    # by hand), read from the first one kept, never silently from the end.
    reader = AIOKafkaConsumer(
        **options, enable_auto_commit=False, fetch_max_wait_ms=50, auto_offset_reset="earliest"
    )
    await reader.start()
    now = datetime.now(UTC)  # the instant the re-evaluation is judged at, and recorded as
    try:
        restored = await restore(
            reader,
            changelog_topic=changelog_topic,
            determinations_topics=determinations_topics,
            committed=committed,
            stores=stores,
            policy=policy,
            now=now,
            reevaluate_seconds=reevaluate_seconds,
        )
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    finally:
        await reader.stop()
    states = {}
    for partition, result in restored.items():
        offset = committed[partition]
        states[partition] = PartitionState(
            patients=result.patients,
            next_offset=dict.fromkeys(LANES, 0) if result.replay else dict(offset),
            committed=dict(offset),
            store=stores[partition],
            changed=set(result.flagged),  # decided, they are written again without the flag
            sequence=result.marker.sequence if result.marker else 0,
            determinations_offset=dict(result.determinations_offset),
            checkpointed=None if result.replay else dict(offset),
            reevaluated_at=now if result.reevaluate_all else result.marker.reevaluated_at,
            published_before=result.published,
        )
        if result.replay:
            log.warning("partition_replayed_from_start", partition=partition)
        log.info(
            "partition_restored",
            partition=partition,
            patients=len(result.patients),
            dirty=len(result.dirty),
            replay=result.replay,
            seconds=round(time.monotonic() - started, 3),
            **{f"{source}_records": count for source, count in result.counts.items()},
        )
    return states, restored
