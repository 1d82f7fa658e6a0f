"""The coordinator's side of the backfill lane, on the real broker and PostgreSQL.

`pain.determinations.backfill.v1` is applied in small batches behind `pain.determinations.v1`:
a live determination published behind a backlog is applied before the backlog is done. Of two
determinations of a patient, from either topic, the one as of the later instant is followed.
The timeline keeps the events of `pain.events.backfill.v1` as those of `pain.events.v1`, once
whichever topic brought them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from services.coordinator.consumer import BACKFILL_MAX_RECORDS
from services.coordinator.store import PLANNING_LOCK
from shared.contract import AssessmentPart, Classification, Status
from shared.contract.records import partition_of
from shared.topics import DETERMINATIONS, DETERMINATIONS_BACKFILL, EVENTS, EVENTS_BACKFILL
from tests.conftest import SENT_PATIENT_IDS
from tests.faults.helpers import metric_totals
from tests.integration.test_coordinator import (  # noqa: F401 - coordinator is a fixture
    auth,
    coordinator,
    decided,
    publish,
    tasks_of,
)

pytestmark = pytest.mark.integration


async def until(check, timeout: float = 30.0):
    """Poll `check` (async) until it returns something true; that value."""
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.05)
    return found


async def lock_waiters(connection: asyncpg.Connection) -> int:
    return await connection.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    )


async def test_a_live_determination_is_applied_before_a_backfill_backlog_is_done(
    coordinator, settings, endpoints
):
    backlog = [decided(f"pt-lane-backlog-{n:03d}", Status.RESPONDING) for n in range(300)]
    live = decided(
        "pt-lane-live-01", Status.REFRACTORY_CONFIRMED, classification=Classification.MIXED
    )
    SENT_PATIENT_IDS.update(d.patient_id for d in [*backlog, live])
    # The planning lock held: the backfill consumer's first batch waits for it, in hand.
    holder = await asyncpg.connect(endpoints.database_url)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("SELECT pg_advisory_xact_lock($1)", PLANNING_LOCK)
    try:
        await publish(settings, *backlog, topic=DETERMINATIONS_BACKFILL)
        await until(lambda: _at_least(lock_waiters(holder), 1))
        await publish(settings, live, topic=DETERMINATIONS)
        await until(lambda: _at_least(lock_waiters(holder), 2))  # the live batch waits too
        assert await holder.fetchval("SELECT count(*) FROM determinations") == 0
    finally:
        await transaction.rollback()
    try:
        rows = await until(lambda: _recorded(holder, len(backlog) + 1), timeout=60)
    finally:
        await holder.close()

    backfill_topic = DETERMINATIONS_BACKFILL.full_name(settings.kafka_topic_prefix)
    [live_row] = [row for row in rows if row["patient_id"] == live.patient_id]
    assert live_row["topic"] == DETERMINATIONS.full_name(settings.kafka_topic_prefix)
    before = [row for row in rows if row["id"] < live_row["id"]]
    after = [row for row in rows if row["id"] > live_row["id"]]
    # Only the backfill batch in hand when the live one came went first; the rest after it.
    assert {row["topic"] for row in before + after} == {backfill_topic}
    assert 0 < len(before) <= BACKFILL_MAX_RECORDS
    assert len(after) == len(backlog) - len(before)
    assert await tasks_of(coordinator, live.patient_id)


async def _at_least(count, minimum: int) -> bool:
    return await count >= minimum


async def _recorded(connection: asyncpg.Connection, count: int):
    rows = await connection.fetch("SELECT id, topic, patient_id FROM determinations ORDER BY id")
    return rows if len(rows) >= count else None


async def test_of_two_topics_the_later_instant_is_followed_whatever_arrives_last(
    coordinator, settings
):
    patient = "pt-lane-order-01"
    SENT_PATIENT_IDS.add(patient)
    suspected = decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.DIAGNOSTIC])
    confirmed = decided(
        patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC
    )
    confirmed = confirmed.model_copy(update={"as_of": suspected.as_of + timedelta(hours=2)})
    responding = decided(patient, Status.RESPONDING)
    responding = responding.model_copy(update={"as_of": suspected.as_of + timedelta(hours=3)})

    await publish(settings, confirmed, topic=DETERMINATIONS)  # live, newer
    planned = await tasks_of(coordinator, patient)
    await publish(
        settings, suspected, topic=DETERMINATIONS_BACKFILL
    )  # backfill, older, applied later
    await until(lambda: _metric(coordinator, 'result="superseded"', 1))
    view = (await coordinator.get(f"/v1/patients/{patient}", headers=auth("admin"))).json()
    kept = await tasks_of(coordinator, patient)

    assert view["determination"]["determination_id"] == confirmed.determination_id
    assert [h["status"] for h in view["history"]] == [
        "refractory_suspected",
        "refractory_confirmed",
    ]
    assert [(t["id"], t["state"], t["version"]) for t in kept] == [
        (t["id"], t["state"], t["version"]) for t in planned
    ]

    await publish(settings, responding, topic=DETERMINATIONS_BACKFILL)  # backfill, newer: followed
    ended = await until(lambda: _all_closed(coordinator, patient))
    view = (await coordinator.get(f"/v1/patients/{patient}", headers=auth("admin"))).json()
    assert view["determination"]["determination_id"] == responding.determination_id
    assert {t["state"] for t in ended} == {"cancelled"}


async def _metric(client, labels: str, value: float) -> bool:
    metrics = (await client.get("/metrics")).text
    found = metric_totals(metrics, "painpath_coordinator_determinations_total")
    return found.get(labels, 0.0) >= value


async def _all_closed(client, patient: str):
    tasks = await tasks_of(client, patient)
    return tasks if all(t["state"] == "cancelled" for t in tasks) else None


async def test_events_of_the_backfill_topic_reach_the_timeline_once_and_partition_checked(
    coordinator, settings
):
    patient = "pt-lane-events-01"
    SENT_PATIENT_IDS.add(patient)
    home = partition_of(patient.encode(), EVENTS_BACKFILL.partitions)

    def score(number: int, value: int) -> bytes:
        return json.dumps(
            {
                "specversion": "1.0",
                "id": f"lane-ev-{number}",
                "source": "urn:hospital:st-olaf:ehr",
                "type": "pain.score.recorded.v1",
                "time": f"2026-01-0{number}T09:00:00Z",
                "data": {"patient_id": patient, "score": value},
            }
        ).encode()

    sends = [
        (EVENTS, home, score(1, 7)),  # live only
        (EVENTS_BACKFILL, home, score(2, 6)),  # backfill only
        (EVENTS_BACKFILL, home, score(3, 5)),  # in both lanes: kept once
        (EVENTS, home, score(3, 5)),
        (EVENTS_BACKFILL, (home + 1) % EVENTS_BACKFILL.partitions, score(4, 4)),  # not its own
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for topic, partition, value in sends:
            await producer.send_and_wait(
                topic.full_name(settings.kafka_topic_prefix),
                key=patient.encode(),
                value=value,
                partition=partition,
            )
    finally:
        await producer.stop()

    async def counted():
        metrics = (await coordinator.get("/metrics")).text
        totals = metric_totals(metrics, "painpath_coordinator_events_total")
        return totals if sum(totals.values()) >= len(sends) else None

    totals = await until(counted)
    response = await coordinator.get(f"/v1/patients/{patient}/timeline", headers=auth("admin"))

    assert response.status_code == 200
    assert [s["score"] for s in response.json()["scores"]] == [7, 6, 5]
    assert totals == {
        'result="applied"': 3,
        'result="already_applied"': 1,
        'result="refused"': 1,
    }
