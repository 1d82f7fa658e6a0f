"""`painpath group status` and what `painpath run` reads before it reports the system ready:
the classifier group as a whole (`shared.consumer_group`), not one worker's `/readyz`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka.errors import KafkaError

from shared.consumer_group import GroupStatus, GroupWatch
from shared.settings import Settings

INTERVAL = 0.5


async def wait_group_ready(
    settings: Settings, bootstrap_servers: str, timeout: float, interval: float = INTERVAL
) -> GroupStatus:
    """The group's status once ready, or the last one seen after `timeout` (0: one look).

    A broker that does not answer is asked again until `timeout`; after it, its error is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with GroupWatch(settings, bootstrap_servers) as watch:
                while True:
                    status = await watch.status()
                    if status.ready or time.monotonic() >= deadline:
                        return status
                    await asyncio.sleep(interval)
        except KafkaError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(interval)


def report_group_ready(
    settings: Settings, bootstrap_servers: str, echo: Callable[[str], None], timeout: float = 90
) -> GroupStatus:
    """`painpath run`, once every service answers ready: wait until the classifier group owns
    every partition too, and say so (or say what is missing)."""
    status = asyncio.run(wait_group_ready(settings, bootstrap_servers, timeout))
    echo(("ready  " if status.ready else f"not ready after {timeout:.0f} s: ") + status.describe())
    return status
