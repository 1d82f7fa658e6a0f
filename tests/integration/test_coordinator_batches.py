"""The coordinator applies each fetched batch in one transaction, idempotent by content.

Against the real broker and PostgreSQL: a batch gives what its records give one by one; a batch
delivered again changes nothing; a topic re-created (offsets from 0 again) with new
determinations is applied; a record the database refuses loses none of its batch; a connection
lost mid-batch is retried.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import date, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from services.coordinator.consumer import BatchConsumer, Outcome
from services.coordinator.scheduling import load_roster
from services.coordinator.service import Coordinator
from services.coordinator.store import PLANNING_LOCK
from services.coordinator.templates import load_templates
from shared.contract import AssessmentPart, Classification, Determination, Status
from shared.db import migrate
from shared.kafka import create_topics
from shared.progress import Progress
from shared.topics import DETERMINATIONS, EVENTS
from tests.conftest import SENT_PATIENT_IDS
from tests.faults.helpers import determination_feed, expected_tasks
from tests.unit.coordinator.coordinator_samples import determination, identified

pytestmark = pytest.mark.integration

TODAY = date(2026, 3, 2)


def as_record(item: Determination, offset: int, topic: str = "dets", partition: int = 0):
    return ConsumerRecord(
        topic,
        partition,
        offset,
        0,
        0,
        item.patient_id.encode(),
        item.model_dump_json().encode(),
        None,
        0,
        0,
        [],
    )


def decided(patient: str, status: Status, hours: int = 0, **details) -> Determination:
    found = determination(status, **details).model_copy(update={"patient_id": patient})
    found = found.model_copy(update={"as_of": found.as_of + timedelta(hours=hours)})
    return identified(found)


@pytest.fixture
async def fresh_database(stack):
    """Another empty database, migrated (for applying the same records a second way)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    url = stack.database_url.replace("/postgres?", f"/{name}?")
    await migrate(url)
    yield url
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def service(database_url):
    await migrate(database_url)
    pool = await asyncpg.create_pool(database_url)
    yield Coordinator(pool, load_templates(), load_roster(), lambda: TODAY)
    await pool.close()


async def snapshot(pool) -> dict:
    """Everything applying determinations writes, with task ids and clock times left out
    (tasks are named by patient, key and their rank among the patient's tasks of that key)."""
    tasks = await pool.fetch(
        """SELECT id, patient_id, key, state, determination_id, assignee, created_on, due_on,
                  scheduled_on, late, reason, cancel_reason, prerequisites, version
           FROM tasks ORDER BY patient_id, created_at, key"""
    )
    names, seen = {}, {}
    for task in tasks:
        rank = seen[(task["patient_id"], task["key"])] = (
            seen.get((task["patient_id"], task["key"]), 0) + 1
        )
        names[task["id"]] = (task["patient_id"], task["key"], rank)
    outbox = []
    for row in await pool.fetch("SELECT * FROM outbox ORDER BY sequence"):
        payload = json.loads(row["payload"])
        for volatile in ("id", "created_at", "updated_at"):
            payload["task"].pop(volatile)
        payload.pop("at")
        outbox.append(
            (
                row["sequence"],
                row["patient_sequence"],
                names[row["task_id"]],
                row["change"],
                row["role"],
                payload,
            )
        )
    audit = [
        (
            names[row["task_id"]],
            row["actor"],
            row["change"],
            row["from_state"],
            row["to_state"],
            row["reason"],
        )
        for row in await pool.fetch("SELECT * FROM task_audit ORDER BY id")
    ]
    return {
        "tasks": [(names[t["id"]], *list(t.values())[1:]) for t in tasks],
        "outbox": outbox,
        "audit": audit,
        "determinations": [
            tuple(row)
            for row in await pool.fetch(
                "SELECT patient_id, determination_id, status, as_of FROM determinations ORDER BY id"
            )
        ],
        "plans": [
            tuple(row)
            for row in await pool.fetch(
                """SELECT p.patient_id, d.determination_id, d.as_of FROM care_plans p
                   JOIN determinations d ON d.id = p.current_determination ORDER BY 1"""
            )
        ],
        "counter": await pool.fetchval("SELECT value FROM outbox_counter"),
    }


async def same_task_ids(pool) -> None:
    """Task ids from a sequence instead of random: the scheduler breaks ties between equally
    pressing tasks by id, so two databases agree only when their ids come in the same order."""
    await pool.execute(
        """CREATE SEQUENCE test_task_ids;
           ALTER TABLE tasks ALTER COLUMN id
             SET DEFAULT lpad(to_hex(nextval('test_task_ids')), 32, '0')::uuid"""
    )


