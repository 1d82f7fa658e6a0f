"""aiokafka plumbing shared by the services: connection options and topic creation."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.logging import SafeMessage
from shared.settings import Settings
from shared.topics import ALL_TOPICS, Topic

TOPIC_ALREADY_EXISTS = 36


class KafkaSetupError(SafeMessage, RuntimeError):
    """The broker's topics are not as the catalog says."""


def client_options(settings: Settings, bootstrap_servers: str) -> dict[str, object]:
    """Options every aiokafka client takes: bootstrap servers, SASL and TLS."""
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                str(settings.kafka_ssl_certfile),
                str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            )
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return options


def reliable_producer(settings: Settings, bootstrap_servers: str) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (`acks=all`) before a send counts.

    Not idempotent: the local broker has no idempotent producer, so delivery is at-least-once
    and consumers deduplicate by the event's (source, id).
    """
    return AIOKafkaProducer(
        **client_options(settings, bootstrap_servers),
        acks="all",
        linger_ms=5,
        compression_type=None,
    )


@dataclass(frozen=True)
class TopicResult:
    name: str
    partitions: int
    created: bool


async def create_topics(
    settings: Settings,
    bootstrap_servers: str,
    topics: tuple[Topic, ...] = ALL_TOPICS,
) -> list[TopicResult]:
    """Create the catalog's topics; topics that exist are checked, never changed.

    Safe to run any number of times. Raises KafkaSetupError when an existing topic has another
    partition count than the catalog's, since that would break co-partitioning.
    """
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap_servers))
    await admin.start()
    try:
        names = {topic.full_name(settings.kafka_topic_prefix): topic for topic in topics}
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    topic.partitions,
                    settings.kafka_replication_factor,
                    topic_configs=topic.topic_configs(),
                )
                for name, topic in names.items()
            ]
        )
        created = set()
        for name, code, message in (error[:3] for error in response.topic_errors):
            if code == 0:
                created.add(name)
            elif code != TOPIC_ALREADY_EXISTS:
                raise KafkaSetupError(f"creating topic {name} failed: error {code} {message}")
        described = await admin.describe_topics(list(names))
        results = []
        for description in described:
            name = description["topic"]
            partitions = len(description["partitions"])
            if partitions != names[name].partitions:
                raise KafkaSetupError(
                    f"topic {name} has {partitions} partitions, the catalog says "
                    f"{names[name].partitions}: recreate it or change the catalog"
                )
            results.append(TopicResult(name, partitions, name in created))
        return sorted(results, key=lambda result: result.name)
    finally:
        await admin.close()


async def end_offsets(consumer, partitions: list) -> dict:
    """Each partition's end offset (the offset the next record will get).

    The local broker (Tansu 0.6) answers ListOffsets with the last *batch*'s base offset + 1,
    short of the true end when that batch holds several records; the high watermark of a fetch
    is right. So the last batch is fetched once and its high watermark taken. `consumer` must not
    be subscribed: its assignment is replaced.
    """
    listed = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    for partition in partitions:
        consumer.seek(partition, max(0, listed[partition] - 1))
    for _ in range(50):
        if all(consumer.highwater(partition) is not None for partition in partitions):
            break
        await consumer.getmany(*partitions, timeout_ms=100)
    return {p: max(listed[p], consumer.highwater(p) or 0) for p in partitions}


async def group_lag(settings: Settings, bootstrap_servers: str, group: str, topic: Topic) -> int:
    """Records of `topic` the consumer group `group` has not committed yet (all partitions)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    # A consumer of the group that never joins it: it reads committed offsets and end offsets.
    consumer = AIOKafkaConsumer(
        **client_options(settings, bootstrap_servers), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = topic.full_name(settings.kafka_topic_prefix)
        partitions = [TopicPartition(name, p) for p in range(topic.partitions)]
        committed = {tp: await consumer.committed(tp) or 0 for tp in partitions}
        end = await end_offsets(consumer, partitions)
        return sum(end[tp] - committed[tp] for tp in partitions)
    finally:
        await consumer.stop()
