"""The gateway keeps what it accepted; `painpath replay` publishes it again after a broker loss.

A "new broker" here is a new set of empty topics (another topic prefix) on the session's broker:
what a replay writes there is compared, record by record, with what the gateway published.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from painpath.replay import events_on_broker, replay_after_broker_loss, replay_with_progress
from services.gateway.app import sweep_retention
from services.gateway.replay import replay
from shared.kafka import create_topics, reliable_producer
from shared.stack import Endpoints
from shared.topics import EVENTS
from tests.conftest import read_topic
from tests.integration.test_gateway import HEADERS, post, score

pytestmark = pytest.mark.integration

TRACEPARENT = f"00-{'ab' * 16}-{'cd' * 8}-01"


def as_published(records) -> list[tuple]:
    return [(r.key, r.value, tuple(r.headers)) for r in records]


async def new_broker(settings):
    """Empty topics of the catalog under a new prefix: the topics of a broker that lost its log."""
    fresh = settings.model_copy(update={"kafka_topic_prefix": f"r{uuid.uuid4().hex[:10]}."})
    await create_topics(fresh, fresh.kafka_bootstrap_servers)
    return fresh


def endpoints_for(settings) -> Endpoints:
    return Endpoints(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url.get_secret_value(),
        api_keys=settings.gateway_api_keys,
        coordinator_tokens=[],
        pseudonym_key="test-pseudonym-key",
        local=False,
    )


async def test_each_accepted_event_is_kept_exactly_as_published(gateway, settings, endpoints):
    batch = [score(f"evt-keep-{i}", f"pt-gw-keep-{i % 2}", value=i) for i in range(6)]
    await post(gateway, batch, {**HEADERS, "traceparent": TRACEPARENT})
    await post(gateway, [score("evt-keep-0"), score("evt-keep-bad", value=99)])  # dup, rejected

    published = await read_topic(settings, EVENTS, expected=6)
    connection = await asyncpg.connect(endpoints.database_url)
    rows = await connection.fetch(
        """SELECT event_id, record_key, record_value, header_names, header_values, batch_position
           FROM gateway_accepted_events ORDER BY accepted_at, batch_position"""
    )
    await connection.close()

    assert [row["event_id"] for row in rows] == [f"evt-keep-{i}" for i in range(6)]
    assert [row["batch_position"] for row in rows] == list(range(6))
    by_id = {json.loads(r.value)["id"]: r for r in published}
    for row in rows:
        record = by_id[row["event_id"]]
        assert row["record_key"] == record.key and row["record_value"] == record.value
        assert list(zip(row["header_names"], row["header_values"], strict=True)) == list(
            record.headers
        )


async def test_a_replay_publishes_every_kept_event_again_in_acceptance_order(
    gateway, settings, endpoints
):
    first = [score(f"evt-rp-{i}", f"pt-gw-replay-{i % 3}", value=i % 11) for i in range(25)]
    second = [score(f"evt-rp-{i}", f"pt-gw-replay-{i % 3}", value=i % 11) for i in range(25, 40)]
    await post(gateway, first, {**HEADERS, "traceparent": TRACEPARENT})
    await post(gateway, second)
    original = await read_topic(settings, EVENTS, expected=40)
    fresh = await new_broker(settings)
    topic = EVENTS.full_name(fresh.kafka_topic_prefix)
    producer = reliable_producer(fresh, fresh.kafka_bootstrap_servers)
    await producer.start()
    pages = []
    try:
        result = await replay(
            endpoints.database_url,
            producer,
            topic,
            datetime(2000, 1, 1, tzinfo=UTC),
            reason="test",
            operator="tester",
            progress=pages.append,
            page=7,
        )
    finally:
        await producer.stop()
    replayed = await read_topic(fresh, EVENTS, expected=40)

    assert result.published == 40 and result.not_kept == 0
    assert pages == [7, 7, 7, 7, 7, 5]
    assert sorted(as_published(replayed)) == sorted(as_published(original))
    for partition in {r.partition for r in original}:  # the same order in every partition
        assert [r.value for r in replayed if r.partition == partition] == [
            r.value for r in original if r.partition == partition
        ]
    connection = await asyncpg.connect(endpoints.database_url)
    audit = await connection.fetchrow(
        "SELECT * FROM gateway_replays WHERE id = $1", result.replay_id
    )
    await connection.close()
    assert audit["operator"] == "tester" and audit["reason"] == "test"
    assert audit["published"] == 40 and audit["finished_at"] is not None


async def test_a_replay_since_an_instant_leaves_older_events_out(gateway, settings, endpoints):
    await post(gateway, [score("evt-old-1"), score("evt-old-2")])
    connection = await asyncpg.connect(endpoints.database_url)
    await connection.execute(
        "UPDATE gateway_accepted_events SET accepted_at = now() - interval '2 days'"
    )
    await connection.close()
    await post(gateway, [score("evt-recent-1")])
    fresh = await new_broker(settings)

    result = await replay_with_progress(
        fresh,
        endpoints_for(fresh),
        datetime.now(UTC) - timedelta(days=1),
        reason="test",
        show=False,
    )
    replayed = await read_topic(fresh, EVENTS, expected=1)

    assert result.published == 1
    assert [json.loads(r.value)["id"] for r in replayed] == ["evt-recent-1"]


async def test_claims_made_before_records_were_kept_are_counted_not_published(
    gateway, settings, endpoints
):
    await post(gateway, [score("evt-legacy"), score("evt-kept")])
    connection = await asyncpg.connect(endpoints.database_url)
    await connection.execute(
        "UPDATE gateway_accepted_events SET record_value = NULL WHERE event_id = 'evt-legacy'"
    )
    await connection.close()
    fresh = await new_broker(settings)

    result = await replay_with_progress(
        fresh, endpoints_for(fresh), datetime(2000, 1, 1, tzinfo=UTC), reason="test", show=False
    )

    assert (result.published, result.not_kept) == (1, 1)


async def test_run_replays_at_start_only_when_the_broker_lost_its_events(
    gateway, settings, endpoints
):
    await post(gateway, [score(f"evt-start-{i}", f"pt-gw-start-{i}") for i in range(5)])
    said: list[str] = []

    kept = await asyncio.to_thread(
        replay_after_broker_loss, settings, endpoints_for(settings), said.append
    )
    fresh = await new_broker(settings)
    assert await events_on_broker(fresh, fresh.kafka_bootstrap_servers) == 0
    lost = await asyncio.to_thread(
        replay_after_broker_loss, fresh, endpoints_for(fresh), said.append
    )
    again = await asyncio.to_thread(
        replay_after_broker_loss, fresh, endpoints_for(fresh), said.append
    )

    assert kept is None  # the broker still has them: nothing is replayed
    assert lost is not None and lost.published == 5
    assert again is None  # the replay refilled the topic
    assert await events_on_broker(fresh, fresh.kafka_bootstrap_servers) == 5
    assert "the broker lost its log" in said[0] and said[1].startswith("replayed 5 ")


async def test_the_retention_sweep_forgets_kept_records_with_their_claims(
    gateway, settings, endpoints
):
    await post(gateway, [score("evt-sweep-old"), score("evt-sweep-new")])
    pool = await asyncpg.create_pool(endpoints.database_url)
    await pool.execute(
        "UPDATE gateway_accepted_events SET accepted_at = now() - interval '31 days'"
        " WHERE event_id = 'evt-sweep-old'"
    )
    deleted = await sweep_retention(pool, days=30)
    kept = await pool.fetchval("SELECT count(record_value) FROM gateway_accepted_events")
    await pool.close()

    assert deleted == 1 and kept == 1


async def test_the_retention_sweep_deletes_in_batches_until_nothing_is_left_to_forget(
    gateway, endpoints
):
    await post(gateway, [score(f"evt-batch-{i}") for i in range(7)])
    pool = await asyncpg.create_pool(endpoints.database_url)
    await pool.execute(
        "UPDATE gateway_accepted_events SET accepted_at = now() - interval '40 days'"
        " WHERE event_id <> 'evt-batch-6'"
    )
    deleted = await sweep_retention(pool, days=30, batch=2)
    left = await pool.fetchval("SELECT count(*) FROM gateway_accepted_events")
    await pool.close()

    assert deleted == 6 and left == 1
