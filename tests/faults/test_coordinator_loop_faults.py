"""Faults under the coordinator's loops: PostgreSQL stopped under its timeline (event) consumer,
and topics whose offsets restart from 0.

- `timeline_postgres_stop`: PostgreSQL stopped for 20 s while `pain.events.v1` streams into the
  timeline, then started again. asyncpg raised `InternalClientError` releasing a lost connection,
  which killed the event consumer for good while `/healthz` stayed 200 (issue 13, item 2). Now
  the outage is waited out with backoff; `/readyz` is 503 whenever a timeline request fails;
  every event is kept once.
- `offsets_restart`: the coordinator, its database kept, moved to fresh topics (a topic
  re-created, a broker rebuilt, a cluster migrated) whose offsets restart from 0 and that carry
  copies of records it applied and new ones. Deduplication by what a record is: the copies are
  `already_applied`, every new determination and event is applied, the care plans follow the new
  determinations.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import asyncpg
import httpx
import pytest

from services.coordinator.app import TIMELINE_GROUP
from shared.contract.records import Rejection, read_record
from shared.kafka import create_topics, group_lag
from shared.topics import EVENTS
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    ADMIN_TOKEN,
    Record,
    ServiceProcess,
    compare_tasks,
    determination_feed,
    expected_tasks,
    http_status,
    metric_totals,
    produce_determinations,
    produce_paced,
    remember_keys,
    service_env,
    wait_for,
)
from tests.faults.test_coordinator_faults import (  # noqa: F401 - own_stack is a fixture
    own_stack,
    remember,
    settled,
    start_postgres,
    stop_postgres,
)
from tests.integration.test_classifier_stream import as_records, feed_lines

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_SECONDS = 20
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def admitted(records: list[Record]) -> dict[tuple[str, str, str], dict]:
    """The events the timeline must keep, the first of each (patient, source, id), as JSON."""
    kept: dict[tuple[str, str, str], dict] = {}
    for key, value in records:
        read = read_record(key, value)
        if not isinstance(read, Rejection):
            kept.setdefault(identity(read[0]), json.loads(read[1]))
    return kept


def identity(event) -> tuple[str, str, str]:
    return (event.patient_id, event.source, event.id)


async def kept_events(database_url: str) -> dict[tuple[str, str, str], int]:
    """Each (patient, source, id) the timeline keeps, and how many times."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT patient_id, source, event_id, count(*) AS copies FROM patient_events"
            " GROUP BY patient_id, source, event_id"
        )
    finally:
        await connection.close()
    return {(r["patient_id"], r["source"], r["event_id"]): r["copies"] for r in rows}


async def timeline_caught_up(settings) -> bool:
    """Every record of `pain.events.v1` applied by the timeline consumer and committed."""
    group = f"{settings.kafka_topic_prefix}{TIMELINE_GROUP}"
    return await group_lag(settings, settings.kafka_bootstrap_servers, group, EVENTS) == 0


