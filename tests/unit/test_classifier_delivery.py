"""Delivery: a send counts once acknowledged; a refused commit is the fence, counted, not raised.

Against recording doubles of aiokafka's producer and consumer (the broker's side of the same
code runs in tests/integration/test_classifier_stream.py and tests/faults)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError
from prometheus_client import CollectorRegistry, Counter

from services.classifier.delivery import Delivery, offset_of


@dataclass
class Metadata:
    offset: int


class Producer:
    """Queues a send at once; the broker's acknowledgement comes when `ack` is called."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.unacknowledged: list[asyncio.Future] = []

    async def send(self, topic, value, key=None, partition=None, headers=None):
        self.sent.append((topic, value))
        acknowledged = asyncio.get_running_loop().create_future()
        self.unacknowledged.append(acknowledged)
        return acknowledged

    def ack(self) -> None:
        for offset, future in enumerate(self.unacknowledged):
            future.set_result(Metadata(offset))


class Consumer:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.committed: list[dict] = []

    async def commit(self, offsets):
        if self.refuse:
            raise CommitFailedError("the group rebalanced")
        self.committed.append(offsets)


def delivery(refuse: bool = False) -> tuple[Delivery, CollectorRegistry]:
    registry = CollectorRegistry()
    sender = Delivery(Counter("commit_failures", "", registry=registry))
    sender.producer, sender.consumer = Producer(), Consumer(refuse)
    return sender, registry


async def test_flush_returns_only_once_every_send_is_acknowledged():
    sender, _ = delivery()
    first = sender.send("t", b"1", key=b"k")
    second = sender.send("t", b"2", key=b"k")
    flushing = asyncio.ensure_future(sender.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done()  # queued, not acknowledged

    sender.producer.ack()
    await flushing
    assert [offset_of(first), offset_of(second)] == [0, 1]
    await sender.flush()  # nothing pending: returns at once


async def test_a_commit_the_group_refuses_is_false_and_counted():
    sender, registry = delivery(refuse=True)
    assert await sender.commit({TopicPartition("t", 0): 5}) is False
    assert registry.get_sample_value("commit_failures_total") == 1


async def test_commits_go_through_and_an_empty_one_asks_nothing():
    sender, registry = delivery()
    assert await sender.commit({}) is True
    assert await sender.commit({TopicPartition("t", 0): 5}) is True
    assert sender.consumer.committed == [{TopicPartition("t", 0): 5}]
    assert registry.get_sample_value("commit_failures_total") == 0
