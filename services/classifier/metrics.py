"""The classifier worker's Prometheus metrics (labels never carry patient data)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.contract import Status
from shared.loop_stall import LoopStalls


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.loop = LoopStalls(self.registry, "painpath_classifier")
        self.backlog_idle = Counter(
            "painpath_classifier_backlog_idle_seconds",
            "Seconds backlog work waited while fresh events arrived (CLASSIFIER_BACKLOG_SHARE)",
            registry=self.registry,
        )
        self.events = Counter(
            "painpath_classifier_events",
            "Input records, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "painpath_classifier_dead_letters",
            "Records sent to the dead-letter topic, by kind of reason",
            ["kind"],
            registry=self.registry,
        )
        self.determinations = Counter(
            "painpath_classifier_determinations",
            "Determinations published, by status",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "painpath_classifier_processing_seconds",
            "From the record's broker timestamp to its patient being decided",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch = Histogram(
            "painpath_classifier_batch_records",
            "Records per fetched batch",
            buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 25_000),
            registry=self.registry,
        )
        self.lag = Gauge(
            "painpath_classifier_consumer_lag",
            "Input records not yet processed, by partition of pain.events.v1",
            ["partition"],
            registry=self.registry,
        )
        self.reevaluations = Counter(
            "painpath_classifier_reevaluated_patients",
            "Patients re-decided because time passed",
            registry=self.registry,
        )
        self.decided = Counter(
            "painpath_classifier_decided_patients",
            "Patients decided (a determination computed), published or not",
            registry=self.registry,
        )
        self.dirty = Gauge(
            "painpath_classifier_dirty_patients",
            "Patients with admitted events whose determination is not decided and published yet",
            registry=self.registry,
        )
        self.restores = Counter(
            "painpath_classifier_restored_partitions",
            "Partitions whose state was rebuilt (local store, changelog, determinations)",
            registry=self.registry,
        )
        self.restored_records = Counter(
            "painpath_classifier_restored_records",
            "What restores read, by source: local (patients of the local store), changelog and"
            " determinations (records of those topics)",
            ["source"],
            registry=self.registry,
        )
        self.replays = Counter(
            "painpath_classifier_replayed_partitions",
            "Partitions with committed offsets but no checkpoint, replayed from the input's start",
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "painpath_classifier_checkpoints",
            "Checkpoints written (changelog records acknowledged, local store written)",
            registry=self.registry,
        )
        self.changelog_records = Counter(
            "painpath_classifier_changelog_records",
            "Changelog records written: one per changed patient per checkpoint (and parts)",
            registry=self.registry,
        )
        self.checkpoint_seconds = Histogram(
            "painpath_classifier_checkpoint_seconds",
            "Time to write one checkpoint (encode, send, acknowledgement, local store)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.restore_seconds = Histogram(
            "painpath_classifier_restore_seconds",
            "Time to rebuild the state of the partitions of one assignment (read at once)",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.quarantined = Counter(
            "painpath_classifier_quarantined_patients",
            "Patients set aside because deciding them raised, by exception type (once per"
            " failed decision: a new event retries, and may count again)",
            ["error"],
            registry=self.registry,
        )
        self.in_quarantine = Gauge(
            "painpath_classifier_patients_in_quarantine",
            "Patients of the owned partitions set aside now, until a new event or a restore",
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "painpath_classifier_commit_failures",
            "Offset commits refused (a rebalance took the partitions; the records are re-read)",
            registry=self.registry,
        )
        for source in ("local", "changelog", "determinations"):
            self.restored_records.labels(source)
        for outcome in ("new", "duplicate", "dead_letter"):
            self.events.labels(outcome)
        for status in Status:
            self.determinations.labels(status.value)
