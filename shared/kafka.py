"""aiokafka plumbing shared by the services: connection options and topic creation."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.logging import SafeMessage, get_logger
from shared.settings import Settings
from shared.topics import ALL_TOPICS, Topic

log = get_logger("shared.kafka")

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
    *,
    recreate_empty: bool = False,
) -> list[TopicResult]:
    """Create the catalog's topics; topics that exist are checked, never changed.

    Safe to run any number of times. Raises KafkaSetupError when an existing topic has another
    partition count than the catalog's, since that would break co-partitioning.

    `recreate_empty` (a new local broker only): a topic with another partition count that holds
    no record is deleted and created again. A client that asked the new broker for a topic's
    metadata before it was created had it auto-created with the broker's default (the local
    broker's 4 partitions): the services of a `painpath run` reconnecting to a broker that
    replaced a dead one on the same port. A topic holding records is never deleted.
    """
    admin = AIOKafkaAdminClient(**client_options(settings, bootstrap_servers))
    await admin.start()
    try:
        names = {topic.full_name(settings.kafka_topic_prefix): topic for topic in topics}
        created = await _create(admin, settings, names, list(names))
        for _ in range(5 if recreate_empty else 0):
            wrong = [
                name
                for name, partitions in (await _partitions(admin, list(names))).items()
                if partitions != names[name].partitions
            ]
            if not wrong or not await _all_empty(settings, bootstrap_servers, wrong):
                break
            log.warning("auto_created_topics_replaced", topics=wrong)
            await admin.delete_topics(wrong)
            created |= await _create(admin, settings, names, wrong)
        results = []
        for name, partitions in (await _partitions(admin, list(names))).items():
            if partitions != names[name].partitions:
                raise KafkaSetupError(
                    f"topic {name} has {partitions} partitions, the catalog says "
                    f"{names[name].partitions}: recreate it or change the catalog"
                )
            results.append(TopicResult(name, partitions, name in created))
        return sorted(results, key=lambda result: result.name)
    finally:
        await admin.close()


async def _create(admin, settings: Settings, names: dict[str, Topic], which: list[str]) -> set:
    """Create `which` of the catalog's topics; the names created (those that existed left)."""
    response = await admin.create_topics(
        [
            NewTopic(
                name,
                names[name].partitions,
                settings.kafka_replication_factor,
                topic_configs=names[name].topic_configs(),
            )
            for name in which
        ]
    )
    created = set()
    for name, code, message in (error[:3] for error in response.topic_errors):
        if code == 0:
            created.add(name)
        elif code != TOPIC_ALREADY_EXISTS:
            raise KafkaSetupError(f"creating topic {name} failed: error {code} {message}")
    return created


async def _partitions(admin, names: list[str]) -> dict[str, int]:
    return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}


async def _all_empty(settings: Settings, bootstrap_servers: str, names: list[str]) -> bool:
    """Whether no partition of these topics ever held a record (every end offset 0)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_options(settings, bootstrap_servers))
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in consumer.partitions_for_topic(name) or ()
        ]
        ends = await consumer.end_offsets(partitions)
        return all(end == 0 for end in ends.values())
    finally:
        await consumer.stop()


async def end_offsets(consumer, partitions: list) -> dict:
    """Each partition's end offset (the offset the next record will get).

    The local broker (Tansu 0.6) answers ListOffsets with the last *batch*'s base offset + 1,
    short of the true end when that batch holds several records; the high watermark of a fetch
    is right. So the last batch is fetched once and its high watermark taken, waiting only for
    partitions that hold a batch (a partition listed at 0 has none, and a fetch of an empty
    partition is answered only when its wait runs out). When none holds one, `consumer` is not
    touched; otherwise it (never a subscribed one) is left assigned `partitions`, at positions
    the caller must reset.
    """
    listed = await consumer.end_offsets(partitions)
    held = [partition for partition in partitions if listed[partition] > 0]
    if not held:
        return dict(listed)
    if consumer.assignment() != set(partitions):
        # Not re-assigned when it is already: an assignment changed just before the consumer
        # stops can leave aiokafka's fetcher swallowing its cancellation, and `stop()` waiting
        # for ever.
        consumer.assign(partitions)
    for partition in partitions:
        consumer.seek(partition, max(0, listed[partition] - 1))
    for _ in range(50):
        if all(consumer.highwater(partition) is not None for partition in held):
            break
        await consumer.getmany(*held, timeout_ms=100)
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