async def batched_and_singly(service, fresh_database: str, records):
    """The records applied by `service` in one batch, and on `fresh_database` one by one: both
    outcomes, and the one-by-one coordinator (its pool open: the caller closes it)."""
    await same_task_ids(service.pool)
    batched = await service.determination_records(records)
    one_by_one = Coordinator(
        await asyncpg.create_pool(fresh_database), load_templates(), load_roster(), lambda: TODAY
    )
    await same_task_ids(one_by_one.pool)
    singly = [(await one_by_one.determination_records([record]))[0] for record in records]
    return batched, singly, one_by_one


async def test_a_batch_applied_in_one_transaction_equals_its_records_applied_one_by_one(
    service, fresh_database
):
    feed = determination_feed(patients=40, seed=61)
    SENT_PATIENT_IDS.update(d.patient_id for d in feed)
    records = [as_record(item, offset) for offset, item in enumerate(feed)]
    patients = [d.patient_id for d in feed]
    assert len(patients) > len(set(patients)), "some patient must have several in the batch"

    batched, singly, one_by_one = await batched_and_singly(service, fresh_database, records)

    assert batched == singly == [Outcome.APPLIED] * len(records)
    # The team's capacity binds: later patients' tasks were placed around earlier ones' bookings
    # (which the batch keeps in step in memory, `store.Bookings`, and one by one reads again).
    roster = load_roster()
    weeks = await one_by_one.pool.fetch(
        """SELECT assignee, date_trunc('week', scheduled_on::timestamp) AS week, count(*) AS n
           FROM tasks WHERE assignee IS NOT NULL AND scheduled_on IS NOT NULL
             AND state IN ('proposed', 'accepted', 'in_progress') GROUP BY 1, 2"""
    )
    assert any(row["n"] == roster.person(row["assignee"]).weekly_capacity for row in weeks)
    expected = await snapshot(one_by_one.pool)
    assert expected["outbox"] and any(change[3] == "cancelled" for change in expected["outbox"])
    assert await snapshot(service.pool) == expected
    await one_by_one.pool.close()


def out_of_order(feed: list[Determination]) -> list[Determination]:
    """The feed with instants: each patient's determinations an hour apart, in feed order; then,
    for every other patient with several, its first two swapped (the older arrives second)."""
    counts: Counter[str] = Counter()
    timed = []
    for item in feed:
        timed.append(
            item.model_copy(update={"as_of": item.as_of + timedelta(hours=counts[item.patient_id])})
        )
        counts[item.patient_id] += 1
    swapped = []
    for number, patient in enumerate(p for p, n in counts.items() if n >= 2):
        if number % 2:
            continue
        first, second = [i for i, item in enumerate(timed) if item.patient_id == patient][:2]
        timed[first], timed[second] = timed[second], timed[first]
        swapped.append(patient)
    assert swapped
    return timed


async def test_older_determinations_in_a_batch_give_what_they_give_one_by_one(
    service, fresh_database
):
    """Within one batch a later record older than an earlier one (of the same patient) is
    recorded and not followed, exactly as when each record is a transaction of its own."""
    feed = out_of_order(determination_feed(patients=40, seed=61))
    SENT_PATIENT_IDS.update(d.patient_id for d in feed)
    records = [as_record(item, offset) for offset, item in enumerate(feed)]

    batched, singly, one_by_one = await batched_and_singly(service, fresh_database, records)
    expected = await snapshot(one_by_one.pool)
    await one_by_one.pool.close()

    assert batched == singly
    assert Outcome.SUPERSEDED in batched and Outcome.APPLIED in batched
    assert await snapshot(service.pool) == expected
    assert len(expected["determinations"]) == len(feed)  # the superseded ones recorded too
    latest: dict[str, Determination] = {}
    for item in feed:
        if item.patient_id not in latest or item.as_of >= latest[item.patient_id].as_of:
            latest[item.patient_id] = item
    assert expected["plans"] == sorted((p, d.determination_id, d.as_of) for p, d in latest.items())
    # What the tasks end with is the plan replayed over each patient's determinations in the
    # order of their instants (the superseded ones left out).
    tasks = Counter(
        tuple(row)
        for row in await service.pool.fetch(
            "SELECT patient_id, key, state, determination_id FROM tasks"
        )
    )
    followed, newest = [], {}
    for item, outcome in zip(feed, batched, strict=True):
        if outcome is not Outcome.SUPERSEDED:
            assert item.as_of >= newest.get(item.patient_id, item.as_of)
            newest[item.patient_id] = item.as_of
            followed.append(item)
    assert tasks == expected_tasks(followed)


