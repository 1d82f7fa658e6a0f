"""The coordinator on the real broker and PostgreSQL, served by a real HTTP server."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date

import asyncpg
import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from services.coordinator.app import GROUP, create_app
from services.coordinator.consumer import BatchConsumer
from services.coordinator.scheduling import load_roster
from services.coordinator.service import Coordinator
from services.coordinator.templates import load_templates
from shared.contract import AssessmentPart, Classification, Determination, Status
from shared.db import migrate
from shared.ports import free_port
from shared.progress import Progress
from shared.settings import ApiToken
from shared.topics import (
    CARE_TASKS,
    DETERMINATIONS,
    DETERMINATIONS_BACKFILL,
    EVENTS,
    EVENTS_BACKFILL,
    Topic,
)
from tests.conftest import read_topic
from tests.unit.coordinator.coordinator_samples import determination, identified

pytestmark = pytest.mark.integration

TODAY = date(2026, 3, 2)  # a Monday
TOKENS = {
    "admin": "tok-admin",
    "coordinator": "tok-coordinator",
    "pain_specialist": "tok-specialist",
    "pharmacist": "tok-pharmacist",
    "pain_psychologist": "tok-psychologist",
}


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def decided(patient_id: str, status: Status, **details) -> Determination:
    return identified(
        determination(status, **details).model_copy(update={"patient_id": patient_id})
    )


@pytest.fixture
async def coordinator(settings, endpoints):
    """The coordinator app on a real uvicorn server; yields an HTTP client to it."""
    settings = settings.model_copy(
        update={
            "coordinator_session_timeout_seconds": 3,
            "coordinator_tokens": [
                ApiToken(name=f"{role}-user", token=token, role=role)
                for role, token in TOKENS.items()
            ],
        }
    )
    endpoints.coordinator_tokens.extend(settings.coordinator_tokens)
    app = create_app(settings, endpoints, load_templates(), load_roster(), today=lambda: TODAY)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(300):
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the coordinator did not become ready")
        yield client
    server.should_exit = True
    await serving


async def publish(settings, *determinations: Determination, topic: Topic = DETERMINATIONS) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for item in determinations:
            await producer.send(
                topic.full_name(settings.kafka_topic_prefix),
                key=item.patient_id.encode(),
                value=item.model_dump_json().encode(),
            )
        await producer.flush()
    finally:
        await producer.stop()


async def tasks_of(client, patient_id: str, expect: int | None = None, role: str = "admin"):
    """The patient's tasks once `expect` of them exist and every open one is scheduled."""
    for _ in range(150):
        response = await client.get(
            "/v1/tasks", params={"patient_id": patient_id, "limit": 200}, headers=auth(role)
        )
        items = response.json()["items"]
        settled = all(t["scheduled_on"] for t in items if t["state"] in ("proposed", "accepted"))
        if items and settled and (expect is None or len(items) == expect):
            return items
        await asyncio.sleep(0.1)
    raise AssertionError(f"tasks did not settle: {len(items)}")


async def test_a_confirmed_determination_becomes_a_scheduled_plan_in_the_api_and_on_the_topic(
    coordinator, settings
):
    patient = "pt-coord-plan-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC),
    )

    tasks = await tasks_of(coordinator, patient)

    by_key = {task["key"]: task for task in tasks}
    assert "case_conference" in by_key
    assert {"pain_psychologist", "physical_therapist", "pharmacist", "interventionalist"} <= {
        task["role"] for task in tasks
    }
    roster = load_roster()
    for task in tasks:
        assert task["state"] == "proposed"
        assert roster.person(task["assignee"]).role == task["role"]
        assert date.fromisoformat(task["scheduled_on"]) >= TODAY
        for prerequisite in task["prerequisites"]:
            assert task["scheduled_on"] > by_key[prerequisite]["scheduled_on"]
    changes = await read_topic(settings, CARE_TASKS, expected=2 * len(tasks), timeout=15)
    sequences = sorted(int(dict(r.headers)["sequence"]) for r in changes)
    assert sequences == list(range(1, len(sequences) + 1))  # gap-free, once each
    assert {r.key.decode() for r in changes} == {patient}