async def test_postgres_stopped_under_the_timeline_consumer_is_waited_out(own_stack):
    local, settings = own_stack
    database_url = settings.database_url.get_secret_value()
    prefix = settings.kafka_topic_prefix
    await create_topics(settings, settings.kafka_bootstrap_servers)
    records = as_records(feed_lines(patients=60, seed=91))  # about 4,000 records
    remember_keys(records)
    expected = admitted(records)
    patient = next(key for key, _ in records if key).decode()
    coordinator = ServiceProcess(
        "coordinator",
        service_env(
            settings.kafka_bootstrap_servers, database_url, prefix, local.state_dir / "services"
        ),
        "coordinator-timeline-pg",
    )
    coordinator.start()
    samples: list[tuple[float, int | None, int | None, int | None]] = []
    try:
        async with httpx.AsyncClient() as client:
            await coordinator.wait_ready(client)
            # About 40 s of events: before, during and after the outage.
            feeding = asyncio.create_task(
                produce_paced(
                    settings.kafka_bootstrap_servers,
                    EVENTS.full_name(prefix),
                    records,
                    per_second=len(records) / 40,
                    chunk=50,
                )
            )
            await wait_for(
                lambda: kept_at_least(database_url, 0.15 * len(expected)),
                60,
                "15 % of the events kept",
            )
            # The stop must find the consumer inside a statement (where asyncpg raised
            # InternalClientError): an uncommitted copy of an event it is about to keep holds
            # its INSERT until PostgreSQL stops and aborts both.
            holder = await asyncpg.connect(database_url)
            await holder.execute("BEGIN")
            await holder.execute(
                """INSERT INTO patient_events (source, event_id, patient_id, type, time, body)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb)""",
                *blocker(records),
            )
            await wait_for(lambda: inserts_waiting(holder), 60, "the consumer's INSERT blocked")
            before_outage = len(await kept_events(database_url))
            await asyncio.to_thread(stop_postgres, local)
            holder.terminate()
            stopped_at = time.monotonic()
            while time.monotonic() - stopped_at < OUTAGE_SECONDS:
                samples.append(
                    (
                        time.monotonic() - stopped_at,
                        await coordinator.readiness(client),
                        await http_status(client, coordinator.url("/healthz")),
                        await http_status(
                            client,
                            coordinator.url(f"/v1/patients/{patient}/timeline"),
                            headers=AUTH,
                        ),
                    )
                )
                await asyncio.sleep(0.5)
            await asyncio.to_thread(start_postgres, local)
            restarted_at = time.monotonic()
            ready_after = await coordinator.wait_ready(client, timeout=120)
            await feeding
            await wait_for(lambda: timeline_caught_up(settings), 180, "the timeline caught up", 1.0)
            recovered = time.monotonic() - restarted_at
            timeline_after = await http_status(
                client, coordinator.url(f"/v1/patients/{patient}/timeline"), headers=AUTH
            )
            healthz_after = await http_status(client, coordinator.url("/healthz"))
            checks = (await client.get(coordinator.url("/readyz"))).json()["checks"]
            alive = coordinator.alive
    finally:
        coordinator.stop()

    kept = await kept_events(database_url)
    log = coordinator.log.read_text(errors="replace")
    delays = sorted({float(d) for d in re.findall(r'"delay_s": ([0-9.]+)', log)})
    ready_while_failing = sum(1 for s in samples if s[1] == 200 and s[3] != 200)
    report_figures(
        "timeline_postgres_stop",
        events=len(records),
        events_expected=len(expected),
        kept_before_outage=before_outage,
        outage_s=OUTAGE_SECONDS,
        samples=len(samples),
        readyz_503_samples=sum(1 for s in samples if s[1] == 503),
        readyz_200_while_a_request_failed=ready_while_failing,
        healthz_200_samples=sum(1 for s in samples if s[2] == 200),
        timeline_request_failed_samples=sum(1 for s in samples if s[3] != 200),
        retry_delays_s=delays,
        ready_after_restart_s=round(ready_after, 1),
        recovery_s=round(recovered, 1),
        events_consumer_check=checks.get("events"),
        coordinator_restarts=coordinator.starts - 1,
        loop_died="loop_died" in log,
        lost=len(set(expected) - set(kept)),
        duplicated=sum(copies - 1 for copies in kept.values()),
        stale=len(set(kept) - set(expected)),
    )
    assert alive and coordinator.starts == 1 and "loop_died" not in log
    assert samples and ready_while_failing == 0
    assert all(s[1] == 503 for s in samples if s[0] > 3), "ready while PostgreSQL was down"
    assert len(delays) >= 3 and delays[-1] > delays[0], "no backoff in the retries"
    assert checks["events"] == "ok" and healthz_after == 200 and timeline_after == 200
    assert set(kept) == set(expected) and all(copies == 1 for copies in kept.values())


