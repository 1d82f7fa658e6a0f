"""The benchmark's plumbing: service processes, databases, topics, producing and reading records."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.contract.records import partition_of
from shared.db import migrate
from shared.kafka import create_topics, end_offsets
from shared.ports import free_port
from shared.settings import Settings
from shared.topics import EVENTS, Topic

Record = tuple[bytes, bytes]  # (key, value)


def _status_bytes(pid: int, field: str) -> int | None:
    """A memory field of `/proc/<pid>/status` (given in kB there), in bytes, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set size so far (VmHWM), or None when it cannot be read."""
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int | None:
    """The process's resident set size now (VmRSS), or None when it cannot be read."""
    return _status_bytes(pid, "VmRSS")


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system) the process has used so far, or None when it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15


@dataclass
class Service:
    """One `python -m painpath ...` process, logging to a file."""

    name: str
    args: list[str]
    port: int
    ready_path: str
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen | None = None
    peak_rss: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "painpath", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited at start ({self.process.returncode}):"
                        f" see {self.log_dir / (self.name + '.log')}"
                    )
                try:
                    if (await client.get(self.url + self.ready_path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s")
                await asyncio.sleep(0.05)  # to 50 ms: the takeover figure counts it

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.peak_rss = peak_rss_bytes(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Bench:
    """What every phase shares: the local stack's addresses, and where things go."""

    bootstrap_servers: str
    admin_database_url: str
    work_dir: Path
    as_of: str
    broker_pid: int | None = None
    api_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)

    async def database(self, name: str) -> str:
        """A fresh, migrated database of the local PostgreSQL."""
        admin = await asyncpg.connect(self.admin_database_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        url = self.admin_database_url.replace("/postgres?", f"/{name}?")
        await migrate(url)
        return url

    async def settings(self, prefix: str, database_url: str) -> Settings:
        """Settings of one phase (its own topics, created) for the in-process clients."""
        settings = Settings(
            kafka_bootstrap_servers=self.bootstrap_servers,
            database_url=database_url,
            kafka_topic_prefix=prefix,
            _env_file=None,
        )
        await create_topics(settings, self.bootstrap_servers)
        return settings

    def env(self, prefix: str, database_url: str, state_dir: Path) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("KAFKA_", "GATEWAY_", "CLASSIFIER_", "COORDINATOR_"))
            and name not in ("DATABASE_URL", "LOG_PSEUDONYM_KEY", "PAINPATH_STATE_DIR")
        }
        state_dir.mkdir(parents=True, exist_ok=True)
        return env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": database_url,
            "KAFKA_TOPIC_PREFIX": prefix,
            "PAINPATH_STATE_DIR": str(state_dir),
            "GATEWAY_API_KEYS": json.dumps(
                [{"name": "bench", "key": self.api_key, "sources": ["*"]}]
            ),
            "COORDINATOR_TOKENS": json.dumps(
                [{"name": "bench", "token": self.admin_token, "role": "admin"}]
            ),
            "LOG_PSEUDONYM_KEY": "bench-pseudonym-key",
            "LOG_LEVEL": "INFO",
            # Determinations made at one instant, so that runs and the reference compare.
            "CLASSIFIER_AS_OF": self.as_of,
            "CLASSIFIER_SESSION_TIMEOUT_SECONDS": "3",
            "COORDINATOR_SESSION_TIMEOUT_SECONDS": "6",
        }

    def classifier(
        self, name: str, env: dict[str, str], log_dir: Path, state_dir: Path | None = None
    ) -> Service:
        """A classifier worker with a local state directory of its own (`CLASSIFIER_STATE_DIR`,
        `<log_dir>/state/<name>` unless given): kept across a restart of the same `Service`, and
        empty for a worker started under a new name (a takeover)."""
        port = free_port()
        state_dir = state_dir or log_dir / "state" / name
        state_dir.mkdir(parents=True, exist_ok=True)
        env = env | {"CLASSIFIER_STATE_DIR": str(state_dir)}
        return Service(name, ["classifier", "--port", str(port)], port, "/readyz", env, log_dir)

    def gateway(self, env: dict[str, str], log_dir: Path) -> Service:
        port = free_port()
        return Service(
            "gateway", ["gateway"], port, "/readyz", env | {"GATEWAY_PORT": str(port)}, log_dir
        )

    def coordinator(self, env: dict[str, str], log_dir: Path) -> Service:
        port = free_port()
        return Service(
            "coordinator", ["coordinator", "--port", str(port)], port, "/readyz", env, log_dir
        )


def as_records(lines: list[str]) -> list[Record]:
    """Feed lines as records keyed by patient, as a hospital's producer would send them."""
    records = []
    for text in lines:
        try:
            key = json.loads(text)["data"]["patient_id"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            key = b"unparseable"
        records.append((key, text.encode()))
    return records


# The simulator's patient ids (`sim-000001`) and event ids (`ehr-000001`, per source) restart
# at 1 in every feed: feeds meant to share topics and a database are relabelled apart.
_SIMULATED_ID = re.compile(r'"(sim|ehr|pharmacy|lab)-(?=[0-9])')


def relabel(lines: list[str], tag: str) -> list[str]:
    """The feed with `tag` put before every patient id and event id (references of retractions
    included), so that it shares no patient and no event with another feed."""
    replacement = '"' + tag + r"\1-"
    return [_SIMULATED_ID.sub(replacement, line) for line in lines]


async def produce(bootstrap_servers: str, topic: str, records: list[Record], advance=None) -> None:
    """Every record onto `topic` as fast as the client can, partitioned like Kafka's default
    partitioner (murmur2 of the key), each partition in the records' order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        by_partition: dict[int, list[Record]] = defaultdict(list)
        for key, value in records:
            by_partition[partition_of(key, EVENTS.partitions)].append((key, value))
        sent: list[asyncio.Future] = []

        async def send(batch, partition: int, count: int) -> None:
            future = await producer.send_batch(batch, topic, partition=partition)
            if advance is not None:
                future.add_done_callback(lambda _: advance(count))
            sent.append(future)

        for partition, items in by_partition.items():
            batch, count = producer.create_batch(), 0
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    await send(batch, partition, count)
                    batch, count = producer.create_batch(), 0
                    batch.append(key=key, value=value, timestamp=None)
                count += 1
            batch.close()
            await send(batch, partition, count)
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_all(bootstrap_servers: str, topic: str, partitions: int, handle) -> int:
    """Call `handle(record)` for every record of `topic` up to its end offsets; return how many."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        end = await end_offsets(consumer, tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        count = 0
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=20_000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset < end[tp]:
                        handle(message)
                        count += 1
                if messages and messages[-1].offset >= end[tp] - 1:
                    remaining.discard(tp)
        return count
    finally:
        await consumer.stop()


def topic_name(topic: Topic, prefix: str) -> str:
    return topic.full_name(prefix)