async def test_an_older_determination_is_recorded_not_followed_and_a_newer_one_is(service):
    patient = "pt-batch-older-01"
    SENT_PATIENT_IDS.add(patient)
    suspected = decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.DIAGNOSTIC])
    confirmed = decided(
        patient, Status.REFRACTORY_CONFIRMED, 2, classification=Classification.NEUROPATHIC
    )
    responding = decided(patient, Status.RESPONDING, 3)
    # The live confirmation first; then, from the backfill lane, the older suspicion.
    [first] = await service.determination_records([as_record(confirmed, 0)])
    before = await snapshot(service.pool)
    older = as_record(suspected, 0, topic="pain.determinations.backfill.v1")
    [late] = await service.determination_records([older])
    after = await snapshot(service.pool)
    # One batch: older and newer after the current one.
    earlier_still = decided(patient, Status.NOT_CHRONIC, 1)
    batch = [as_record(earlier_still, 1), as_record(responding, 2)]
    outcomes = await service.determination_records(batch)
    final = await snapshot(service.pool)
    timeline = await service.timeline(patient, confirmed.as_of + timedelta(days=1))

    assert (first, late) == (Outcome.APPLIED, Outcome.SUPERSEDED)
    assert (
        after["plans"]
        == before["plans"]
        == [(patient, confirmed.determination_id, confirmed.as_of)]
    )
    assert (after["tasks"], after["outbox"]) == (before["tasks"], before["outbox"])
    assert [d[2] for d in after["determinations"]] == [
        "refractory_confirmed",
        "refractory_suspected",
    ]
    assert outcomes == [Outcome.SUPERSEDED, Outcome.APPLIED]
    assert final["plans"] == [(patient, responding.determination_id, responding.as_of)]
    assert {t[3] for t in final["tasks"]} == {"cancelled"}  # responding: the plan ended
    # The history by instant, then arrival: the superseded ones in the places of their instants.
    assert [d.status for d in timeline.determinations] == [
        "refractory_suspected",
        "not_chronic",
        "refractory_confirmed",
        "responding",
    ]


async def test_the_same_batch_again_changes_nothing_and_a_decision_come_back_is_applied(service):
    patient = "pt-batch-again-01"
    suspected = decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.DIAGNOSTIC])
    confirmed = decided(
        patient, Status.REFRACTORY_CONFIRMED, 1, classification=Classification.NEUROPATHIC
    )
    # The confirming event retracted: the same decision as before, made again later.
    suspected_again = suspected.model_copy(update={"as_of": suspected.as_of + timedelta(hours=2)})
    assert identified(suspected_again).determination_id == suspected.determination_id
    records = [as_record(d, n) for n, d in enumerate([suspected, confirmed, suspected_again])]

    assert await service.determination_records(records) == [Outcome.APPLIED] * 3
    before = await snapshot(service.pool)
    again = await service.determination_records(records)
    # Re-sent (a classifier restarted): the decision followed already, at a later instant.
    re_sent = suspected.model_copy(update={"as_of": suspected.as_of + timedelta(hours=3)})
    [same_decision] = await service.determination_records([as_record(re_sent, 3)])
    after = await snapshot(service.pool)

    assert again == [Outcome.ALREADY_APPLIED] * 3
    assert same_decision is Outcome.ALREADY_APPLIED
    assert after["tasks"] == before["tasks"] and after["outbox"] == before["outbox"]
    assert after["plans"] == [(patient, suspected.determination_id, re_sent.as_of)]
    open_keys = [t[0][1] for t in after["tasks"] if t[3] in ("proposed", "accepted")]
    assert len(open_keys) == len(set(open_keys))
    assert {t[3] for t in after["tasks"]} == {"proposed", "cancelled"}  # confirmed's cancelled


