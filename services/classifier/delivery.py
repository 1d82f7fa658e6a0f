"""Delivery: sends queued, acknowledged by the broker (`acks=all`), then offsets committed.

Every record the worker writes (dead letters, determinations, changelog records) is queued with
`send` and counts once `flush` returned: the broker acknowledged it. The input offsets are
committed only after what they caused is acknowledged, so a crash anywhere re-delivers
uncommitted records, whose admission is idempotent.

`commit` of the offsets already committed is also the **fence**: it fails for a worker that lost
its partitions without knowing it (paused past its session timeout), which then writes nothing
more, so it cannot repeat or overwrite what the partitions' new owner wrote meanwhile.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter

from shared.logging import get_logger

log = get_logger("painpath.classifier.delivery")


class Delivery:
    def __init__(self, commit_failures: Counter):
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._pending: list[asyncio.Future] = []
        self._commit_failures = commit_failures

    def send(
        self, topic: str, value: bytes, *, key, partition=None, headers=None
    ) -> asyncio.Future:
        """Queue a send; its result, once `flush` returned, is the delivery future, whose result
        is the record's metadata (its offset)."""
        queued = asyncio.ensure_future(
            self.producer.send(topic, value, key=key, partition=partition, headers=headers)
        )
        self._pending.append(queued)
        return queued

    async def flush(self) -> None:
        """Wait until the broker acknowledged every queued send (acks=all)."""
        if self._pending:
            pending, self._pending = self._pending, []
            deliveries = await asyncio.gather(*pending)  # queued in the producer's buffer
            await asyncio.gather(*deliveries)  # acknowledged by the broker

    async def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit `offsets`; False when the group took the partitions meanwhile."""
        if not offsets:
            return True
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError):
            # A rebalance took the partitions: what was not committed is read again by their
            # next owner, and admitting it again changes nothing.
            self._commit_failures.inc()
            log.warning("commit_failed", partitions=len(offsets))
            return False
        return True


def offset_of(queued: asyncio.Future) -> int:
    """The offset a flushed send got."""
    return queued.result().result().offset
