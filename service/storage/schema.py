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
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("quota_bytes", BigInteger, nullable=True),  # NULL: unlimited
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
)
Index("ix_api_keys_account", api_keys.c.account_id)

usage_minute = Table(
    "usage_minute",
    metadata,
    Column("account_id", String(40), primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # Unix seconds of the minute's start
    Column("bytes_in", BigInteger, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
)

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
)
Index("ix_batches_claimed_at", batches.c.claimed_at)

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
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at_ms", BigInteger, nullable=False),
)
