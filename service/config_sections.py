"""The sections of meterd's configuration (``http``, ``grpc``, ``kafka``, ``consumer``, ...): one pydantic
model each, strict about unknown keys. config.py assembles them into ``Settings`` and loads them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


def default_data_dir() -> Path:
    """The user's data dir (XDG), so every command finds the same database whatever the working directory."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "meterd"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # A request whose headers are not complete by then is answered 408 and closed (slowloris).
    header_timeout_seconds: float = Field(10.0, gt=0)
    # ...and one whose body is not complete by then gets 408 (slow-body attacks need a valid key).
    body_timeout_seconds: float = Field(10.0, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)


class GrpcSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    max_message_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # Every client-holdable resource is bounded: streams per connection and per key, connection life.
    max_concurrent_streams: int = Field(100, gt=0, description="per HTTP/2 connection")
    max_streams_per_key: int = Field(16, gt=0, description="open WriteStreams per principal, all connections")
    max_connection_age_seconds: float = Field(1800.0, gt=0)
    max_connection_age_grace_seconds: float = Field(30.0, ge=0, description="for calls still running at max age")
    max_connection_idle_seconds: float = Field(300.0, gt=0)

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_age_ms", int(self.max_connection_age_seconds * 1000)),
            ("grpc.max_connection_age_grace_ms", int(self.max_connection_age_grace_seconds * 1000)),
            ("grpc.max_connection_idle_ms", int(self.max_connection_idle_seconds * 1000)),
        ]


class AdminSettings(_Section):
    """Port for /metrics, /healthz, /readyz of roles that serve no user HTTP (writer, consumer)."""

    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, le=65535)


class DatabaseSettings(_Section):
    # None: a SQLite file in data_dir. Production: postgresql+asyncpg://user:pass@host/db
    url: SecretStr | None = None
    pool_size: int = Field(10, gt=0)
    echo: bool = False
    # FULL: an acknowledged batch survives power loss; NORMAL survives only a crash of meterd.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"


class KafkaSettings(_Section):
    # Empty: the log is the database table ingest_log (every role); set for Kafka.
    bootstrap_servers: str = ""
    topic: str = "meterd.traffic.v1"
    dlq_topic: str = "meterd.traffic.v1.dlq"
    partitions: int = Field(4, gt=0)
    replication_factor: int = Field(1, gt=0)
    create_topics: bool = True
    # Tansu rejects InitProducerId, so idempotence is off by default; batch_id dedupe keeps
    # correctness either way. Turn it on against Apache Kafka.
    enable_idempotence: bool = False
    linger_ms: int = Field(2, ge=0)
    request_timeout_ms: int = Field(10_000, gt=0)
    group_id: str = "meterd-aggregator"


class IngestSettings(_Section):
    max_batch_records: int = Field(10_000, gt=0)
    max_past_seconds: int = Field(7 * 24 * 3600, gt=0)
    max_future_seconds: int = Field(300, ge=0)
    # Per-record ceilings keep per-minute sums far from BIGINT overflow.
    max_bytes_per_record: int = Field(1 << 44, gt=0)
    max_requests_per_record: int = Field(1 << 32, gt=0)
    account_cache_seconds: float = Field(1.0, ge=0)
    ack_cache_size: int = Field(200_000, ge=0)
    # Database log (no Kafka configured): writes are refused with UNAVAILABLE while this many
    # acknowledged records wait to be counted, so the log's disk use stays bounded.
    log_max_pending_records: int = Field(5_000_000, gt=0)
    # Concurrent writes committed together in one database transaction (group commit).
    claim_group_max_batches: int = Field(256, gt=0)
    # Distinct node ids per account: a batch adding nodes beyond it is refused (each node keeps
    # per-node rollup rows for ever, so this bounds the data dir per account).
    max_nodes_per_account: int = Field(10_000, gt=0)