async def test_the_same_determination_twice_creates_nothing(coordinator, settings, endpoints):
    patient = "pt-coord-twice-01"
    item = decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NOCICEPTIVE)
    await publish(settings, item)
    first = await tasks_of(coordinator, patient)

    await publish(settings, item)
    await asyncio.sleep(1.5)
    again = await tasks_of(coordinator, patient)

    assert sorted(t["id"] for t in again) == sorted(t["id"] for t in first)
    connection = await asyncpg.connect(endpoints.database_url)
    received = await connection.fetchval("SELECT count(*) FROM determinations")
    outbox = await connection.fetchval("SELECT count(*) FROM outbox")
    await connection.close()
    assert received == 1  # the same determination (decision and instant) is recorded once
    assert outbox == 2 * len(first)  # created and scheduled, once


class KilledAfterCommit(BaseException):
    """Stands for the process dying between the database commit and the offset commit."""


async def test_a_crash_between_database_commit_and_offset_commit_leaves_no_duplicate(
    settings, endpoints
):
    patient = "pt-coord-crash-01"
    await publish(
        settings, decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.MIXED)
    )
    await migrate(endpoints.database_url)
    pool = await asyncpg.create_pool(endpoints.database_url)
    service = Coordinator(pool, load_templates(), load_roster(), lambda: TODAY)

    async def apply_then_die(records):
        await service.determination_records(records)
        raise KilledAfterCommit

    consumer = AIOKafkaConsumer(
        DETERMINATIONS.full_name(settings.kafka_topic_prefix),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.kafka_topic_prefix}{GROUP}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
    )
    await consumer.start()
    with pytest.raises(KilledAfterCommit):
        await BatchConsumer("determinations", consumer, apply_then_die, Progress(60)).run()
    await consumer.stop()
    before = await pool.fetchval("SELECT count(*) FROM tasks")
    assert before > 0

    # The restarted coordinator gets the record again (its offset was never committed).
    restarted = create_app(
        settings.model_copy(update={"coordinator_session_timeout_seconds": 3}),
        replace(endpoints, coordinator_tokens=[ApiToken(name="a", token="t", role="admin")]),
        load_templates(),
        load_roster(),
        today=lambda: TODAY,
    )
    async with restarted.router.lifespan_context(restarted):
        transport = httpx.ASGITransport(app=restarted)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            for _ in range(200):
                metrics = (await client.get("/metrics")).text
                if (
                    'painpath_coordinator_determinations_total{result="already_applied"} 1.0'
                    in metrics
                ):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the record was not delivered again")
    after = await pool.fetchval("SELECT count(*) FROM tasks")
    created = await pool.fetchval("SELECT count(*) FROM task_audit WHERE change = 'created'")
    recorded = await pool.fetchval("SELECT count(*) FROM determinations")
    await pool.close()

    assert recorded == 1
    assert after == before == created


async def test_leaving_refractory_cancels_open_tasks_and_keeps_completed_ones(
    coordinator, settings
):
    patient = "pt-coord-leave-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NOCIPLASTIC),
    )
    tasks = await tasks_of(coordinator, patient)
    conference = next(t for t in tasks if t["key"] == "case_conference")
    for action, body in (
        ("accept", None),
        ("start", None),
        ("complete", {"outcome": "plan agreed"}),
    ):
        response = await coordinator.post(
            f"/v1/tasks/{conference['id']}/{action}", json=body, headers=auth("coordinator")
        )
        assert response.status_code == 200, response.text

    await publish(settings, decided(patient, Status.RESPONDING))
    for _ in range(100):
        now = await tasks_of(coordinator, patient)
        if all(t["state"] in ("completed", "cancelled") for t in now):
            break
        await asyncio.sleep(0.1)

    states = {t["key"]: t["state"] for t in now}
    assert states.pop("case_conference") == "completed"
    assert set(states.values()) == {"cancelled"}
    assert all("responding" in t["cancel_reason"] for t in now if t["state"] == "cancelled")


