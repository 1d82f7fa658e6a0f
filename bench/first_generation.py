"""A consumer that stops in its group's first generation: how long its successor takes to join.

The local broker numbers a group's first generation 0; aiokafka's `stop()` sends LeaveGroup only
for a generation above 0 (`GroupCoordinator._maybe_leave_group`), and Apache Kafka starts at 1.
So a member stopped in generation 0 leaves no word: the broker keeps it until its session
timeout, and the member that replaces it goes through a second rebalance once it has joined.

A real broker (`LocalStack`), two topics of 12 partitions, one consumer at a time in one group
(the range assignor, a 3 s session timeout, as the bench's classifier): each member joins, reads,
commits and stops, and the next one's seconds from `subscribe` to an assignment are printed,
with the generation the one before it had (aiokafka logs it on each join). Seen on 2026-12-06:
7.2 s after the generation-0 member, 2.1 s after each later one.

    python -m bench.first_generation --members 6
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import tempfile
import time
from pathlib import Path

TOPICS = ("first-generation.a", "first-generation.b")
GROUP = "first-generation"


class Generations(logging.Handler):
    """The generation of each join, from aiokafka's "Joined group ... (generation N)" line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"\(generation (-?\d+)\)", record.getMessage())
        if found:
            self.seen.append(int(found.group(1)))


async def join(bootstrap: str):
    from aiokafka import AIOKafkaConsumer
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
        partition_assignment_strategy=(RangePartitionAssignor,),
    )
    await consumer.start()
    started = time.monotonic()
    consumer.subscribe(list(TOPICS))
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=50)
    return consumer, time.monotonic() - started


async def measure(bootstrap: str, members: int) -> list[tuple[int | None, float]]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 12, 1) for name in TOPICS])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for number in range(1000):
            await producer.send(TOPICS[0], b"x", key=str(number).encode())
    finally:
        await producer.stop()

    generations = Generations()
    logging.getLogger("aiokafka.consumer.group_coordinator").addHandler(generations)
    logging.getLogger("aiokafka.consumer.group_coordinator").setLevel(logging.INFO)
    consumer, _ = await join(bootstrap)
    joins: list[tuple[int | None, float]] = []
    for _ in range(members):
        for _ in range(5):
            await consumer.getmany(timeout_ms=200)
        await consumer.commit()
        before = generations.seen[-1] if generations.seen else None
        await consumer.stop()
        consumer, seconds = await join(bootstrap)
        joins.append((before, seconds))
    await consumer.stop()
    return joins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=6, help="successors joined one by one")
    args = parser.parse_args()

    from shared.stack import LocalStack

    with tempfile.TemporaryDirectory(prefix="painpath-first-generation-") as folder:
        stack = LocalStack(Path(folder))
        state = stack.up()
        try:
            joins = asyncio.run(measure(state.bootstrap_servers, args.members))
        finally:
            stack.down()
    for number, (generation, seconds) in enumerate(joins, 1):
        print(
            f"member {number + 1}: joined in {seconds:.2f} s (its predecessor: generation"
            f" {generation})"
        )


if __name__ == "__main__":
    main()