async def publish(settings, topic: str, items: list[Determination]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    for item in items:
        await producer.send(
            topic, key=item.patient_id.encode(), value=item.model_dump_json().encode()
        )
    await producer.flush()
    await producer.stop()


async def consume(settings, service, topic: str, group: str, count: int, apply=None):
    """Run a `BatchConsumer` of `group` until `count` records are processed; the outcomes."""
    outcomes: list[Outcome] = []
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=600,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    running = BatchConsumer(
        "determinations",
        consumer,
        apply or service.determination_records,
        Progress(60),
        lambda outcome, seconds: outcomes.append(outcome),
    )
    task = asyncio.create_task(running.run())
    try:
        async with asyncio.timeout(60):
            while len(outcomes) < count:
                await asyncio.sleep(0.05)
    finally:
        running.stop()
        await task
        await consumer.stop()
    return outcomes, running


async def test_a_redelivered_topic_changes_nothing_and_a_recreated_one_is_applied(
    service, settings
):
    topic = DETERMINATIONS.full_name(settings.kafka_topic_prefix)
    patients = [f"pt-batch-topic-{n:02d}" for n in range(6)]
    SENT_PATIENT_IDS.update(patients)
    first = [
        decided(p, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.DIAGNOSTIC])
        for p in patients
    ]
    await publish(settings, topic, first)
    outcomes, _ = await consume(settings, service, topic, f"g-{uuid.uuid4().hex}", len(first))
    assert outcomes == [Outcome.APPLIED] * len(first)
    applied = await snapshot(service.pool)

    # Every record again, in batches (a new group reads from offset 0).
    again, _ = await consume(settings, service, topic, f"g-{uuid.uuid4().hex}", len(first))
    assert again == [Outcome.ALREADY_APPLIED] * len(first)
    assert await snapshot(service.pool) == applied

    # The topic re-created: new determinations at the offsets the old ones had.
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    await admin.delete_topics([topic])
    await admin.close()
    await asyncio.sleep(0.5)
    await create_topics(settings, settings.kafka_bootstrap_servers, (DETERMINATIONS,))
    second = [
        decided(p, Status.REFRACTORY_CONFIRMED, 1, classification=Classification.MIXED)
        for p in patients
    ]
    await publish(settings, topic, second)
    group = f"g-{uuid.uuid4().hex}"
    recreated, _ = await consume(settings, service, topic, group, len(second))
    rows = await service.pool.fetch(
        "SELECT topic, kafka_partition, kafka_offset FROM determinations"
    )

    assert recreated == [Outcome.APPLIED] * len(second)
    offsets = [(r["topic"], r["kafka_partition"], r["kafka_offset"]) for r in rows]
    assert len(offsets) > len(set(offsets)), "the new records reused the old offsets"
    plans = (await snapshot(service.pool))["plans"]
    assert [(p, d) for p, d, _ in plans] == sorted(
        (d.patient_id, d.determination_id) for d in second
    )


async def test_records_the_database_refuses_lose_none_of_their_batch(service, settings):
    topic = DETERMINATIONS.full_name(settings.kafka_topic_prefix)
    good = [
        decided(
            f"pt-batch-poison-{n:02d}",
            Status.REFRACTORY_SUSPECTED,
            missing=[AssessmentPart.DIAGNOSTIC],
        )
        for n in range(4)
    ]
    SENT_PATIENT_IDS.update(d.patient_id for d in good)
    nul = decided("pt-batch-poison-\x00", Status.RESPONDING)  # valid JSON, no text column takes it
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    key = good[0].patient_id.encode()  # one partition: one batch, in this order
    for value in (
        good[0].model_dump_json().encode(),
        nul.model_dump_json().encode(),
        good[1].model_dump_json().encode(),
        b"{not json",
        json.dumps({**json.loads(good[2].model_dump_json()), "status": "bogus"}).encode(),
        good[2].model_dump_json().encode(),
        good[3].model_dump_json().encode(),
    ):
        await producer.send(topic, key=key, value=value)
    await producer.flush()
    await producer.stop()

    outcomes, _ = await consume(settings, service, topic, f"g-{uuid.uuid4().hex}", 7)
    recorded = await service.pool.fetchval("SELECT count(*) FROM determinations")
    planned = await service.pool.fetchval("SELECT count(DISTINCT patient_id) FROM tasks")

    applied, unreadable = Outcome.APPLIED, Outcome.UNREADABLE
    assert outcomes == [applied, unreadable, applied, unreadable, unreadable, applied, applied]
    assert recorded == planned == 4