async def test_transitions_and_their_refusals(coordinator, settings):
    patient = "pt-coord-flow-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.MEDICATION_HISTORY]),
    )
    [review] = [t for t in await tasks_of(coordinator, patient) if t["role"] == "pharmacist"]
    url = f"/v1/tasks/{review['id']}"

    early = await coordinator.post(
        f"{url}/complete", json={"outcome": "x"}, headers=auth("pharmacist")
    )
    assert early.status_code == 409
    assert "proposed" in early.json()["detail"]
    assert (await coordinator.post(f"{url}/accept", headers=auth("pharmacist"))).json()[
        "state"
    ] == "accepted"
    assert (
        await coordinator.post(f"{url}/cancel", json={"reason": "x"}, headers=auth("pharmacist"))
    ).status_code == 403
    wrong = await coordinator.post(
        f"{url}/reassign", json={"assignee": "nobody"}, headers=auth("coordinator")
    )
    assert wrong.status_code == 422
    pharmacist = next(p.id for p in load_roster().people if p.role == "pharmacist")
    moved = await coordinator.post(
        f"{url}/reassign", json={"assignee": pharmacist}, headers=auth("coordinator")
    )
    assert moved.json()["assignee"] == pharmacist
    assert (await coordinator.post(f"{url}/start", headers=auth("pharmacist"))).status_code == 200
    done = await coordinator.post(
        f"{url}/complete", json={"outcome": "reviewed, 4 drugs"}, headers=auth("pharmacist")
    )
    assert done.json()["state"] == "completed" and done.json()["outcome"] == "reviewed, 4 drugs"
    assert (await coordinator.post(f"{url}/start", headers=auth("pharmacist"))).status_code == 409
    history = (await coordinator.get(f"{url}/history", headers=auth("pharmacist"))).json()
    assert [(h["change"], h["actor"]) for h in history] == [
        ("created", "coordinator"),
        ("scheduled", "coordinator"),
        ("accept", "pharmacist-user"),
        ("reassign", "coordinator-user"),
        ("start", "pharmacist-user"),
        ("complete", "pharmacist-user"),
    ]
    assert history[-1]["reason"] == "reviewed, 4 drugs"
    assert (
        await coordinator.post(
            "/v1/tasks/00000000-0000-0000-0000-000000000000/accept", headers=auth("admin")
        )
    ).status_code == 404


