"""Records the classifier refuses, sent straight to `pain.events.v1` by a producer that skips the
gateway: a 2 MiB value (a raised `max_request_size`), a record on another partition than its
key's, a missing key, a wrong key, a 600 KiB value.

A real `painpath classifier` worker and a real `painpath coordinator` consume them among a
simulated feed. Scenarios (one run, three reports):
- `oversized_record`: the worker dead-letters the 2 MiB record (its first 64 KiB, size and
  sha256) and goes on: no exit, no restart;
- `wrong_partition`: the record off its key's partition is a dead letter naming it, and the
  patient's determination is the reference's without it;
- `refused_record_timeline`: the coordinator's timeline keeps exactly the events the
  classifier admits, and counts the rest `refused`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.coordinator.app import TIMELINE_GROUP
from shared import dead_letter
from shared.contract.records import Rejection, partition_of, read_record
from shared.kafka import group_lag
from shared.topics import EVENTS, EVENTS_DLQ
from tests.conftest import read_topic
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    FaultWorkers,
    Record,
    ServiceProcess,
    compare_determinations,
    http_status,
    metric_totals,
    offline,
    remember_keys,
    service_env,
    wait_for,
)
from tests.integration.test_classifier_stream import (
    as_records,
    feed_lines,
    published,
    wait_until_consumed,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PARTITIONS = EVENTS.partitions


def refused_records(valid: list[Record]) -> dict[str, tuple[Record, int | None]]:
    """Each refused record by name, with the partition it is sent to (None: the producer's)."""
    key, value = next((k, v) for k, v in valid if not isinstance(read_record(k, v), Rejection))
    event = json.loads(value)

    def variant(name: str, **extra) -> bytes:
        return json.dumps(event | {"id": f"refused-{name}"} | extra).encode()

    home = partition_of(key, PARTITIONS)
    return {
        "oversized": ((key, variant("oversized", padding="x" * (2 * 1024 * 1024))), None),
        "wrong_partition": ((key, variant("wrong-partition")), (home + 1) % PARTITIONS),
        "missing_key": ((None, variant("missing-key")), None),
        "wrong_key": ((b"pt-not-this-patient", variant("wrong-key")), None),
        "600_kib": ((key, variant("600-kib", padding="x" * (600 * 1024))), None),
    }


async def produce(bootstrap: str, topic: str, sends: list[tuple[Record, int | None]]) -> None:
    # A producer of its own, as a hospital system writing to Kafka directly might configure it.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for number, ((key, value), partition) in enumerate(sends, 1):
            await producer.send(topic, key=key, value=value, partition=partition)
            if number % 100 == 0:  # about 400 records a second: a live feed, sampled meanwhile
                await asyncio.sleep(0.25)
        await producer.flush()
    finally:
        await producer.stop()


async def test_refused_records_are_dead_letters_that_fit_and_never_reach_the_timeline(
    settings, endpoints, tmp_path
):
    valid = as_records(feed_lines(patients=20, seed=71))
    remember_keys(valid)
    refused = refused_records(valid)
    half = len(valid) // 2
    sends = [
        *((record, None) for record in valid[:half]),
        *refused.values(),
        *((record, None) for record in valid[half:]),
    ]
    # The reference: the feed without the refused records (each a dead letter; `offline` reads
    # no partition, so the one off its key's partition is left out of its input, not judged).
    reference = offline(valid)
    admitted_ids = {
        (read[0].patient_id, read[0].source, read[0].id)
        for key, value in valid
        if not isinstance(read := read_record(key, value), Rejection)
    }
    database_url = endpoints.database_url
    prefix = settings.kafka_topic_prefix
    workers = FaultWorkers(settings, endpoints)
    coordinator = ServiceProcess(
        "coordinator",
        service_env(settings.kafka_bootstrap_servers, database_url, prefix, tmp_path / "c"),
        "coordinator-refused",
    )
    worker = workers.start(tmp_path / "w1")
    coordinator.start()
    samples: list[tuple[int | None, int | None, int | None]] = []
    try:
        workers.wait_ready()
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            topic = EVENTS.full_name(prefix)
            started = time.monotonic()
            feeding = asyncio.create_task(produce(settings.kafka_bootstrap_servers, topic, sends))
            timeline_group = f"{prefix}{TIMELINE_GROUP}"

            async def consumed() -> bool:
                samples.append(
                    (
                        await http_status(client, f"http://127.0.0.1:{worker}/readyz"),
                        await http_status(client, f"http://127.0.0.1:{worker}/healthz"),
                        await coordinator.readiness(client),
                    )
                )
                if not feeding.done():
                    return False
                lag = await group_lag(
                    settings, settings.kafka_bootstrap_servers, timeline_group, EVENTS
                )
                return lag == 0

            await wait_for(consumed, 240, "the coordinator's timeline consumer caught up", 0.5)
            await wait_until_consumed(settings, timeout=240)
            consumed_s = time.monotonic() - started
            coordinator_counts = metric_totals(
                (await client.get(coordinator.url("/metrics"))).text,
                "painpath_coordinator_events_total",
            )
        worker_alive = workers.processes[worker].poll() is None
        counted = workers.metric_totals("painpath_classifier_events_total")
        crashed = workers.crashed(worker)
    finally:
        workers.stop_all()
        coordinator.stop()

    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    dead_expected = len(reference.dead) + len(refused)
    letters = await read_topic(settings, EVENTS_DLQ, expected=dead_expected, timeout=30)
    by_id = {}  # the refused records' dead letters, by the id each was sent with
    for letter in letters:
        found = re.search(rb'"id": "(refused-[a-z0-9-]+)"', (letter.value or b"")[:4096])
        if found:
            by_id[found.group(1).decode()] = (letter, dict(letter.headers))
    connection = await asyncpg.connect(database_url)
    try:
        kept = {
            tuple(row)
            for row in await connection.fetch(
                "SELECT patient_id, source, event_id FROM patient_events"
            )
        }
    finally:
        await connection.close()

    oversized_value = refused["oversized"][0][1]
    oversized, oversized_headers = by_id.get("refused-oversized", (None, {}))
    wrong, wrong_headers = by_id.get("refused-wrong-partition", (None, {}))
    ready_during = samples
    readiness_figures = {
        "classifier_readyz_200_samples": sum(1 for s in ready_during if s[0] == 200),
        "classifier_healthz_200_samples": sum(1 for s in ready_during if s[1] == 200),
        "coordinator_readyz_200_samples": sum(1 for s in ready_during if s[2] == 200),
        "samples": len(ready_during),
    }
    lost = reference.admitted - int(counted.get('outcome="new"', 0))
    report_figures(
        "oversized_record",
        value_bytes=len(oversized_value),
        dead_letter_bytes=None if oversized is None else len(oversized.value),
        dead_letter_truncated=oversized_headers.get(dead_letter.VALUE_TRUNCATED) == b"true",
        dead_letter_size_header=int(oversized_headers.get(dead_letter.VALUE_SIZE, b"0")),
        dead_letter_sha256_matches=oversized_headers.get(dead_letter.VALUE_SHA256)
        == hashlib.sha256(oversized_value).hexdigest().encode(),
        dead_letter_kind=oversized_headers.get(dead_letter.KIND, b"").decode(),
        worker_alive=worker_alive,
        worker_crashed=crashed,
        lost=lost,
        duplicated=figures["duplicated"] + figures["republished"],
        stale=figures["lost"],
        consumed_s=round(consumed_s, 1),
        **readiness_figures,
    )
    report_figures(
        "wrong_partition",
        dead_letter_kind=wrong_headers.get(dead_letter.KIND, b"").decode(),
        dead_letter_reason=wrong_headers.get(dead_letter.REASON, b"").decode(),
        dead_letters=len(letters),
        dead_letters_expected=dead_expected,
        lost=lost,
        duplicated=figures["duplicated"] + figures["republished"],
        stale=figures["lost"],
        kept_by_the_timeline=any(e == "refused-wrong-partition" for *_, e in kept),
        **readiness_figures,
    )
    # The feed's own bad lines are refused too (its conflicts are the timeline's `conflict`).
    refused_expected = len(refused) + sum(
        1 for key, value in valid if isinstance(read_record(key, value), Rejection)
    )
    kept_refused = sorted(event_id for *_, event_id in kept if event_id.startswith("refused-"))
    report_figures(
        "refused_record_timeline",
        refused_records=len(refused),
        timeline_events=len(kept),
        timeline_events_expected=len(admitted_ids),
        timeline_refused_counted=int(coordinator_counts.get('result="refused"', 0)),
        timeline_refused_expected=refused_expected,
        refused_kept_by_the_timeline=kept_refused,
        lost=len(admitted_ids - kept),
        duplicated=0,  # (source, id) is the table's key: a second copy cannot be kept
        stale=len(kept - admitted_ids),
        **readiness_figures,
    )
    assert worker_alive and not crashed
    assert lost == 0 and figures["lost"] == figures["duplicated"] == figures["republished"] == 0
    assert len(letters) == dead_expected
    assert oversized is not None and oversized.value == oversized_value[:65536]
    assert oversized_headers[dead_letter.KIND] == b"size"
    assert oversized_headers[dead_letter.VALUE_SIZE] == str(len(oversized_value)).encode()
    assert wrong is not None and wrong_headers[dead_letter.KIND] == b"partition"
    assert wrong_headers[dead_letter.REASON].startswith(b"partition: the record is on partition")
    assert kept == admitted_ids and kept_refused == []
    assert coordinator_counts.get('result="refused"', 0) == refused_expected
    assert readiness_figures["classifier_healthz_200_samples"] == len(ready_during)
