"""The readiness of a consumer group as a whole, as the broker sees it.

A worker's own `/readyz` speaks for its partitions only: after one of two workers is SIGKILLed,
the survivor is ready while the dead one's partitions have no working owner, until the
broker's session timeout runs out and a rebalance hands them over. `GroupWatch` asks the broker
about the whole group instead: its state and members (DescribeGroups), which partitions each
member holds (when the broker says: Apache Kafka does, the local broker Tansu answers with
empty assignments), its committed offsets (OffsetFetch) against the end offsets (a fetch's
high-water mark: the local broker's ListOffsets is short), and, across observations, whether
a partition with records waiting makes progress. Pure judgement (`judge`) apart from the I/O.

The classifier reads two lanes, `pain.events.v1` and `pain.events.backfill.v1`, partition p of
both held by one member (its range assignor), so partition p's offsets are the sum over the
lanes: its lag is what waits on either, and it progresses when either lane's commit moves.

A partition counts as **unowned** when the group is not `Stable` (during a rebalance nobody
consumes; `Empty`: nobody is there) or, when the broker reports assignments, no member holds it;
**stalled** when records wait on it and its committed offset has not moved for
`stall_seconds` (its owner is gone or stuck: what a SIGKILLed member's partitions look like
before its session times out). The group is ready when it has members and no partition is
unowned or stalled. Nothing here names a patient: partitions, offsets and counts only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from shared.kafka import client_options, end_offsets
from shared.settings import Settings
from shared.topics import EVENTS, EVENTS_BACKFILL, Topic

# The classifier's consumer group on pain.events.v1 (the classifier's own constant is
# services/classifier/stream.py GROUP; services share names through shared/, not imports).
CLASSIFIER_GROUP = "painpath-classifier"
STABLE = "Stable"


@dataclass(frozen=True)
class Observation:
    """What the broker said at one moment."""

    state: str
    members: int
    assignments: dict[str, list[int]]  # member id -> partitions of the topic (empty: not told)
    committed: dict[int, int | None]  # partition -> committed offset (None: never committed)
    ends: dict[int, int]  # partition -> end offset


@dataclass
class GroupStatus:
    group: str
    topic: str
    state: str
    members: int
    partitions: int
    assignments_reported: bool
    lag: int
    lag_by_partition: dict[int, int]
    unowned: list[int]
    stalled: list[int]
    ready: bool
    reasons: list[str] = field(default_factory=list)
    lanes: list[str] = field(default_factory=list)  # the topics whose offsets are summed

    def as_dict(self) -> dict:
        document = asdict(self)
        document["lag_by_partition"] = {str(p): lag for p, lag in self.lag_by_partition.items()}
        document["unowned_partitions"] = len(self.unowned)
        document["stalled_partitions"] = len(self.stalled)
        return document

    def describe(self) -> str:
        """One line for a console."""
        owned = self.partitions - len(self.unowned)
        text = (
            f"{self.group}: {'ready' if self.ready else 'NOT READY'}, {self.members} member(s),"
            f" {owned}/{self.partitions} partitions owned, lag {self.lag}"
        )
        return text + "".join(f"; {reason}" for reason in self.reasons)


@dataclass
class _Seen:
    committed: int | None
    since: float  # when the committed offset last moved (or records stopped waiting)


class Tracker:
    """Per partition, since when its committed offset has not moved while records wait."""

    def __init__(self) -> None:
        self._seen: dict[int, _Seen] = {}

    def stalled_for(self, partition: int, committed: int | None, lag: int, now: float) -> float:
        seen = self._seen.get(partition)
        if seen is None or seen.committed != committed or lag == 0:
            self._seen[partition] = _Seen(committed, now)
            return 0.0
        return now - seen.since


def judge(
    group: str,
    topic: Topic,
    observation: Observation,
    tracker: Tracker,
    now: float,
    stall_seconds: float,
) -> GroupStatus:
    partitions = list(range(topic.partitions))
    lag = {
        p: max(0, observation.ends.get(p, 0) - (observation.committed.get(p) or 0))
        for p in partitions
    }
    held = {p for assigned in observation.assignments.values() for p in assigned}
    reported = bool(held)
    reasons = []
    if observation.members == 0:
        unowned = partitions
        reasons.append("no member in the group")
    elif observation.state != STABLE:
        unowned = partitions
        reasons.append(f"the group is {observation.state} (rebalancing): nobody consumes")
    elif reported:
        unowned = [p for p in partitions if p not in held]
        if unowned:
            reasons.append(f"partitions {_ranges(unowned)} held by no member")
    else:
        unowned = []
    stalled = [
        p
        for p in partitions
        if tracker.stalled_for(p, observation.committed.get(p), lag[p], now) >= stall_seconds
        and lag[p] > 0
    ]
    if stalled:
        reasons.append(
            f"partitions {_ranges(stalled)}: records wait, no offset committed for"
            f" {stall_seconds:g} s"
        )
    return GroupStatus(
        group=group,
        topic=topic.name,
        state=observation.state,
        members=observation.members,
        partitions=len(partitions),
        assignments_reported=reported,
        lag=sum(lag.values()),
        lag_by_partition=lag,
        unowned=unowned,
        stalled=[p for p in stalled if p not in unowned],
        ready=observation.members > 0 and not unowned and not stalled,
        reasons=reasons,
    )


def _ranges(partitions: list[int]) -> str:
    spans: list[list[int]] = []
    for partition in sorted(partitions):
        if spans and partition == spans[-1][1] + 1:
            spans[-1][1] = partition
        else:
            spans.append([partition, partition])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def decode_assignment(raw: bytes, topic: str) -> list[int]:
    """A member's partitions of `topic` from DescribeGroups' member_assignment (empty: none)."""
    if not raw:
        return []
    try:
        assignment = ConsumerProtocolMemberAssignment.decode(raw)
    except Exception:  # not the consumer protocol's: nothing we can read
        return []
    return sorted(p for name, ps in assignment.assignment for p in ps if name == topic)


class GroupWatch:
    """Observes one consumer group on its topics (`lanes`: the first one's partitions, and the
    assignments of it, speak for all, see the module); keep it open and call `status()`."""

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        group: str = CLASSIFIER_GROUP,
        lanes: tuple[Topic, ...] = (EVENTS, EVENTS_BACKFILL),
        stall_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        prefix = settings.kafka_topic_prefix
        self.group = f"{prefix}{group}"
        self.topic = lanes[0]
        self.topic_name = self.topic.full_name(prefix)
        assert all(lane.partitions == self.topic.partitions for lane in lanes), lanes
        self.lanes = [lane.full_name(prefix) for lane in lanes]
        self.stall_seconds = (
            settings.classifier_group_stall_seconds if stall_seconds is None else stall_seconds
        )
        self._options = client_options(settings, bootstrap_servers)
        self._clock = clock
        self.tracker = Tracker()
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(**self._options)
        await self._admin.start()
        # Reads committed offsets of the group and end offsets; never joins the group.
        self._consumer = AIOKafkaConsumer(
            **self._options, group_id=self.group, enable_auto_commit=False
        )
        await self._consumer.start()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()
        self._consumer = self._admin = None

    async def __aenter__(self) -> GroupWatch:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def observe(self) -> Observation:
        assert self._admin is not None and self._consumer is not None, "start() first"
        [response] = await self._admin.describe_consumer_groups([self.group])
        state, members, assignments = "Dead", 0, {}
        for described in response.groups:
            error, _, state, _, _, group_members = described[:6]
            if error:
                state = f"error {error}"
                continue
            members = len(group_members)
            assignments = {
                member[0]: decode_assignment(member[-1], self.topic_name)
                for member in group_members
            }
        numbers = range(self.topic.partitions)
        partitions = [TopicPartition(name, p) for name in self.lanes for p in numbers]
        committed = {tp: await self._consumer.committed(tp) for tp in partitions}
        ends = await end_offsets(self._consumer, partitions)
        return Observation(
            state=state,
            members=members,
            assignments=assignments,
            committed={
                p: _sum([committed[tp] for tp in partitions if tp.partition == p]) for p in numbers
            },
            ends={p: sum(ends[tp] for tp in partitions if tp.partition == p) for p in numbers},
        )

    async def status(self) -> GroupStatus:
        observation = await self.observe()
        status = judge(
            self.group, self.topic, observation, self.tracker, self._clock(), self.stall_seconds
        )
        status.lanes = list(self.lanes)
        return status


def _sum(offsets: list[int | None]) -> int | None:
    """A partition's committed offsets over its lanes: None while no lane ever committed."""
    if all(offset is None for offset in offsets):
        return None
    return sum(offset or 0 for offset in offsets)


async def group_status(settings: Settings, bootstrap_servers: str, **options) -> GroupStatus:
    """One observation of the classifier group (a fresh connection; no stall history)."""
    async with GroupWatch(settings, bootstrap_servers, **options) as watch:
        return await watch.status()
