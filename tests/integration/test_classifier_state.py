"""The classifier's checkpointed state on the real broker: restore from the local store and the
changelog's tail, a new owner from the whole changelog, a stale store, a replay.

`restore` is driven directly with changelogs written in multi-record batches (the local
broker's ListOffsets is short for those); the workers as `painpath classifier` processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.services import as_records
from services.classifier.changelog import (
    MARKER_KEY,
    Marker,
    PatientState,
    encode_state,
    patient_records,
)
from services.classifier.partition import offsets
from services.classifier.restore import restore
from services.classifier.store import LocalStore
from shared.kafka import end_offsets
from shared.topics import CLASSIFIER_CHANGELOG, DETERMINATIONS, DETERMINATIONS_BACKFILL
from tests.conftest import read_topic
from tests.integration.test_classifier_stream import (
    feed_lines,
    produce,
    published,
    reference,
    wait_until_consumed,
    workers,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.integration

PARTITION = 5
NOW = datetime(2026, 6, 30, tzinfo=UTC)


def state(number: int, events: int = 3, dirty: bool = False) -> PatientState:
    texts = {f"urn:x\x1fe-{number}-{n}": json.dumps({"n": n, "p": number}) for n in range(events)}
    return PatientState(texts, f"det-{number}", dirty=dirty, quarantined=False)


async def write_changelog(settings, checkpoints: list[dict[bytes, PatientState]], *, offset=0):
    """Checkpoints as a worker writes them, sent without waiting so they go in batches."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20)
    await producer.start()
    topic = CLASSIFIER_CHANGELOG.full_name(settings.kafka_topic_prefix)
    try:
        sends = []
        for sequence, patients in enumerate(checkpoints, start=1):
            for key, patient in patients.items():
                for record_key, value in patient_records(key, encode_state(patient), sequence):
                    sends.append(
                        await producer.send(topic, value, key=record_key, partition=PARTITION)
                    )
            marker = Marker(
                f"c{sequence}", sequence, offsets(offset), {"live": 0}, "default-v1", NOW
            )
            sends.append(
                await producer.send(topic, marker.encode(), key=MARKER_KEY, partition=PARTITION)
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def ends(settings) -> tuple[int, int]:
    """The changelog partition's end as ListOffsets says, and as a fetch's high-water mark (read
    in one call with an empty partition's, which must stay 0)."""
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await reader.start()
    try:
        topic = CLASSIFIER_CHANGELOG.full_name(settings.kafka_topic_prefix)
        tp, empty = TopicPartition(topic, PARTITION), TopicPartition(topic, PARTITION + 1)
        listed = (await reader.end_offsets([tp]))[tp]
        found = await end_offsets(reader, [tp, empty])
        assert found[empty] == 0
        return listed, found[tp]
    finally:
        await reader.stop()


async def run_restore(settings, store: LocalStore, committed: int | None = None):
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        prefix = settings.kafka_topic_prefix
        return (
            await restore(
                reader,
                changelog_topic=CLASSIFIER_CHANGELOG.full_name(prefix),
                determinations_topics={
                    "live": DETERMINATIONS.full_name(prefix),
                    "backfill": DETERMINATIONS_BACKFILL.full_name(prefix),
                },
                committed={PARTITION: offsets(committed)},
                stores={PARTITION: store},
                policy="default-v1",
                now=NOW,
                reevaluate_seconds=3600,
            )
        )[PARTITION]
    finally:
        await reader.stop()


async def test_a_new_owner_reads_the_whole_changelog_then_a_restart_only_its_tail(
    settings, tmp_path
):
    patients = {f"pt-{n:05d}".encode(): state(n) for n in range(600)}
    changed = {key: state(n, events=4, dirty=n % 2 == 0) for n, key in enumerate(patients)}
    changed = dict(list(changed.items())[:50])
    await write_changelog(settings, [patients, changed], offset=1800)
    listed, true_end = await ends(settings)
    assert listed < true_end == 652  # the broker's ListOffsets is short here: the case named
    store = LocalStore.open(tmp_path, "events", PARTITION)

    taken = await run_restore(settings, store, committed=1800)

    assert len(taken.patients) == 600  # every one, though the records came in batches
    assert taken.counts == {"local": 0, "changelog": 652}
    assert {len(h.raw) for k, h in taken.patients.items() if k in changed} == {4}
    assert {len(h.raw) for k, h in taken.patients.items() if k not in changed} == {3}
    assert taken.patients[b"pt-00007"].published == "det-7"
    assert taken.flagged == {k for n, k in enumerate(changed) if n % 2 == 0}
    assert taken.dirty == taken.flagged  # same policy, re-evaluated recently: only the waiting
    assert not taken.replay and taken.marker.checkpoint_id == "c2"

    again = await run_restore(settings, store, committed=1800)  # a restart of the same worker

    assert again.counts == {"local": 600, "changelog": 0}
    assert {k: h.raw for k, h in again.patients.items()} == {
        k: h.raw for k, h in taken.patients.items()
    }

    third = {b"pt-00001": state(1, events=9)}
    await write_changelog(settings, [{}, {}, third], offset=1801)  # another owner, meanwhile
    later = await run_restore(settings, store, committed=1801)
    assert later.counts["local"] == 600 and later.counts["changelog"] == 4
    assert len(later.patients[b"pt-00001"].raw) == 9
    store.close()


async def test_a_store_of_another_changelog_is_cleared_not_trusted(settings, tmp_path):
    await write_changelog(settings, [{b"pt-1": state(1)}], offset=3)
    store = LocalStore.open(tmp_path, "events", PARTITION)
    await run_restore(settings, store, committed=3)
    assert store.meta() is not None

    other = settings.model_copy(
        update={"kafka_topic_prefix": "elsewhere-" + settings.kafka_topic_prefix}
    )
    from shared.kafka import create_topics

    await create_topics(other, other.kafka_bootstrap_servers)  # a rebuilt broker: empty topics
    restored = await run_restore(other, store, committed=None)

    assert restored.patients == {} and not restored.replay
    assert store.meta() is None and list(store.documents()) == []
    store.close()


async def test_committed_offsets_without_any_checkpoint_replay_the_input(settings, tmp_path):
    store = LocalStore.open(tmp_path, "events", PARTITION)
    restored = await run_restore(settings, store, committed=250)
    assert restored.replay
    store.close()


async def test_determinations_published_after_the_checkpoint_are_known_to_the_next_owner(
    settings, tmp_path
):
    await write_changelog(settings, [{b"pt-1": state(1)}], offset=3)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    live = DETERMINATIONS.full_name(settings.kafka_topic_prefix)
    backfill = DETERMINATIONS_BACKFILL.full_name(settings.kafka_topic_prefix)

    async def publish(topic: str, key: bytes, determination_id: str, as_of: str) -> None:
        value = json.dumps({"determination_id": determination_id, "as_of": as_of}).encode()
        await producer.send_and_wait(topic, value, key=key, partition=PARTITION)

    # pt-1: the later instant wins across the lanes; in one lane, the later record.
    await publish(live, b"pt-1", "early", "2026-06-01T00:00:00Z")
    await publish(backfill, b"pt-1", "later", "2026-06-02T00:00:00Z")
    await publish(backfill, b"pt-2", "b-first", "2026-06-03T00:00:00Z")
    await publish(backfill, b"pt-2", "b-then", "2026-06-01T00:00:00Z")
    # pt-3: the same instant in both lanes, two decisions: which one counts downstream depends
    # on the order the coordinator read them, so none is taken as published.
    await publish(live, b"pt-3", "one", "2026-06-01T00:00:00Z")
    await publish(backfill, b"pt-3", "other", "2026-06-01T00:00:00Z")
    await producer.stop()
    store = LocalStore.open(tmp_path, "events", PARTITION)

    restored = await run_restore(settings, store, committed=3)

    assert restored.patients[b"pt-1"].published == "later"
    assert restored.published == {b"pt-2": "b-then", b"pt-3": None}
    assert restored.determinations_offset == {"live": 2, "backfill": 4}
    store.close()


async def test_a_worker_restarted_reads_its_local_store_and_a_new_one_the_changelog(
    settings,
    workers,
    tmp_path,  # noqa: F811
):
    """Restart: nothing from the changelog but its own marker; takeover (a fresh state folder):
    the changelog. Neither publishes a determination again, and both agree with the reference."""
    records = as_records(feed_lines(40, seed=23))
    expected, _ = reference(records)
    await produce(settings, records)
    port = workers.start(tmp_path / "first")
    workers.wait_ready()
    await wait_until_consumed(settings)
    before = await read_topic(settings, DETERMINATIONS, expected=len(expected), timeout=30)
    assert workers.stop(port) in (0, -signal.SIGTERM)

    port = workers.start(tmp_path / "first")  # the same worker, restarted
    workers.wait_ready()
    restart = workers.metric_totals("painpath_classifier_restored_records_total")
    await asyncio.sleep(3)  # time for a wrong re-publication to show
    assert restart['source="changelog"'] == 0
    assert restart['source="local"'] == len(expected)
    assert workers.stop(port) in (0, -signal.SIGTERM)

    port = workers.start(tmp_path / "second")  # a worker that never held the partitions
    workers.wait_ready()
    takeover = workers.metric_totals("painpath_classifier_restored_records_total")
    await asyncio.sleep(3)
    assert takeover['source="local"'] == 0
    assert takeover['source="changelog"'] >= len(expected)

    after = await read_topic(settings, DETERMINATIONS, expected=len(before), timeout=30)
    assert len(after) == len(before), "a restore published determinations again"
    last = {p: ds[-1] for p, ds in (await published(settings, len(expected))).items()}
    assert last == expected


async def test_a_static_member_restarted_gets_its_partitions_back_from_its_store(
    settings,
    workers,  # noqa: F811
    tmp_path,
):
    """`CLASSIFIER_GROUP_INSTANCE_ID` (static membership): the local broker accepts it, and the
    restarted member restores from its local store (what it saves in time is in bench/README)."""
    records = as_records(feed_lines(20, seed=3))
    await produce(settings, records)
    port = workers.start(tmp_path, CLASSIFIER_GROUP_INSTANCE_ID="worker-0")
    workers.wait_ready()
    await wait_until_consumed(settings)
    assert workers.stop(port) in (0, -signal.SIGTERM)

    workers.start(tmp_path, CLASSIFIER_GROUP_INSTANCE_ID="worker-0")
    workers.wait_ready()
    restored = workers.metric_totals("painpath_classifier_restored_records_total")
    assert restored['source="changelog"'] == 0 and restored['source="local"'] == 20
