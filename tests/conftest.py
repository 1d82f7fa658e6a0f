"""Fixtures: one real broker and one real PostgreSQL per test session, through `LocalStack`.

Each test gets its own topics (a unique topic prefix) and its own database, so tests never see
each other's data. Every log line of the run goes to `test-artifacts/test-run-<pid>.log`; at the end
of the session it is searched for every patient id the tests sent, and any hit fails the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.kafka import create_topics, end_offsets
from shared.logging import configure_logging
from shared.settings import ApiKey, Settings
from shared.stack import Endpoints, LocalStack, StackState
from shared.topics import Topic

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# One file per test session: two sessions on one machine must not write into each other's log.
RUN_LOG = ARTIFACTS / f"test-run-{os.getpid()}.log"
SENT_PATIENT_IDS: set[str] = set()

API_KEY = "test-key-st-olaf"
OTHER_API_KEY = "test-key-other"
TEST_KEYS = [
    ApiKey(name="st-olaf", key=API_KEY, sources=["urn:hospital:st-olaf:*"]),
    ApiKey(name="other", key=OTHER_API_KEY, sources=["urn:hospital:other:ehr"]),
]


def pytest_sessionstart(session: pytest.Session) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    configure_logging("DEBUG", "test-pseudonym-key", stream=RUN_LOG.open("w", buffering=1))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    text = RUN_LOG.read_text() if RUN_LOG.exists() else ""
    for extra in ARTIFACTS.glob("*.stderr.log"):
        text += extra.read_text()
    leaked = sorted(pid for pid in SENT_PATIENT_IDS if pid in text)
    if leaked:
        print(f"\nPRIVACY: {len(leaked)} patient id(s) sent by the tests appear in the logs")
        session.exitstatus = 1


def remember_patient_ids(body: bytes) -> None:
    """Record the patient ids of an event or batch, for the end-of-run log search."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return
    for item in document if isinstance(document, list) else [document]:
        data = item.get("data") if isinstance(item, dict) else None
        patient_id = data.get("patient_id") if isinstance(data, dict) else None
        # Ids shorter than 6 characters would match unrelated text.
        if isinstance(patient_id, str) and len(patient_id) >= 6:
            SENT_PATIENT_IDS.add(patient_id)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackState]:
    # Not under pytest's tmp_path: pytest deletes all but its three newest temporary folders,
    # which would pull the database's files from under a session while another one runs.
    with tempfile.TemporaryDirectory(prefix="painpath-test-stack-") as folder:
        local = LocalStack(Path(folder), broker_port=None)
        state = local.up()
        yield state
        local.down()


@pytest.fixture
async def database_url(stack: StackState) -> AsyncIterator[str]:
    """A fresh database for one test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield stack.database_url.replace("/postgres?", f"/{name}?")
    admin = await asyncpg.connect(stack.database_url)
    await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def settings(stack: StackState, database_url: str) -> Settings:
    """Settings for one test: its own topics (created) and database."""
    settings = Settings(
        kafka_bootstrap_servers=stack.bootstrap_servers,
        database_url=database_url,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        gateway_api_keys=TEST_KEYS,
        log_pseudonym_key="test-pseudonym-key",
        _env_file=None,
    )
    await create_topics(settings, stack.bootstrap_servers)
    return settings


@pytest.fixture
def endpoints(settings: Settings) -> Endpoints:
    return Endpoints(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url.get_secret_value(),
        api_keys=settings.gateway_api_keys,
        coordinator_tokens=settings.coordinator_tokens,
        pseudonym_key="test-pseudonym-key",
        local=False,
    )


@pytest.fixture
async def gateway(settings: Settings, endpoints: Endpoints) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app, started (lifespan) against the real broker and database."""
    from services.gateway.app import create_app

    app = create_app(settings, endpoints)

    async def record(request: httpx.Request) -> None:
        remember_patient_ids(request.content)

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://gateway",
            event_hooks={"request": [record]},
        ) as client,
    ):
        yield client


async def read_topic(settings: Settings, topic: Topic, expected: int, timeout: float = 10.0):
    """Every record of a catalog topic (all partitions, from the start).

    Waits for at least `expected` records, then reads on to the end offsets, so that a test
    also sees records it did not expect.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        name = topic.full_name(settings.kafka_topic_prefix)
        partitions = [TopicPartition(name, p) for p in range(topic.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for items in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(items)
            if len(records) >= expected:
                positions = {tp: await consumer.position(tp) for tp in partitions}
                end = await end_offsets(consumer, partitions)
                if all(positions[tp] >= end[tp] for tp in partitions):
                    break
                for tp in partitions:  # end_offsets moved the consumer: carry on from here
                    consumer.seek(tp, positions[tp])
        return records
    finally:
        await consumer.stop()
