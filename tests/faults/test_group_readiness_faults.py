"""The classifier group's readiness as a whole while a worker's partitions are orphaned.

Two `painpath classifier` workers share a live stream; one is SIGKILLed. Its own `/readyz` dies
with it and the survivor's stays 200 (its own partitions are fine), yet half the partitions
have no working owner until the broker's session timeout (6 s here) runs out, the group
rebalances and the survivor restores them. `GroupWatch` (what `painpath run`, the coordinator's
`/classifier-group` and the autoscaler read) is sampled every 0.25 s throughout, with a stall
threshold (3 s) below the session timeout. The ground truth of "every partition owned again" is
the survivor's own `restored` log line after the kill.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime

import httpx
import pytest

from shared.consumer_group import GroupWatch, Tracker, judge
from shared.topics import EVENTS
from tests.faults.conftest import report_figures
from tests.faults.helpers import (
    FaultWorkers,
    cohort,
    compare_determinations,
    produce_paced,
    remember_keys,
    wait_for,
)
from tests.integration.test_classifier_stream import published, wait_until_consumed

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PATIENTS, SEED = 150, 61
STALL_SECONDS = 3.0
SAMPLE_SECONDS = 0.25


@pytest.fixture
def workers(settings, endpoints):
    running = FaultWorkers(settings, endpoints)
    yield running
    running.stop_all()


def restored_after(log_text: str, after_epoch: float) -> float | None:
    """The epoch of the first `restored` log line after `after_epoch`."""
    for line in log_text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") != "restored":
            continue
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        if at > after_epoch:
            return at
    return None


async def test_group_readiness_says_not_ready_until_every_orphaned_partition_has_an_owner(
    settings, workers, tmp_path
):
    records, reference = cohort(PATIENTS, SEED)
    remember_keys(records)
    ports = [workers.start(tmp_path / "w1"), workers.start(tmp_path / "w2")]
    workers.wait_ready()
    survivor, victim = ports
    topic = EVENTS.full_name(settings.kafka_topic_prefix)
    feeding = asyncio.create_task(
        produce_paced(settings.kafka_bootstrap_servers, topic, records, per_second=350)
    )
    # t, ready, unowned, stalled, the survivor's /readyz code, ready under the default threshold
    samples: list[tuple[float, bool, int, int, int | None, bool]] = []
    sampling = True
    default_stall = settings.classifier_group_stall_seconds

    async def sample() -> None:
        async with (
            GroupWatch(
                settings, settings.kafka_bootstrap_servers, stall_seconds=STALL_SECONDS
            ) as watch,
            httpx.AsyncClient(timeout=2) as client,
        ):
            default = Tracker()  # the same observations judged with the default threshold
            while sampling:
                observation = await watch.observe()
                now = time.monotonic()
                status = judge(watch.group, EVENTS, observation, watch.tracker, now, STALL_SECONDS)
                by_default = judge(watch.group, EVENTS, observation, default, now, default_stall)
                try:
                    code = (await client.get(f"http://127.0.0.1:{survivor}/readyz")).status_code
                except httpx.TransportError:
                    code = None
                samples.append(
                    (
                        now,
                        status.ready,
                        len(status.unowned),
                        len(status.stalled),
                        code,
                        by_default.ready,
                    )
                )
                await asyncio.sleep(SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample())
    try:
        await wait_for(
            lambda: (
                sum(workers.processed().values()) >= 0.3 * len(records)
                and workers.processed().get(victim, 0) > 0
            ),
            timeout=120,
            what="30 % of the records processed",
        )
        watched_from = time.monotonic()
        await asyncio.sleep(3)
        killed, killed_epoch = time.monotonic(), time.time()
        workers.kill(victim)

        def ready_again() -> bool:
            after = [s for s in samples if s[0] > killed]
            went_down = next((i for i, s in enumerate(after) if not s[1]), None)
            return (
                went_down is not None
                and all(s[1] for s in after[went_down:][-8:])
                and (len(after) - went_down >= 8 and any(s[1] for s in after[went_down:]))
            )

        await wait_for(ready_again, timeout=120, what="the group ready again after the kill")
    finally:
        sampling = False
        await sampler
    await feeding
    await wait_until_consumed(settings, timeout=300)
    got = await published(settings, len(reference.final))
    figures = compare_determinations(got, reference)
    owned_epoch = restored_after(workers.logs[survivor].read_text(errors="replace"), killed_epoch)

    before = [s for s in samples if watched_from <= s[0] < killed]
    after = [s for s in samples if s[0] >= killed]
    first_down = next(s[0] for s in after if not s[1])
    back_up = next(s[0] for s in after if s[0] > first_down and s[1])
    owned_again = None if owned_epoch is None else owned_epoch - killed_epoch

    gaps = {a[0]: b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)}

    def seconds(selected) -> float:
        """How long the selected samples held: each until the next sample."""
        return round(sum(gaps.get(s[0], SAMPLE_SECONDS) for s in selected), 2)

    down = [s for s in after if s[0] < back_up]
    survivor_ready_while_group_not = [s for s in down if s[0] >= first_down and s[4] == 200]
    ready_while_orphaned = [
        s for s in after if s[1] and first_down <= s[0] < killed + (owned_again or 0)
    ]
    default_down = next((s[0] for s in after if not s[5]), None)
    default_up = next((s[0] for s in after if default_down and s[0] > default_down and s[5]), None)
    report_figures(
        "orphaned_partitions_readiness",
        events=len(records),
        stall_threshold_s=STALL_SECONDS,
        session_timeout_s=6,
        group_not_ready_after_kill_s=round(first_down - killed, 2),
        every_partition_owned_again_s=None if owned_again is None else round(owned_again, 2),
        group_ready_again_after_kill_s=round(back_up - killed, 2),
        survivor_readyz_200_while_group_not_ready_s=seconds(survivor_ready_while_group_not),
        group_ready_while_partitions_orphaned_s=seconds(ready_while_orphaned),
        group_not_ready_samples_before_kill=sum(1 for s in before if not s[1]),
        default_stall_threshold_s=default_stall,
        default_threshold_not_ready_after_kill_s=(
            None if default_down is None else round(default_down - killed, 2)
        ),
        default_threshold_ready_again_after_kill_s=(
            None if default_up is None else round(default_up - killed, 2)
        ),
        sample_interval_s=round((samples[-1][0] - samples[0][0]) / (len(samples) - 1), 2),
        max_unowned_partitions=max(s[2] for s in after),
        max_stalled_partitions=max(s[3] for s in after),
        lost=figures["lost"],
        duplicated=figures["duplicated"] + figures["republished"],
        stale=len(ready_while_orphaned),
        missing_intermediate=figures["missing_intermediate"],
    )
    assert before and all(s[1] for s in before), "not ready before the kill"
    assert first_down - killed <= STALL_SECONDS + 2, "the orphaned partitions went unnoticed"
    assert owned_again is not None, "the survivor never restored the orphaned partitions"
    assert not ready_while_orphaned, "ready while partitions had no owner"
    assert back_up >= killed + owned_again - SAMPLE_SECONDS
    assert figures["lost"] == figures["duplicated"] == figures["republished"] == 0