async def test_tokens_and_roles(coordinator, settings):
    patient = "pt-coord-auth-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC),
    )
    tasks = await tasks_of(coordinator, patient)
    psychology = next(t for t in tasks if t["role"] == "pain_psychologist")

    assert (await coordinator.get("/v1/tasks")).status_code == 401
    assert (
        await coordinator.get("/v1/tasks", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (
        await coordinator.get(f"/v1/tasks/{psychology['id']}", headers=auth("pharmacist"))
    ).status_code == 403
    assert (
        await coordinator.get(
            "/v1/tasks", params={"role": "pain_psychologist"}, headers=auth("pharmacist")
        )
    ).status_code == 403
    own = (await coordinator.get("/v1/tasks", headers=auth("pain_psychologist"))).json()["items"]
    assert own and {t["role"] for t in own} == {"pain_psychologist"}
    assert (
        await coordinator.get(f"/v1/tasks/{psychology['id']}", headers=auth("pain_psychologist"))
    ).status_code == 200


async def test_pagination_walks_every_task_once(coordinator, settings):
    for number in range(3):
        await publish(
            settings,
            decided(
                f"pt-coord-page-{number:02d}",
                Status.REFRACTORY_CONFIRMED,
                classification=Classification.NEUROPATHIC,
            ),
        )
    for number in range(3):
        await tasks_of(coordinator, f"pt-coord-page-{number:02d}")
    every = (
        await coordinator.get("/v1/tasks", params={"limit": 200}, headers=auth("admin"))
    ).json()["items"]

    seen, cursor = [], None
    while True:
        params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
        page = (await coordinator.get("/v1/tasks", params=params, headers=auth("admin"))).json()
        seen.extend(task["id"] for task in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == sorted(task["id"] for task in every)
    assert len(seen) == len(set(seen))


async def test_the_patient_view_shows_determination_history_and_plan(coordinator, settings):
    patient = "pt-coord-view-01"
    suspected = decided(
        patient,
        Status.REFRACTORY_SUSPECTED,
        missing=[AssessmentPart.DIAGNOSTIC],
        classification=Classification.NEUROPATHIC,
    )
    confirmed = decided(
        patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC
    )
    await publish(settings, suspected, confirmed)
    for _ in range(100):
        view = await coordinator.get(f"/v1/patients/{patient}", headers=auth("coordinator"))
        if (
            view.status_code == 200
            and view.json()["determination"]["status"] == "refractory_confirmed"
        ):
            break
        await asyncio.sleep(0.1)

    body = view.json()
    assert [h["status"] for h in body["history"]] == [
        "refractory_suspected",
        "refractory_confirmed",
    ]
    assert body["determination"]["determination_id"] == confirmed.determination_id
    assert body["tasks"]
    assert (
        await coordinator.get("/v1/patients/pt-nobody", headers=auth("admin"))
    ).status_code == 404


async def read_stream(client, headers: dict, count: int) -> list[tuple[int, str, dict]]:
    events, current = [], {}
    async with client.stream("GET", "/v1/stream", headers=headers, timeout=15) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "data" in current:
                events.append((current["id"], current["event"], current["data"]))
                current = {}
                if len(events) == count:
                    return events
    return events


async def test_the_stream_resumes_with_last_event_id_and_misses_nothing(coordinator, settings):
    patient = "pt-coord-stream-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC),
    )
    tasks = await tasks_of(coordinator, patient)
    total = 2 * len(tasks)

    first = await read_stream(coordinator, auth("admin") | {"Last-Event-ID": "0"}, 5)
    resumed = await read_stream(
        coordinator, auth("admin") | {"Last-Event-ID": str(first[-1][0])}, total - 5
    )
    psychology = await read_stream(
        coordinator, auth("pain_psychologist") | {"Last-Event-ID": "0"}, 2
    )

    assert [event[0] for event in first + resumed] == list(range(1, total + 1))
    assert first[0][1] == "created" and first[0][2]["task"]["patient_id"] == patient
    assert {event[2]["task"]["role"] for event in psychology} == {"pain_psychologist"}


async def test_a_new_change_reaches_a_connected_stream(coordinator, settings):
    patient = "pt-coord-live-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.PHYSICAL_EXAM]),
    )
    [task] = await tasks_of(coordinator, patient)
    listening = asyncio.create_task(read_stream(coordinator, auth("admin"), 1))
    await asyncio.sleep(0.5)

    await coordinator.post(f"/v1/tasks/{task['id']}/accept", headers=auth("admin"))
    [(_, change, payload)] = await asyncio.wait_for(listening, 10)

    assert change == "accept"
    assert payload["task"]["state"] == "accepted" and payload["actor"] == "admin-user"


async def test_a_task_reads_as_a_fhir_r4_task(coordinator, settings):
    patient = "pt-coord-fhir-01"
    await publish(
        settings,
        decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.PHYSICAL_EXAM]),
    )
    [task] = await tasks_of(coordinator, patient)

    resource = (await coordinator.get(f"/fhir/r4/Task/{task['id']}", headers=auth("admin"))).json()

    assert resource["resourceType"] == "Task"
    assert (resource["status"], resource["intent"]) == ("requested", "plan")
    assert resource["for"] == {"reference": f"Patient/{patient}"}
    assert resource["owner"] == {"reference": f"Practitioner/{task['assignee']}"}
    assert resource["restriction"]["period"]["end"] == task["due_on"]


async def test_health_readiness_and_metrics(coordinator, settings):
    assert (await coordinator.get("/healthz")).json() == {"status": "ok"}
    ready = (await coordinator.get("/readyz")).json()
    assert ready == {
        "ready": True,
        "checks": {
            "database": "ok",
            "determinations": "ok",
            "events": "ok",
            "determinations_backfill": "ok",
            "events_backfill": "ok",
            "relay": "ok",
        },
    }
    # Every consumer's lag, by topic and partition (known once a fetch told each one's end).
    prefix = settings.kafka_topic_prefix
    expected = {
        (consumer, topic.full_name(prefix), str(partition))
        for consumer, topic in (
            ("determinations", DETERMINATIONS),
            ("events", EVENTS),
            ("determinations_backfill", DETERMINATIONS_BACKFILL),
            ("events_backfill", EVENTS_BACKFILL),
        )
        for partition in range(topic.partitions)
    }
    for _ in range(100):
        metrics = (await coordinator.get("/metrics")).text
        lags = {
            (sample.labels["consumer"], sample.labels["topic"], sample.labels["partition"])
            for family in text_string_to_metric_families(metrics)
            if family.name == "painpath_coordinator_consumer_lag"
            for sample in family.samples
        }
        if lags == expected:
            break
        await asyncio.sleep(0.1)
    assert lags == expected
    assert 'painpath_coordinator_tasks{state="proposed"}' in metrics
    assert "painpath_coordinator_outbox_unpublished" in metrics
    for consumer in ("determinations", "events", "determinations_backfill", "events_backfill"):
        assert f'painpath_coordinator_processing_seconds_count{{consumer="{consumer}"}}' in metrics
        assert f'painpath_coordinator_database_retries{{consumer="{consumer}"}}' in metrics