def blocker(records: list[Record]) -> tuple:
    """The columns of an event first sent about a third into the feed (not kept before)."""
    earlier = set(admitted(records[: len(records) // 3]))
    for key, value in records[len(records) // 3 :]:
        read = read_record(key, value)
        if not isinstance(read, Rejection) and identity(read[0]) not in earlier:
            event, text = read
            return (event.source, event.id, event.patient_id, event.type, event.time, text)
    raise AssertionError("no valid event in the feed's last two thirds")


async def inserts_waiting(connection: asyncpg.Connection) -> bool:
    """Whether another session waits for this one's uncommitted row (a transaction lock)."""
    return bool(
        await connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
        )
    )


async def kept_at_least(database_url: str, count: float) -> bool:
    return len(await kept_events(database_url)) >= count


async def test_topics_whose_offsets_restart_bring_new_records_applied_and_copies_recognised(
    settings, endpoints, tmp_path
):
    database_url = endpoints.database_url
    feed = determination_feed(patients=60, seed=83)
    remember(feed)
    events = as_records(feed_lines(patients=60, seed=83))
    remember_keys(events)
    first, rest = feed[: len(feed) * 3 // 5], feed[len(feed) * 3 // 5 :]
    copies = first[-25:]  # a migration copies some of what the old topic held
    events_first, events_rest = events[: len(events) // 2], events[len(events) // 2 :]
    events_copies = events_first[-300:]
    old_prefix = settings.kafka_topic_prefix
    new = settings.model_copy(update={"kafka_topic_prefix": f"{old_prefix}moved."})
    await create_topics(new, new.kafka_bootstrap_servers)

    def coordinator_on(prefix: str, label: str) -> ServiceProcess:
        env = service_env(settings.kafka_bootstrap_servers, database_url, prefix, tmp_path)
        return ServiceProcess("coordinator", env, label)

    async def applied(count: int, on) -> dict:
        state = await settled(on, database_url, count, timeout=180)
        await wait_for(lambda: timeline_caught_up(on), 180, "the timeline caught up", 1.0)
        return state

    before = coordinator_on(old_prefix, "coordinator-offsets-old")
    after = coordinator_on(new.kafka_topic_prefix, "coordinator-offsets-new")
    before.start()
    try:
        async with httpx.AsyncClient() as client:
            await before.wait_ready(client)
            await produce_determinations(
                settings.kafka_bootstrap_servers, old_prefix, first, per_second=100_000
            )
            await produce_paced(
                settings.kafka_bootstrap_servers,
                EVENTS.full_name(old_prefix),
                events_first,
                per_second=100_000,
            )
            await applied(len(first), settings)
            before.stop()
            kept_before = await kept_events(database_url)

            after.start()
            await after.wait_ready(client)
            started = time.monotonic()
            await produce_determinations(
                new.kafka_bootstrap_servers,
                new.kafka_topic_prefix,
                [*copies, *rest],
                per_second=100_000,
            )
            await produce_paced(
                new.kafka_bootstrap_servers,
                EVENTS.full_name(new.kafka_topic_prefix),
                [*events_copies, *events_rest],
                per_second=100_000,
            )
            state = await applied(len(feed), new)
            caught_up = time.monotonic() - started
            text = (await client.get(after.url("/metrics"))).text
            ready = await after.readiness(client)
    finally:
        before.stop()
        after.stop()

    determinations = metric_totals(text, "painpath_coordinator_determinations_total")
    event_results = metric_totals(text, "painpath_coordinator_events_total")
    kept = await kept_events(database_url)
    expected_events = admitted(events)
    # What the moved consumer must count for each event record: a copy of one kept is
    # already applied (same content) or a conflict; a new one applied; a refused one refused.
    seen = {key: json.dumps(body, sort_keys=True) for key, body in admitted(events_first).items()}
    outcomes = {"applied": 0, "already_applied": 0, "conflict": 0, "refused": 0}
    for key, value in [*events_copies, *events_rest]:
        read = read_record(key, value)
        if isinstance(read, Rejection):
            outcomes["refused"] += 1
            continue
        ident, body = identity(read[0]), json.dumps(json.loads(read[1]), sort_keys=True)
        if ident not in seen:
            seen[ident] = body
            outcomes["applied"] += 1
        else:
            outcomes["already_applied" if seen[ident] == body else "conflict"] += 1
    got_events = {name: int(event_results.get(f'result="{name}"', 0)) for name in outcomes}
    last = {d.patient_id: d.determination_id for d in feed}
    stale = sum(1 for p, d in last.items() if state["current"].get(p) != d)
    tasks = compare_tasks(state["tasks"], expected_tasks(feed))
    report_figures(
        "offsets_restart",
        determinations_on_the_old_topic=len(first),
        copies_on_the_new_topic=len(copies),
        new_on_the_new_topic=len(rest),
        determinations_applied_after_the_move=int(determinations.get('result="applied"', 0)),
        determinations_already_applied_after_the_move=int(
            determinations.get('result="already_applied"', 0)
        ),
        events_kept_before_the_move=len(kept_before),
        event_outcomes_after_the_move=got_events,
        event_outcomes_expected=outcomes,
        caught_up_s=round(caught_up, 1),
        readyz_after=ready,
        lost=tasks["tasks_lost"] + len(set(expected_events) - set(kept)),
        duplicated=tasks["tasks_duplicated"]
        + state["open_twice"]
        + sum(n - 1 for n in kept.values()),
        stale=stale,
        **tasks,
    )
    assert state["records"] == len(feed)
    assert int(determinations.get('result="already_applied"', 0)) == len(copies)
    assert int(determinations.get('result="applied"', 0)) == len(rest)
    assert got_events == outcomes
    assert set(kept) == set(expected_events)
    assert tasks["tasks_lost"] == tasks["tasks_duplicated"] == 0
    assert state["open_twice"] == 0 and stale == 0
