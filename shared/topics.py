"""The topic catalog: every Kafka topic Painpath uses, its partitions, retention, key and cleanup.

Topics are created explicitly (`painpath topics create`) before any worker starts: a topic
auto-created on first use gets the broker's default partition count, which breaks the
co-partitioning that keeps one patient's events, state and outputs on the same partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    summary: str
    partitions: int
    key: str
    cleanup_policy: Literal["delete", "compact"]
    retention_ms: int  # -1 keeps records forever
    configs: dict[str, str] = field(default_factory=dict)

    def full_name(self, prefix: str = "") -> str:
        """The name on the broker: `prefix` lets several deployments or tests share one cluster."""
        return f"{prefix}{self.name}"

    def topic_configs(self) -> dict[str, str]:
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            **self.configs,
        }


# Patients' events, determinations and tasks share one partition count, so that a patient's
# input, classifier state and outputs stay co-partitioned.
PATIENT_PARTITIONS = 12

EVENTS = Topic(
    name="pain.events.v1",
    summary="Validated clinical events (CloudEvents 1.0, structured JSON), the system's input.",
    partitions=PATIENT_PARTITIONS,
    key="patient_id",
    cleanup_policy="delete",
    # Kept forever: the classifier's state can always be rebuilt, or re-decided under a new
    # policy, by replaying every patient's history from the start.
    retention_ms=-1,
)

# The backfill lane: the same events, keyed and partitioned the same way, for bulk loads (a site's
# years of history when it joins, a re-import). The classifier and the coordinator read it after
# the live topic, so that a backfill never makes live traffic wait behind it.
EVENTS_BACKFILL = Topic(
    name="pain.events.backfill.v1",
    summary=(
        "Bulk loads of the same clinical events (history sent in bulk): read after"
        " pain.events.v1, so that live events never wait behind a backfill."
    ),
    partitions=PATIENT_PARTITIONS,
    key="patient_id",
    cleanup_policy="delete",
    retention_ms=-1,  # part of every patient's history, as pain.events.v1
)

EVENTS_DLQ = Topic(
    name="pain.events.dlq.v1",
    summary=(
        "Rejected input: the original bytes, key and headers, plus headers naming the reason,"
        " the original topic, partition and offset."
    ),
    partitions=3,
    key="the original message key",
    cleanup_policy="delete",
    retention_ms=30 * DAY_MS,
)

DETERMINATIONS = Topic(
    name="pain.determinations.v1",
    summary="Refractory determinations, published when a patient's status or evidence changes.",
    partitions=PATIENT_PARTITIONS,
    key="patient_id",
    # The latest determination per patient is what matters to a new consumer.
    cleanup_policy="compact",
    retention_ms=-1,
)

DETERMINATIONS_BACKFILL = Topic(
    name="pain.determinations.backfill.v1",
    summary=(
        "Determinations caused by backfill events alone (the same contract as"
        " pain.determinations.v1): read after it. Of two determinations of a patient, the one"
        " as of the later instant is the patient's."
    ),
    partitions=PATIENT_PARTITIONS,
    key="patient_id",
    cleanup_policy="compact",
    retention_ms=-1,
)

CARE_TASKS = Topic(
    name="care.tasks.v1",
    summary="Care-plan task changes from the coordinator's outbox, with a gap-free sequence.",
    partitions=PATIENT_PARTITIONS,
    key="patient_id",
    # Not compacted: consumers detect gaps from the sequence numbers, so every change stays.
    cleanup_policy="delete",
    retention_ms=90 * DAY_MS,
)

# Internal: the classifier's state, read only by the classifier itself.
CLASSIFIER_CHANGELOG = Topic(
    name="painpath.classifier.changelog.v1",
    summary=(
        "The classifier's state: at each checkpoint, one record per changed patient (the"
        " patient's admitted events, compressed) and a checkpoint marker, on the partition of"
        " the patient's input records."
    ),
    partitions=PATIENT_PARTITIONS,
    key="patient_id (a large state's parts: patient_id NUL number; the marker: NUL checkpoint)",
    # The latest record of a key is its state: compaction keeps one per patient. Correctness
    # never depends on it (the local broker has none), only the time a new owner takes.
    cleanup_policy="compact",
    retention_ms=-1,
)

# The topics other systems read or write: documented in the AsyncAPI document.
CATALOG: tuple[Topic, ...] = (
    EVENTS,
    EVENTS_BACKFILL,
    EVENTS_DLQ,
    DETERMINATIONS,
    DETERMINATIONS_BACKFILL,
    CARE_TASKS,
)
# Every topic `painpath topics create` makes.
ALL_TOPICS: tuple[Topic, ...] = (*CATALOG, CLASSIFIER_CHANGELOG)