async def test_many_plans_never_book_anyone_beyond_capacity_or_off_their_working_days(
    coordinator, settings
):
    patients = [f"pt-coord-load-{number:02d}" for number in range(12)]
    await publish(
        settings,
        *(
            decided(patient, Status.REFRACTORY_CONFIRMED, classification=Classification.NEUROPATHIC)
            for patient in patients
        ),
    )
    tasks = [task for patient in patients for task in await tasks_of(coordinator, patient)]

    roster = load_roster()
    booked: dict[tuple[str, tuple[int, int]], int] = {}
    for task in tasks:
        day = date.fromisoformat(task["scheduled_on"])
        person = roster.person(task["assignee"])
        assert person.works_on(day), (person.id, day)
        week = day.isocalendar()[:2]
        booked[(person.id, week)] = booked.get((person.id, week), 0) + 1
    for (person_id, _), count in booked.items():
        assert count <= roster.person(person_id).weekly_capacity
    assert any(task["late"] for task in tasks)  # 12 plans at once exceed the team's week


async def test_the_timeline_shows_scores_dose_steps_side_effects_and_status_changes(
    coordinator, settings
):
    patient = "pt-coord-timeline-01"

    def event(number, kind, time, **data):
        return {
            "specversion": "1.0",
            "id": f"tl-{number}",
            "source": "urn:hospital:st-olaf:ehr",
            "type": f"pain.{kind}.v1",
            "time": time,
            "data": {"patient_id": patient, **data},
        }

    events = [
        event(1, "score.recorded", "2026-01-01T09:00:00Z", score=8),
        event(
            2,
            "trial.started",
            "2026-01-02T09:00:00Z",
            trial_id="t1",
            drug="Gabapentin",
            daily_dose=300,
            dose_unit="mg",
        ),
        event(
            3,
            "trial.dose_changed",
            "2026-01-09T09:00:00Z",
            trial_id="t1",
            daily_dose=900,
            dose_unit="mg",
        ),
        event(
            4,
            "side_effect.reported",
            "2026-01-10T09:00:00Z",
            trial_id="t1",
            effect="dizziness",
            severity="moderate",
        ),
        event(5, "score.recorded", "2026-02-01T09:00:00Z", score=60, instrument="vas"),
        event(6, "score.recorded", "2026-02-02T09:00:00Z", score=2),
        event(7, "event.retracted", "2026-02-03T09:00:00Z", retracted_id="tl-6"),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    for item in [*events, events[0]]:  # the first one twice
        await producer.send_and_wait(
            f"{settings.kafka_topic_prefix}pain.events.v1",
            key=patient.encode(),
            value=json.dumps(item).encode(),
        )
    await producer.stop()
    await publish(
        settings,
        decided(patient, Status.UNDER_TREATMENT),
        decided(patient, Status.REFRACTORY_SUSPECTED, missing=[AssessmentPart.DIAGNOSTIC]),
    )

    for _ in range(100):
        response = await coordinator.get(f"/v1/patients/{patient}/timeline", headers=auth("admin"))
        if response.status_code == 200 and len(response.json()["determinations"]) == 2:
            break
        await asyncio.sleep(0.1)
    timeline = response.json()

    assert [(s["score"], s["instrument"]) for s in timeline["scores"]] == [(8, "nrs"), (6, "vas")]
    [trial] = timeline["trials"]
    assert (trial["trial_id"], trial["drug"], trial["stopped_at"]) == ("t1", "gabapentin", None)
    assert [(d["daily_dose"], d["from"][:10]) for d in trial["doses"]] == [
        (300, "2026-01-02"),
        (900, "2026-01-09"),
    ]
    assert [(s["effect"], s["severity"]) for s in timeline["side_effects"]] == [
        ("dizziness", "moderate")
    ]
    assert [d["status"] for d in timeline["determinations"]] == [
        "under_treatment",
        "refractory_suspected",
    ]
    assert (
        await coordinator.get("/v1/patients/pt-nobody/timeline", headers=auth("admin"))
    ).status_code == 404
