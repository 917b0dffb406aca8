"""Table definitions. Times are integer Unix epochs (ms for audit columns, s for usage minutes)
so SQLite and PostgreSQL behave the same and no timezone can be lost on the way."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("quota_bytes", BigInteger, nullable=True),  # NULL: unlimited
    # IANA zone whose calendar months are the balance and billing periods (migration 3).
    Column("billing_timezone", String(64), nullable=False, server_default="UTC"),
    # Quota alerts (migration 4): thresholds as a JSON list of fractions of quota_bytes (NULL: the
    # default [0.8, 1.0]); events are POSTed to webhook_url signed with webhook_secret, which has
    # to be kept in the clear to sign (an HMAC key, like any webhook provider's).
    Column("alert_thresholds", String(200), nullable=True),
    Column("webhook_url", String(2048), nullable=True),
    Column("webhook_secret", String(100), nullable=True),
    # Rotation overlap (migration 5): the replaced secret still signs until rotated_at + overlap.
    Column("webhook_previous_secret", String(100), nullable=True),
    Column("webhook_secret_rotated_at_ms", BigInteger, nullable=True),
    # The billing plan as JSON (service.billing_plan; NULL: the default plan) (migration 8).
    Column("billing_plan", String(1000), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("prefix", String(16), nullable=False),
    # SHA-256 of the whole key: keys are 190+ random bits, so a fast hash is enough and lets the
    # lookup be an index probe; the plaintext is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
    # When the key last authenticated, to the minute (migration 6): written at most once a minute.
    Column("last_used_at_ms", BigInteger, nullable=True),
)
Index("ix_api_keys_account", api_keys.c.account_id)

# Read-only customer tokens (migration 10): scoped to one account, expiring, revocable; stored as
# SHA-256 like api_keys (the plaintext is shown once).
read_tokens = Table(
    "read_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
)
Index("ix_read_tokens_account", read_tokens.c.account_id, read_tokens.c.expires_at_ms)

# Closed billing months (migration 11): the bill as served when the admin closed the month, kept
# byte for byte, and its totals, so records that arrive later show up as an adjustment instead.
closed_periods = Table(
    "closed_periods",
    metadata,
    Column("account_id", String(40), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("month", String(7), primary_key=True),  # YYYY-MM in the account's billing_timezone
    Column("timezone", String(64), nullable=False),
    Column("bill_json", LargeBinary, nullable=False),
    # Decimal strings: a month's totals are exact past 2^63 (sums are made by meterd, not SQL).
    Column("bytes_in", String(40), nullable=False),
    Column("bytes_out", String(40), nullable=False),
    Column("requests", String(40), nullable=False),
    Column("closed_at_ms", BigInteger, nullable=False),
)

# Admin usage adjustments (migration 12): signed deltas at a (node, 5-minute interval), never a
# deletion. The unique idempotency key is inserted in the transaction that applies the delta, so a
# retried adjustment counts once, whatever crashed in between.
adjustments = Table(
    "adjustments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("node_id", String(128), nullable=False),
    Column("bucket", BigInteger, nullable=False),  # the 5-minute interval's start, Unix seconds
    Column("bytes_in", BigInteger, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("reason", String(500), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "idempotency_key", name="uq_adjustments_once"),
)
Index("ix_adjustments_account_bucket", adjustments.c.account_id, adjustments.c.bucket)

usage_minute = Table(
    "usage_minute",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # Unix seconds of the minute's start
    Column("bytes_in", BigInteger, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
)



def _rollup(name: str, *, by_node: bool) -> Table:
    """A usage rollup: sums of the minute rows whose start falls in ``bucket`` (Unix seconds, UTC
    aligned to the table's width). Written in the transaction that writes the minute rows."""
    node = [Column("node_id", String(128), primary_key=True)] if by_node else []
    return Table(
        name,
        metadata,
        Column("account_id", String(40), primary_key=True),
        *node,
        Column("bucket", BigInteger, primary_key=True),
        Column("bytes_in", BigInteger, nullable=False),
        Column("bytes_out", BigInteger, nullable=False),
        Column("requests", BigInteger, nullable=False),
    )


# Account totals at 5 minutes (billing intervals; also local hours/days in zones whose offset is not
# whole hours), 1 hour and 1 UTC day; per-node totals at 1 hour and 1 UTC day.
usage_5m = _rollup("usage_5m", by_node=False)
usage_hour = _rollup("usage_hour", by_node=False)
usage_day = _rollup("usage_day", by_node=False)
usage_node_hour = _rollup("usage_node_hour", by_node=True)
usage_node_day = _rollup("usage_node_day", by_node=True)
# Bucket width in seconds of each account-level table, finest first (the query planner's choice).
ACCOUNT_ROLLUPS: tuple[tuple[int, Table], ...] = (
    (60, usage_minute), (300, usage_5m), (3600, usage_hour), (86400, usage_day))
NODE_ROLLUPS: tuple[tuple[int, Table], ...] = ((3600, usage_node_hour), (86400, usage_node_day))
USAGE_TABLES = (usage_minute, usage_5m, usage_hour, usage_day, usage_node_hour, usage_node_day)

# Every node id an account has written (migration 7): the per-account node cap counts these rows,
# so the per-node rollups (which are kept) cannot grow without bound.
account_nodes = Table(
    "account_nodes",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("node_id", String(128), primary_key=True),
    Column("first_seen_ms", BigInteger, nullable=False),
)

# Billing regions (migration 9): each node's region, set by the admin API or config. The consumer
# adds each flush's usage to its node's region at 5 minutes, as mapped when it counts the usage
# (region "" is the default region: nodes without a mapping), so a bill never moves afterwards.
node_regions = Table(
    "node_regions",
    metadata,
    Column("node_id", String(128), primary_key=True),
    Column("region", String(64), nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)
Index("ix_node_regions_region", node_regions.c.region)
usage_region_5m = Table(
    "usage_region_5m",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("region", String(64), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),
    Column("bytes_in", BigInteger, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
)

# One row per (account, period, threshold) crossed: the unique key is what makes "once per
# threshold per period" hold across flushes, consumers and restarts.
quota_events = Table(
    "quota_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("period_start", BigInteger, nullable=False),  # Unix seconds
    Column("period_end", BigInteger, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("threshold_ppm", BigInteger, nullable=False),  # threshold x 10^6
    Column("quota_bytes", BigInteger, nullable=False),
    Column("used_bytes", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("account_id", "period_start", "threshold_ppm", name="uq_quota_events_once"),
)
Index("ix_quota_events_account", quota_events.c.account_id, quota_events.c.created_at_ms)

# Durable outbox of webhook deliveries, written in the transaction that records the event.
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("event_id", String(40), ForeignKey("quota_events.id", ondelete="CASCADE"), primary_key=True),
    Column("account_id", String(40), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_ms", BigInteger, nullable=False),  # also the claim lease while sending
    Column("delivered_at_ms", BigInteger, nullable=True),
    Column("failed_at_ms", BigInteger, nullable=True),  # gave up after the last attempt
    Column("last_error", String(300), nullable=True),
    Column("last_status", Integer, nullable=True),  # the receiver's last HTTP status (migration 5)
)
Index("ix_webhook_outbox_due", webhook_outbox.c.delivered_at_ms, webhook_outbox.c.failed_at_ms,
      webhook_outbox.c.next_attempt_ms)

# One row per batch_id a writer accepted (the claim, made before the batch is acknowledged) and,
# once the consumer counted it, when. The claim makes a reused batch_id with other records an
# ALREADY_EXISTS on every writer replica; applied_at_ms makes counting it twice impossible.
batches = Table(
    "batches",
    metadata,
    Column("dedupe_key", String(300), primary_key=True),
    Column("digest", LargeBinary(32), nullable=False),
    Column("records", Integer, nullable=False),
    Column("claimed_at", BigInteger, nullable=False),  # Unix seconds, for retention
    Column("applied_at_ms", BigInteger, nullable=True),  # NULL: acknowledged, not counted yet
    # Unix seconds of the batch's latest record (migration 7): its id is kept until no record of
    # it can be accepted again. NULL (older claims, ids the consumer inserts): claimed_at stands in.
    Column("latest_record_s", BigInteger, nullable=True),
)
Index("ix_batches_claimed_at", batches.c.claimed_at)
Index("ix_batches_latest_record", batches.c.latest_record_s)

# The durable log between writer and consumer when no Kafka is configured: a row is appended (in
# the claim's transaction) before the writer acknowledges, and deleted in the transaction that
# counts it, so what is here is exactly what is acknowledged and not yet counted.
ingest_log = Table(
    "ingest_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("dedupe_key", String(300), nullable=False),
    Column("records", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),  # a serialized pipeline TrafficBatch
    Column("traceparent", String(64), nullable=True),
    Column("appended_at_ms", BigInteger, nullable=False),
    sqlite_autoincrement=True,  # a deleted seq is never handed out again
)

# The database log's dead-letter topic: rows it could not count, with the reason.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("dedupe_key", String(300), nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(1000), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("group_id", String(200), primary_key=True),
    Column("topic", String(200), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    # A fingerprint of the message at next_offset - 1 (migration 7): a log reset under the stored
    # offset is detected by that message being different or missing, whatever the new log's length.
    Column("last_mark", String(64), nullable=True),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at_ms", BigInteger, nullable=False),
)