class ConsumerSettings(_Section):
    flush_interval_seconds: float = Field(1.0, gt=0)
    max_buffer_records: int = Field(200_000, gt=0)
    fetch_max_records: int = Field(2_000, gt=0)
    # How long a batch id is remembered after its latest record's time (plus ingest.max_future_seconds
    # for clock differences); at least ingest.max_past_seconds, so no retry it dedupes is accepted later.
    dedupe_retention_seconds: int = Field(7 * 24 * 3600, gt=0)
    # Database log: how often an idle consumer looks for new rows (a local writer also wakes it).
    log_poll_seconds: float = Field(0.2, gt=0)
    # Kafka: what to do when a stored offset is past the end of its partition (the topic was
    # recreated or the broker reset): "earliest" counts the new log from its start (batch ids
    # still dedupe replays), "halt" stops consuming that partition until an operator acts.
    on_stale_offsets: Literal["earliest", "halt"] = "earliest"
    # On SIGTERM, how long the consumer keeps counting what is already in the log before it stops.
    drain_seconds: float = Field(20.0, ge=0)
    # How long per-minute usage rows are kept (step=1m queries); the 5-minute, hourly and daily
    # rollups are kept for ever.
    minute_retention_seconds: int = Field(90 * 24 * 3600, gt=0)
    # A flush that fails the same way this many times in a row is split until the batch that fails
    # alone is found; that batch goes to the dead letters and everything behind it is counted.
    poison_attempts: int = Field(3, ge=1)
    # Database log: one read (one flush) holds at most this many records and payload bytes (at
    # least one row), and stops before the row that could take it past max_flush_keys distinct
    # (account, node, minute) sums; what drives the consumer's memory is these, not the row count.
    read_max_records: int = Field(20_000, gt=0)
    read_max_bytes: int = Field(8 * 1024 * 1024, gt=0)
    max_flush_keys: int = Field(20_000, gt=0)
    # Claims of batches never counted (a Kafka produce that failed and was not retried, a
    # dead-lettered row); keep them longer than a message can wait in Kafka.
    unapplied_claim_retention_seconds: int = Field(30 * 24 * 3600, gt=0)
    # Quota events (GET /v1/accounts/{id}/events) once their webhook is done, and dead letters.
    quota_event_retention_seconds: int = Field(400 * 24 * 3600, gt=0)
    dead_letter_retention_seconds: int = Field(90 * 24 * 3600, gt=0)


class WebhookSettings(_Section):
    """Quota-alert webhook deliveries (run by the consumer role, from the durable outbox)."""
    poll_interval_seconds: float = Field(1.0, gt=0)
    timeout_seconds: float = Field(10.0, gt=0)
    retry_base_seconds: float = Field(5.0, gt=0)  # doubled per attempt, with jitter
    retry_max_seconds: float = Field(3600.0, gt=0)
    max_attempts: int = Field(15, gt=0)  # about a day of retries at the defaults, then given up
    # timeout_seconds is the whole attempt's deadline (resolve, connect, send, read the status and
    # at most 4 KiB of the answer); attempts run in their own tasks, at most this many at once.
    max_concurrent_deliveries: int = Field(16, gt=0, le=1000)
    # Loopback, private, link-local, metadata and other non-global addresses, checked on every
    # attempt after resolving the host. None: allowed in development mode (`meterd up`, whose
    # receivers are often on the same machine), refused in production mode (the roles).
    allow_private_destinations: bool | None = None
    secret_overlap_seconds: int = Field(86400, ge=0, le=30 * 86400)  # the old secret still signs this long
    retention_seconds: int = Field(30 * 86400, ge=3600)  # delivered / given-up outbox rows are purged after
    failure_log_interval_seconds: float = Field(60.0, ge=0)  # at most one failed-attempt line per account

    def private_destinations_allowed(self, mode: str) -> bool:
        if self.allow_private_destinations is not None:
            return self.allow_private_destinations
        return mode == "development"


REGION_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"  # billing region names


class BillingSettings(_Section):
    """Billing regions: nodes named here are written to the region map at every start (overwriting
    an admin API change to the same node); nodes without a region bill in ``default_region``."""
    default_region: str = Field("default", pattern=REGION_NAME)
    node_regions: dict[Annotated[str, Field(min_length=1, max_length=128)],
                       Annotated[str, Field(pattern=REGION_NAME)]] = Field(default_factory=dict, max_length=10_000)
    # Ended months are closed this long after their end (None: ingest.max_past_seconds, the late
    # window); 0 turns automatic closing off. Checked every close_poll_seconds by the consumer role.
    auto_close_after_seconds: int | None = Field(None, ge=0)
    close_poll_seconds: float = Field(600.0, gt=0)

    @model_validator(mode="after")
    def _not_the_default(self) -> BillingSettings:
        named = sorted(n for n, r in self.node_regions.items() if r == self.default_region)
        if named:
            raise ValueError(f"node_regions maps {named[:3]} to default_region {self.default_region!r}; "
                             "nodes without a mapping already bill there, leave them out")
        return self


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"
