"""Faults in the streaming classifier: a worker killed, poison input, workers added and removed.

Workers are real `painpath classifier` processes in one consumer group (fixed
`CLASSIFIER_AS_OF`); events are produced straight onto `pain.events.v1`, as a hospital producer
would. What the stream publishes is compared with `offline()` over the same records in the same
order: the last determination per patient (lost), a determination published twice in a row
(duplicated) and messages beyond the reference's sequence (republished). The stream decides a
batch of a patient's events at once, so it may skip intermediate determinations of the
reference (`missing_intermediate`, reported, by design); it must never publish one that is not
in the reference's sequence, nor one twice.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time

import pytest

from services.classifier.stream import GROUP
from shared import dead_letter
from shared.contract import ContractViolation, parse_event
from shared.kafka import group_lag
from shared.topics import EVENTS, EVENTS_DLQ
from tests.conftest import read_topic
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    FaultWorkers,
    Record,
    cohort,
    compare_determinations,
    offline,
    produce_paced,
    remember_keys,
    wait_for,
)
from tests.integration.test_classifier_stream import (
    as_records,
    feed_lines,
    published,
    wait_until_consumed,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# About 20,900 records, 300 patients: scenarios 1 and 3 share it (and its offline reference).
PATIENTS, SEED = 300, 31


@pytest.fixture
def workers(settings, endpoints):
    running = FaultWorkers(settings, endpoints)
    yield running
    running.stop_all()


async def test_a_worker_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(
    settings, workers, tmp_path
):
    """Two kills (each original worker once, at 30 % and 60 % of the stream), each followed by
    a restart."""
    records, reference = cohort(PATIENTS, SEED)
    remember_keys(records)
    ports = [workers.start(tmp_path / "w1"), workers.start(tmp_path / "w2")]
    workers.wait_ready()
    topic = EVENTS.full_name(settings.kafka_topic_prefix)

    feeding = asyncio.create_task(
        produce_paced(settings.kafka_bootstrap_servers, topic, records, per_second=2500)
    )
    kills = []
    first_kill = None
    for number, (share, victim) in enumerate(zip((0.3, 0.6), reversed(ports), strict=True)):
        # Kill a worker while it is busy: it has processed records and the stream goes on.
        await wait_for(
            lambda share=share, victim=victim: (
                sum(workers.processed().values()) >= share * len(records)
                and workers.processed().get(victim, 0) > 0
            ),
            timeout=180,
            what=f"{share:.0%} of the records processed",
            interval=0.1,
        )
        done_by_victim = workers.processed().get(victim, 0)
        killed_at = time.monotonic()
        first_kill = first_kill or killed_at
        workers.kill(victim)
        await asyncio.sleep(1)
        restarted = workers.start(tmp_path / f"w{number + 3}")
        ready = await asyncio.to_thread(workers.wait_ready_one, restarted)
        kills.append(
            {"victim_had_processed": int(done_by_victim), "restart_ready_s": round(ready, 1)}
        )
    await feeding
    await wait_until_consumed(settings, timeout=300)
    recovered = time.monotonic() - first_kill

    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    report_figures(
        "classifier_worker_sigkill",
        events=len(records),
        kills=kills,
        recovery_s=round(recovered, 1),
        **figures,
    )
    for port, process in workers.processes.items():
        assert process.poll() is None and not workers.crashed(port)
    assert figures["lost"] == figures["duplicated"] == figures["republished"] == 0


def poison(rng: random.Random, valid: list[Record], count: int) -> list[tuple[int, Record, str]]:
    """Hostile records of every kind, each with the index of the valid record it must follow
    (-1: anywhere) and its kind. `far_future` records are valid and must be classified."""
    events = []
    for index, (_, value) in enumerate(valid):
        try:
            parse_event(value)
        except ContractViolation:
            continue
        events.append((index, json.loads(value)))
    kinds = [
        "random_bytes",
        "truncated_json",
        "huge_invalid",
        "wrong_type",
        "unknown_type",
        "conflicting_duplicate",
        "key_mismatch",
        "far_future",
        "not_utf8",
        "nan",
    ]
    hostile = []
    for number in range(count):
        kind = kinds[number % len(kinds)]
        index, original = rng.choice(events)
        event = json.loads(json.dumps(original))
        key = str(event["data"]["patient_id"]).encode()
        after = -1
        if kind == "random_bytes":
            value = rng.randbytes(rng.randint(1, 400))
        elif kind == "truncated_json":
            text = json.dumps(event)
            value = text[: rng.randint(1, len(text) - 2)].encode()
        elif kind == "huge_invalid":  # ~500 KB: a string where the contract wants a number
            event["data"]["score"] = "9" * 500_000
            event["type"] = "pain.score.recorded.v1"
            event["id"] = f"poison-huge-{number}"
            value = json.dumps(event).encode()
        elif kind == "wrong_type":
            event["data"]["patient_id"] = 12345
            value = json.dumps(event).encode()
        elif kind == "unknown_type":
            event["type"] = "pain.mood.recorded.v1"
            value = json.dumps(event).encode()
        elif kind == "conflicting_duplicate":  # after its original, so that the original wins
            event["time"] = "2020-01-01T00:00:00Z"
            event["data"]["poison"] = number
            value, after = json.dumps(event).encode(), index
        elif kind == "key_mismatch":
            value, key = json.dumps(event).encode(), b"not-the-patient"
        elif kind == "far_future":  # valid: counted from its time on, so not yet
            event = {
                "specversion": "1.0",
                "id": f"poison-future-{number}",
                "source": "urn:hospital:st-olaf:ehr",
                "type": "pain.score.recorded.v1",
                "time": f"{rng.randint(2100, 9999)}-01-01T00:00:00Z",
                "data": {"patient_id": key.decode(), "score": rng.randint(0, 10)},
            }
            value = json.dumps(event).encode()
        elif kind == "not_utf8":
            value = json.dumps(event).encode().replace(b'"data"', b'"d\xffta"', 1)
        else:
            value = json.dumps(event).replace('"specversion"', '"x": NaN, "specversion"').encode()
        hostile.append((after, (key, value), kind))
    return hostile


async def test_poison_interleaved_with_valid_events_is_dead_lettered_and_stops_nothing(
    settings, workers, tmp_path
):
    rng = random.Random(61)
    valid = as_records(feed_lines(patients=148, seed=62))  # about 10,000 records
    remember_keys(valid)
    hostile = poison(rng, valid, 1000)
    slots: dict[int, list[tuple[Record, str]]] = {}
    for after, record, kind in hostile:
        slot = rng.randrange(max(after + 1, 0), len(valid) + 1)
        slots.setdefault(slot, []).append((record, kind))
    records: list[Record] = []
    kinds: list[str] = []
    for index in range(len(valid) + 1):
        for record, kind in slots.get(index, []):
            records.append(record)
            kinds.append(kind)
        if index < len(valid):
            records.append(valid[index])
            kinds.append("valid")
    reference = offline(records)
    dead = set(reference.dead)
    hostile_dead = [i for i in reference.dead if kinds[i] != "valid"]
    not_dead = [i for i, kind in enumerate(kinds) if kind not in ("valid", "far_future")]
    # Each hostile record (except the valid far-future ones) is a dead letter by the reference.
    assert [i for i in not_dead if i not in dead] == []
    assert [i for i, kind in enumerate(kinds) if kind == "far_future" and i in dead] == []

    worker = workers.start(tmp_path / "w1")
    workers.wait_ready()
    started = time.monotonic()
    topic = EVENTS.full_name(settings.kafka_topic_prefix)
    await produce_paced(settings.kafka_bootstrap_servers, topic, records, per_second=5000)
    await wait_until_consumed(settings, timeout=240)
    elapsed = time.monotonic() - started

    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    letters = await read_topic(settings, EVENTS_DLQ, expected=len(dead), timeout=30)
    expected_letters = sorted((records[i][0], records[i][1]) for i in dead)
    got_letters = sorted((r.key, r.value) for r in letters)
    without_reason = [
        r.offset
        for r in letters
        if not dict(r.headers).get(dead_letter.REASON)
        or not dict(r.headers).get(dead_letter.FIELD)
        or dict(r.headers).get(dead_letter.ORIGINAL_TOPIC) != topic.encode()
        or dict(r.headers).get(dead_letter.ORIGINAL_OFFSET) is None
    ]
    counted = workers.metric_totals("painpath_classifier_events_total")
    alive = workers.processes[worker].poll() is None
    crashed = workers.crashed(worker)
    lost_letters = len(set(expected_letters) - set(got_letters))
    unexpected_letters = len(got_letters) - len(expected_letters) + lost_letters
    report_figures(
        "classifier_poison",
        events=len(records),
        valid=len(valid),
        hostile=len(hostile),
        far_future_classified=sum(1 for k in kinds if k == "far_future"),
        dead_letters=len(letters),
        dead_letters_expected=len(dead),
        hostile_dead_lettered=len(hostile_dead),
        dead_letters_lost=lost_letters,
        dead_letters_unexpected=unexpected_letters,
        dead_letters_without_reason=len(without_reason),
        worker_alive=alive,
        worker_crashed=crashed,
        consumed_s=round(elapsed, 1),
        **figures,
    )
    assert alive and not crashed
    assert figures["lost"] == figures["duplicated"] == figures["republished"] == 0
    assert counted['outcome="new"'] == reference.admitted  # every valid event classified
    assert counted['outcome="duplicate"'] == reference.duplicates
    assert counted['outcome="dead_letter"'] == len(dead)
    assert got_letters == expected_letters
    assert without_reason == []


async def test_a_worker_added_then_one_removed_mid_stream_moves_state_with_partitions(
    settings, workers, tmp_path
):
    records, reference = cohort(PATIENTS, SEED)
    remember_keys(records)
    first = workers.start(tmp_path / "w1")
    leaving = workers.start(tmp_path / "w2")
    workers.wait_ready()
    topic = EVENTS.full_name(settings.kafka_topic_prefix)

    feeding = asyncio.create_task(
        produce_paced(settings.kafka_bootstrap_servers, topic, records, per_second=1200)
    )
    await wait_for(
        lambda: sum(workers.processed().values()) >= 0.25 * len(records),
        timeout=120,
        what="25 % processed",
    )
    added_at = time.monotonic()
    joining = workers.start(tmp_path / "w3")
    join_ready = await asyncio.to_thread(workers.wait_ready_one, joining)
    await wait_for(
        lambda: workers.processed().get(joining, 0) > 0,
        timeout=120,
        what="the third worker processing records",
    )
    joined_after = time.monotonic() - added_at
    await wait_for(
        lambda: sum(workers.processed().values()) >= 0.6 * len(records),
        timeout=180,
        what="60 % processed",
    )
    by_worker = workers.processed()
    removed_at = time.monotonic()
    stopped = await asyncio.to_thread(workers.stop, leaving)
    await feeding
    await wait_until_consumed(settings, timeout=300)
    settled = time.monotonic() - removed_at

    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    report_figures(
        "classifier_scale_out_and_in",
        events=len(records),
        processed_before_removal={str(p): int(n) for p, n in by_worker.items()},
        join_ready_s=round(join_ready, 1),
        joined_processing_after_s=round(joined_after, 1),
        settled_after_removal_s=round(settled, 1),
        **figures,
    )
    assert stopped == 0 or stopped == -15
    assert by_worker.get(joining, 0) > 0 and by_worker.get(leaving, 0) > 0
    for port in (first, joining):
        assert workers.processes[port].poll() is None and not workers.crashed(port)
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["republished"] == 0


async def test_a_worker_paused_beyond_its_session_timeout_then_resumed_loses_nothing(
    settings, workers, tmp_path
):
    """A worker frozen (SIGSTOP) for longer than its session timeout while busy, as in a long
    GC or VM pause, then resumed (SIGCONT): its partitions moved while it slept."""
    records, reference = cohort(PATIENTS, SEED)
    remember_keys(records)
    workers.start(tmp_path / "w1")
    paused = workers.start(tmp_path / "w2")
    workers.wait_ready()
    topic = EVENTS.full_name(settings.kafka_topic_prefix)
    feeding = asyncio.create_task(
        produce_paced(settings.kafka_bootstrap_servers, topic, records, per_second=2500)
    )
    await wait_for(
        lambda: (
            sum(workers.processed().values()) >= 0.3 * len(records)
            and workers.processed().get(paused, 0) > 0
        ),
        timeout=180,
        what="30 % of the records processed",
        interval=0.1,
    )
    process = workers.processes[paused]
    process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(12)  # twice the session timeout: the group moves its partitions
    process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    await feeding
    group = f"{settings.kafka_topic_prefix}{GROUP}"
    lag = None
    while time.monotonic() - resumed_at < 120:
        lag = await group_lag(settings, settings.kafka_bootstrap_servers, group, EVENTS)
        if lag == 0:
            break
        await asyncio.sleep(1)
    recovered = time.monotonic() - resumed_at
    processed = sum(workers.processed().values())

    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    report_figures(
        "classifier_paused_beyond_session_timeout",
        events=len(records),
        paused_s=12,
        recovery_s=round(recovered, 1),
        uncommitted_after_120s=lag,
        processed_by_workers=int(processed),
        paused_worker_alive=process.poll() is None,
        **figures,
    )
    assert figures["lost"] == figures["duplicated"] == figures["republished"] == 0
    assert lag == 0
