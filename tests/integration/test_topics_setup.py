"""`create_topics` on the real broker: a topic some client auto-created with the broker's default
partition count (4 on the local broker) before the catalog's were made."""

from __future__ import annotations

import secrets

import pytest
from aiokafka import AIOKafkaProducer

from shared.kafka import KafkaSetupError, create_topics
from shared.topics import Topic

pytestmark = pytest.mark.integration


def a_topic() -> Topic:
    return Topic(f"setup-{secrets.token_hex(4)}.v1", "a test topic", 12, "patient_id", "delete", -1)


async def auto_create(settings, topic: Topic, records: int = 0) -> int:
    """Ask the broker for the topic's metadata, which auto-creates it; its partition count."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        name = topic.full_name(settings.kafka_topic_prefix)
        partitions = await producer.partitions_for(name)
        for _ in range(records):
            await producer.send_and_wait(name, b"{}", key=b"pt-setup")
        return len(partitions)
    finally:
        await producer.stop()


async def test_an_empty_auto_created_topic_is_made_again_with_the_catalogs_partitions(settings):
    refused, recreated = a_topic(), a_topic()
    assert await auto_create(settings, refused) == 4
    assert await auto_create(settings, recreated) == 4

    with pytest.raises(KafkaSetupError, match="has 4 partitions, the catalog says 12"):
        await create_topics(settings, settings.kafka_bootstrap_servers, (refused,))
    [result] = await create_topics(
        settings, settings.kafka_bootstrap_servers, (recreated,), recreate_empty=True
    )

    assert (result.partitions, result.created) == (12, True)


async def test_a_topic_holding_records_is_never_deleted(settings):
    topic = a_topic()
    assert await auto_create(settings, topic, records=1) == 4

    with pytest.raises(KafkaSetupError, match="has 4 partitions"):
        await create_topics(
            settings, settings.kafka_bootstrap_servers, (topic,), recreate_empty=True
        )
