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

seen_batches = Table(
    "seen_batches",
    metadata,
    Column("dedupe_key", String(300), primary_key=True),
    Column("digest", LargeBinary(32), nullable=False),
    Column("seen_at", BigInteger, nullable=False),  # Unix seconds, for retention
)
Index("ix_seen_batches_seen_at", seen_batches.c.seen_at)

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
