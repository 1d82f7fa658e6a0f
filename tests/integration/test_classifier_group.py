"""The classifier group's readiness as a whole, asked of the real broker: the shared component,
the coordinator's endpoint and metrics, and `painpath group status`."""

from __future__ import annotations

import asyncio

import pytest

from shared.consumer_group import GroupWatch, group_status
from shared.topics import EVENTS, EVENTS_BACKFILL
from tests.integration.test_classifier_stream import Workers, as_records, feed_lines, produce
from tests.integration.test_coordinator import coordinator  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def workers(settings, endpoints):
    running = Workers(settings, endpoints)
    yield running
    running.stop_all()


async def test_a_group_without_members_is_not_ready(settings):
    status = await group_status(settings, settings.kafka_bootstrap_servers)

    assert not status.ready and status.members == 0 and len(status.unowned) == 12
    assert status.reasons == ["no member in the group"]


async def test_a_working_group_is_ready_and_its_lag_is_what_it_has_not_committed(
    settings, workers, tmp_path
):
    records = as_records(feed_lines(10, 3))
    # Before any worker all of it is lag, of both lanes (partition p of each: one owner).
    half = len(records) // 2
    await produce(settings, records[:half])
    await produce(settings, records[half:], EVENTS_BACKFILL)
    async with GroupWatch(settings, settings.kafka_bootstrap_servers) as watch:
        before = await watch.status()
        workers.start(tmp_path / "w1")
        await asyncio.to_thread(workers.wait_ready)
        for _ in range(200):
            status = await watch.status()
            if status.ready and status.lag == 0:
                break
            await asyncio.sleep(0.25)

    assert before.lag == len(records) and not before.ready
    assert before.lanes == [
        t.full_name(settings.kafka_topic_prefix) for t in (EVENTS, EVENTS_BACKFILL)
    ]
    assert status.ready and status.members == 1 and status.lag == 0, status.describe()
    assert not status.assignments_reported  # the local broker does not tell assignments


async def test_the_coordinator_exports_the_classifier_groups_readiness(coordinator):  # noqa: F811
    group = await coordinator.get("/classifier-group")
    ready = await coordinator.get("/classifier-group/readyz")
    metrics = (await coordinator.get("/metrics")).text

    assert group.status_code == 200 and group.json()["ready"] is False
    assert group.json()["unowned_partitions"] == 12 and group.json()["members"] == 0
    assert ready.status_code == 503 and ready.json()["reasons"] == ["no member in the group"]
    assert "painpath_classifier_group_unowned_partitions 12.0" in metrics
    assert "painpath_classifier_group_ready 0.0" in metrics


def test_painpath_group_status_exits_1_while_the_group_is_not_ready(settings):
    import json
    import os
    import subprocess
    import sys

    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "painpath", "group", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["unowned_partitions"] == 12
