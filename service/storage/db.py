"""Engine creation and schema migrations."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event, inspect, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.storage import schema


def _initial(conn: Connection) -> None:
    tables = [t for t in schema.metadata.sorted_tables if t is not schema.schema_migrations]
    schema.metadata.create_all(conn, tables=tables, checkfirst=True)


def _batches_and_log(conn: Connection) -> None:
    # seen_batches (v1) becomes batches: the same ids, now also claimed by the writer.
    new = [schema.batches, schema.ingest_log, schema.dead_letters]
    schema.metadata.create_all(conn, tables=new, checkfirst=True)
    if inspect(conn).has_table("seen_batches"):
        conn.execute(text("INSERT INTO batches (dedupe_key, digest, records, claimed_at, applied_at_ms) "
                          "SELECT dedupe_key, digest, 0, seen_at, seen_at * 1000 FROM seen_batches"))
        conn.execute(text("DROP TABLE seen_batches"))


def _add_missing_columns(conn: Connection, table_name: str, names: list[str]) -> None:
    # Version 1 creates every table of the current metadata, so on a fresh database the columns a
    # later version adds already exist; an upgraded one lacks them.
    have = {c["name"] for c in inspect(conn).get_columns(table_name)}
    table = schema.metadata.tables[table_name]
    for name in names:
        if name in have:
            continue
        col = table.c[name]
        ddl = col.type.compile(dialect=conn.dialect)
        # The schema's server defaults are all DefaultClause (literal text), which has .arg.
        default = f" DEFAULT '{col.server_default.arg}'" if col.server_default is not None else ""  # type: ignore[attr-defined]
        null = "" if col.nullable else " NOT NULL"
        conn.execute(text(f'ALTER TABLE {table_name} ADD COLUMN {name} {ddl}{default}{null}'))


def _rollups(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=list(schema.USAGE_TABLES[1:]), checkfirst=True)
    _add_missing_columns(conn, "accounts", ["billing_timezone"])
    # Existing minute rows become rollup rows; their node is unknown, so per-node tables start empty.
    for width, table in schema.ACCOUNT_ROLLUPS[1:]:
        conn.execute(text(
            f"INSERT INTO {table.name} (account_id, bucket, bytes_in, bytes_out, requests) "
            f"SELECT account_id, minute - minute % {width}, SUM(bytes_in), SUM(bytes_out), SUM(requests) "
            f"FROM usage_minute GROUP BY account_id, minute - minute % {width} "
            f"ON CONFLICT DO NOTHING"))


def _quota_alerts(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.quota_events, schema.webhook_outbox], checkfirst=True)
    _add_missing_columns(conn, "accounts", ["alert_thresholds", "webhook_url", "webhook_secret"])


def _webhook_status_and_rotation(conn: Connection) -> None:
    _add_missing_columns(conn, "accounts", ["webhook_previous_secret", "webhook_secret_rotated_at_ms"])
    _add_missing_columns(conn, "webhook_outbox", ["last_status"])


def _key_last_used(conn: Connection) -> None:
    _add_missing_columns(conn, "api_keys", ["last_used_at_ms"])


def _dedupe_by_record_time(conn: Connection) -> None:
    _add_missing_columns(conn, "batches", ["latest_record_s"])
    _add_missing_columns(conn, "consumer_offsets", ["last_mark"])
    schema.metadata.create_all(conn, tables=[schema.account_nodes], checkfirst=True)
    # Nodes already written count against the cap from the start.
    conn.execute(text("INSERT INTO account_nodes (account_id, node_id, first_seen_ms) "
                      "SELECT DISTINCT account_id, node_id, 0 FROM usage_node_day"))
    for index in schema.batches.indexes:
        index.create(conn, checkfirst=True)


def _billing_plans(conn: Connection) -> None:
    _add_missing_columns(conn, "accounts", ["billing_plan"])


def _regions(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.node_regions, schema.usage_region_5m], checkfirst=True)


def _read_tokens(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.read_tokens], checkfirst=True)


def _closed_periods(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.closed_periods], checkfirst=True)


def _adjustments(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.adjustments], checkfirst=True)


# Append-only: (version, description, step). A step runs inside the migration transaction.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "accounts, api keys, per-minute usage, seen batches, consumer offsets", _initial),
    (2, "batch claims (replacing seen batches), the database log, its dead letters", _batches_and_log),
    (3, "usage rollups (5 min, hour, day; per node hour, day), accounts.billing_timezone", _rollups),
    (4, "quota threshold events, webhook outbox, accounts' alert and webhook settings", _quota_alerts),
    (5, "webhook delivery status, webhook secret rotation overlap", _webhook_status_and_rotation),
    (6, "api_keys.last_used_at_ms", _key_last_used),
    (7, "batches.latest_record_s, consumer_offsets.last_mark, account_nodes (node cap)", _dedupe_by_record_time),
    (8, "accounts.billing_plan", _billing_plans),
    (9, "billing regions: node_regions, usage per region at 5 minutes", _regions),
    (10, "read-only customer tokens", _read_tokens),
    (11, "closed billing months", _closed_periods),
    (12, "admin usage adjustments", _adjustments),
]


@dataclass
class Database:
    engine: AsyncEngine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def migrate(self) -> list[int]:
        """Applies pending migrations; returns the versions applied. Safe to run concurrently."""
        async with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Serialises concurrent `meterd migrate` runs of several replicas.
                await conn.execute(text("SELECT pg_advisory_xact_lock(727274)"))
            return await conn.run_sync(_apply_pending)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _apply_pending(conn: Connection) -> list[int]:
    schema.metadata.create_all(conn, tables=[schema.schema_migrations], checkfirst=True)
    done = {row[0] for row in conn.execute(select(schema.schema_migrations.c.version))}
    applied = []
    for version, _description, step in MIGRATIONS:
        if version in done:
            continue
        step(conn)
        conn.execute(schema.schema_migrations.insert().values(version=version,
                                                               applied_at_ms=int(time.time() * 1000)))
        applied.append(version)
    return applied


def _sqlite_pragmas(synchronous: str) -> Callable[..., None]:
    def on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # WAL lets the API read while the consumer writes; busy_timeout rides out short write locks.
        # synchronous=FULL: a commit (and so an acknowledgement) survives power loss, not only a crash.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=10000")
        # The WAL file is truncated back to this after a checkpoint, so a burst does not leave a
        # large file behind for good (the log table's rows are deleted as they are counted).
        cur.execute("PRAGMA journal_size_limit=67108864")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def create_database(url: str, *, pool_size: int = 10, echo: bool = False, sqlite_synchronous: str = "FULL") -> Database:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(sqlite_synchronous))
    else:
        engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                                     pool_pre_ping=True)
    return Database(engine)
