"""`shared.kafka.end_offsets` on the real broker: true ends past a multi-record batch (which the
local broker's ListOffsets is short of), empty partitions, and a consumer that still stops.

A consumer whose assignment changed just before `stop()` can hang in aiokafka's fetcher (its
cancellation swallowed): CI hung for 90 minutes on it. Each stop here is bounded so that the
regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import end_offsets

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def a_topic(settings) -> str:
    name = f"{settings.kafka_topic_prefix}ends-{secrets.token_hex(4)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    return name


async def one_batch(settings, name: str, partition: int, records: int) -> None:
    """`records` records sent together, so that the broker stores them as one batch."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=200)
    await producer.start()
    try:
        sent = [await producer.send(name, b"{}", partition=partition) for _ in range(records)]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def a_consumer(settings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    return consumer


async def test_empty_partitions_are_at_zero_and_the_consumer_is_left_as_it_was(settings):
    name = await a_topic(settings)
    partitions = [TopicPartition(name, p) for p in range(PARTITIONS)]
    consumer = await a_consumer(settings)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    assert await consumer.getmany(timeout_ms=100) == {}

    ends = await end_offsets(consumer, partitions)

    assert ends == dict.fromkeys(partitions, 0)
    assert consumer.assignment() == set(partitions)
    await asyncio.wait_for(consumer.stop(), 10)


async def test_the_end_is_past_a_multi_record_batch_and_reading_goes_on_from_there(settings):
    name = await a_topic(settings)
    await one_batch(settings, name, partition=1, records=25)
    partitions = [TopicPartition(name, p) for p in range(PARTITIONS)]
    consumer = await a_consumer(settings)
    try:
        listed = await consumer.end_offsets(partitions)
        ends = await end_offsets(consumer, partitions)

        assert ends == {tp: (25 if tp.partition == 1 else 0) for tp in partitions}
        assert listed[partitions[1]] <= 25  # the broker's own answer may be short; ours is not
        assert consumer.assignment() == set(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        read = []
        for _ in range(50):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                read.extend(records)
            if len(read) >= 25:
                break
        assert len(read) == 25
    finally:
        await asyncio.wait_for(consumer.stop(), 10)


async def test_a_consumer_stops_right_after_the_ends_are_taken(settings):
    name = await a_topic(settings)
    await one_batch(settings, name, partition=0, records=3)
    partitions = [TopicPartition(name, p) for p in range(PARTITIONS)]
    for _ in range(5):
        consumer = await a_consumer(settings)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        await end_offsets(consumer, partitions)
        await asyncio.wait_for(consumer.stop(), 10)
