"""Settings from the environment, in one place (see the README's settings table).

Everything is read from environment variables (or a `.env` file in the working directory).
When no broker or database is configured, the services fall back to the local stack started
by `painpath stack up` (see `painpath.stack`): that is the embedded default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiKey(BaseModel):
    """One source system's key and the `source` values it may use (exact, or a prefix + `*`)."""

    name: str = Field(min_length=1, description="label used in logs and metrics, never the key")
    key: SecretStr
    sources: list[str] = Field(min_length=1)

    def may_publish(self, source: str) -> bool:
        return any(
            source.startswith(allowed[:-1]) if allowed.endswith("*") else source == allowed
            for allowed in self.sources
        )


TokenRole = Literal[
    "admin",
    "coordinator",
    "pain_specialist",
    "physical_therapist",
    "pain_psychologist",
    "pharmacist",
    "interventionalist",
    "care_coordinator",
]


class ApiToken(BaseModel):
    """A coordinators' API bearer token: `admin` and `coordinator` see every task, a clinician
    role its role's tasks."""

    name: str = Field(min_length=1, description="who: shown in the audit trail, never the token")
    token: SecretStr
    role: TokenRole


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Kafka
    kafka_bootstrap_servers: str | None = None
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_topic_prefix: str = ""
    kafka_replication_factor: int = Field(default=1, ge=1)
    kafka_request_timeout_ms: int = Field(default=30_000, gt=0)

    # PostgreSQL
    database_url: SecretStr | None = None
    database_pool_max: int = Field(default=10, gt=0)

    # Gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=1, le=65535)
    gateway_api_keys: list[ApiKey] = Field(default_factory=list)
    gateway_max_body_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    gateway_idempotency_retention_days: int = Field(default=30, gt=0)

    # Classifier
    classifier_host: str = "127.0.0.1"
    classifier_port: int = Field(default=8081, ge=1, le=65535)
    classifier_policy_file: Path | None = None
    # POLICY.md: status changes as time passes, so patients are re-evaluated at least daily.
    classifier_reevaluate_seconds: float = Field(default=3600, gt=0, le=86400)
    classifier_as_of: AwareDatetime | None = None
    classifier_session_timeout_seconds: float = Field(default=10, gt=0)
    classifier_group_stall_seconds: float = Field(default=45, gt=0)
    # Parsed events kept for the patients of live traffic (about 2 KB each), per worker.
    classifier_cache_events: int = Field(default=20_000, ge=0)
    classifier_fetch_wait_ms: int = Field(default=20, ge=0)
    classifier_max_batch: int = Field(default=10_000, gt=0)
    # Backfill-lane records a loop takes when the live lane has little: a live event waits behind
    # at most this many (about 30 ms of admission).
    classifier_backfill_batch: int = Field(default=1_000, gt=0)
    classifier_decision_delay_seconds: float = Field(default=5, ge=0)
    # A decision pass is decided a slice of about this long at a time, live events in between.
    classifier_decision_slice_seconds: float = Field(default=0.025, gt=0)
    # A record read within this long of its broker timestamp is live: its patient is decided at
    # once, even while a backlog waits for its pass (0: every record waits with the backlog).
    classifier_live_seconds: float = Field(default=1, ge=0)
    # While such fresh records arrive, backlog work (backfill-lane batches, decision passes)
    # takes at most this share of a worker's CPU; the rest is left to the live path (1: no limit).
    classifier_backlog_share: float = Field(default=0.5, gt=0, le=1)
    # The local store, a RocksDB folder per partition (default $PAINPATH_STATE_DIR/classifier-state)
    classifier_state_dir: Path | None = None
    # A checkpoint once every waiting patient is decided, at most this often ...
    classifier_checkpoint_seconds: float = Field(default=1, ge=0)
    # ... and at least this often while a backlog keeps patients waiting.
    classifier_checkpoint_max_seconds: float = Field(default=30, gt=0)
    # Static group membership (KIP-345): a worker restarted with the same id gets its partitions
    # back without a rebalance. One per worker (a pod name); unset: dynamic membership.
    classifier_group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)

    # Coordinator
    coordinator_host: str = "127.0.0.1"
    coordinator_port: int = Field(default=8090, ge=1, le=65535)
    coordinator_tokens: list[ApiToken] = Field(default_factory=list)
    coordinator_templates_file: Path | None = None
    coordinator_roster_file: Path | None = None
    coordinator_session_timeout_seconds: float = Field(default=10, gt=0)
    coordinator_fetch_wait_ms: int = Field(default=50, ge=0)
    # While live determinations flow, a backfill-lane batch is cut to about this long.
    coordinator_backfill_slice_seconds: float = Field(default=0.025, gt=0)
    # ... and a backfill consumer then waits, so that it takes at most this share of the time.
    coordinator_backlog_share: float = Field(default=0.5, gt=0, le=1)

    # Every consumer: not ready when records wait but none was processed for this long
    progress_watchdog_seconds: float = Field(default=60, gt=0)

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_pseudonym_key: SecretStr | None = None

    # The local stack (`painpath stack up`): where it keeps pids, logs and data; its broker's port.
    painpath_state_dir: Path = Path(".painpath")
    painpath_broker_port: int = Field(default=19092, ge=1, le=65535)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