async def test_events_refused_or_repeated_lose_none_of_their_batch(service, settings):
    patient = "pt-batch-events-01"
    SENT_PATIENT_IDS.add(patient)

    def event(number: int, **extra) -> dict:
        return {
            "specversion": "1.0",
            "id": f"batch-ev-{number}",
            "source": "urn:hospital:st-olaf:ehr",
            "type": "pain.score.recorded.v1",
            "time": f"2026-01-0{number}T09:00:00Z",
            "data": {"patient_id": patient, "score": number},
        } | extra

    values = [
        json.dumps(event(1)),
        json.dumps({**event(2), "note": "seen by Dr A\x00"}),  # a NUL: the contract refuses it
        json.dumps(event(3)),
        json.dumps(event(1), indent=2),  # the same event again, spelled otherwise
        json.dumps({**event(1), "data": {"patient_id": patient, "score": 9}}),  # its id reused
        json.dumps(event(4)),
    ]
    records = [
        ConsumerRecord(EVENTS.name, 0, n, 0, 0, patient.encode(), v.encode(), None, 0, 0, [])
        for n, v in enumerate(values)
    ]

    outcomes = await service.event_records(records)
    again = await service.event_records(records)
    kept = await service.pool.fetch("SELECT event_id, body FROM patient_events ORDER BY event_id")

    a, d, c, u = Outcome.APPLIED, Outcome.ALREADY_APPLIED, Outcome.CONFLICT, Outcome.REFUSED
    assert outcomes == [a, u, a, d, c, a]
    assert again == [d, u, d, d, c, d]
    assert [row["event_id"] for row in kept] == ["batch-ev-1", "batch-ev-3", "batch-ev-4"]
    assert json.loads(kept[0]["body"])["data"]["score"] == 1  # the first one stays


async def test_one_source_id_in_two_patients_streams_is_two_events_as_the_classifier_admits(
    service,
):
    """CONTRACT.md: everything downstream judges each patient's stream on its own."""
    patients = ["pt-batch-shared-id-01", "pt-batch-shared-id-02"]
    SENT_PATIENT_IDS.update(patients)
    records = [
        ConsumerRecord(
            EVENTS.name,
            0,
            number,
            0,
            0,
            patient.encode(),
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "shared-ev-1",
                    "source": "urn:hospital:st-olaf:ehr",
                    "type": "pain.score.recorded.v1",
                    "time": "2026-01-01T09:00:00Z",
                    "data": {"patient_id": patient, "score": 3},
                }
            ).encode(),
            None,
            0,
            0,
            [],
        )
        for number, patient in enumerate(patients)
    ]

    outcomes = await service.event_records(records)
    kept = await service.pool.fetch("SELECT patient_id FROM patient_events ORDER BY patient_id")

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]
    assert [row["patient_id"] for row in kept] == patients


async def test_a_connection_lost_mid_batch_is_retried_and_applies_everything_once(
    service, settings
):
    topic = DETERMINATIONS.full_name(settings.kafka_topic_prefix)
    feed = determination_feed(patients=12, seed=67)
    SENT_PATIENT_IDS.update(d.patient_id for d in feed)
    holder = await asyncpg.connect(settings.database_url.get_secret_value())
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT pg_advisory_xact_lock($1)", PLANNING_LOCK)
    await publish(settings, topic, feed)
    consuming = asyncio.create_task(
        consume(settings, service, topic, f"g-{uuid.uuid4().hex}", len(feed))
    )
    for _ in range(200):  # the batch's transaction waits for the planning lock
        waiting = await holder.fetch(
            """SELECT l.pid FROM pg_locks l
               WHERE l.locktype = 'advisory' AND NOT l.granted"""
        )
        if waiting:
            break
        await asyncio.sleep(0.05)
    assert waiting, "the batch never started"
    for row in waiting:  # its connection is lost mid-batch
        await holder.execute("SELECT pg_terminate_backend($1)", row["pid"])
    await asyncio.sleep(1.0)
    await transaction.rollback()
    await holder.close()
    outcomes, consumer = await consuming

    assert consumer.retries >= 1 and consumer.database_ok
    assert outcomes.count(Outcome.APPLIED) == len(feed)
    state = await snapshot(service.pool)
    assert len(state["determinations"]) == len(feed)
    assert state["counter"] == len(state["outbox"]) == len({c[0] for c in state["outbox"]})
    tasks = Counter(
        tuple(row)
        for row in await service.pool.fetch(
            "SELECT patient_id, key, state, determination_id FROM tasks"
        )
    )
    assert tasks == expected_tasks(feed)
