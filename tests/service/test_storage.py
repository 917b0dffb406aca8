"""Acceptance 4: the store, against both SQLite (a temp file) and a real PostgreSQL server."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text

from service.api.timeparams import boundaries
from service.api.usage_query import bucketed_usage
from service.storage import Database, Repository, create_database, schema
from service.storage.db import MIGRATIONS
from service.storage.ledger import Flush, Ledger
from service.storage.rollup import BIGINT_MAX

VERSIONS = [v for v, _, _ in MIGRATIONS]
UTC = ZoneInfo("UTC")
T0 = 1_700_000_000 // 86400 * 86400  # a UTC midnight


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'meterd.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_db").url
    database = create_database(url, pool_size=2)
    assert database.dialect == request.param
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def repo(db: Database) -> Repository:
    assert await db.migrate() == VERSIONS
    return Repository(db)


async def put_usage(repo: Repository, usage: dict[tuple[str, str, int], list[int]]) -> None:
    """Usage written the way the consumers write it: through the one flush transaction."""
    await Ledger(repo.db).apply(Flush(usage=usage))


async def usage(repo: Repository, account: str, start: int, end: int, step: int) -> list[SimpleNamespace]:
    """Account usage through the API's planner (rollup choice and bucketing), in UTC buckets."""
    bounds = boundaries(start, end, step, UTC)
    sums = await bucketed_usage(repo, account, bounds, step, by_node=False, node_ids=[])
    return [SimpleNamespace(ts=bounds[i], bytes_in=v[0], bytes_out=v[1], requests=v[2]) for (i, _), v in sums.items()]


async def bytes_used_since(repo: Repository, account: str, start: int) -> int:
    return await repo.bytes_used(account, start, start + 400 * 86400)


async def dump(db: Database) -> dict[str, list[tuple]]:
    """Every row of every table, for "nothing changed" and "secret appears nowhere" checks."""
    out = {}
    async with db.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            out[table.name] = sorted(tuple(r) for r in await conn.execute(select(table)))
    return out


async def test_migrations_idempotent(db: Database) -> None:
    assert await db.migrate() == VERSIONS
    assert await db.migrate() == []
    assert await db.migrate() == []
    await db.ping()
    async with db.engine.connect() as conn:
        versions = [r[0] for r in await conn.execute(select(schema.schema_migrations.c.version))]
    assert versions == VERSIONS


async def test_account_crud(repo: Repository) -> None:
    a = await repo.create_account("alpha", 1000)
    b = await repo.create_account("beta", None, status="suspended")
    assert a["id"] != b["id"] and a["id"].startswith("acc_")
    got = await repo.get_account(a["id"])
    assert got == a
    assert (await repo.get_account(b["id"]))["quota_bytes"] is None  # type: ignore[index]
    assert await repo.get_account("acc_missing") is None

    changed = await repo.update_account(a["id"], {"name": "alpha2", "status": "suspended", "quota_bytes": None})
    assert changed is not None
    assert (changed["name"], changed["status"], changed["quota_bytes"]) == ("alpha2", "suspended", None)
    assert changed["created_at_ms"] == a["created_at_ms"] and changed["updated_at_ms"] >= a["updated_at_ms"]
    assert await repo.update_account("acc_missing", {"name": "x"}) is None

    assert await repo.account_statuses([a["id"], b["id"], "acc_missing"]) == {a["id"]: "suspended",
                                                                             b["id"]: "suspended"}
    listed = await repo.list_accounts()
    assert [r["id"] for r in listed] == sorted([a["id"], b["id"]])
    first = min(a["id"], b["id"])
    assert [r["id"] for r in await repo.list_accounts(after=first)] == [max(a["id"], b["id"])]
    assert len(await repo.list_accounts(limit=1)) == 1


async def test_keys_are_stored_hashed(repo: Repository, db: Database) -> None:
    acc = await repo.create_account("k", None)
    key = await repo.create_key(acc["id"])
    plaintext = key["key"]
    assert plaintext.startswith("mk_") and plaintext.startswith(key["prefix"])
    rows = await dump(db)
    (stored,) = rows["api_keys"]
    stored_row = dict(zip([c.name for c in schema.api_keys.columns], stored, strict=True))
    assert stored_row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert stored_row["key_hash"] != plaintext
    secret = plaintext.removeprefix(key["prefix"])
    everything = repr(rows)
    assert plaintext not in everything and secret not in everything

    assert await repo.account_for_key(plaintext) == acc["id"]
    assert await repo.account_for_key(plaintext + "x") is None
    assert await repo.account_for_key(stored_row["key_hash"]) is None  # the hash is not a key


async def test_revoked_key(repo: Repository) -> None:
    acc = await repo.create_account("k", None)
    other = await repo.create_account("o", None)
    k1, k2 = await repo.create_key(acc["id"]), await repo.create_key(acc["id"])
    assert not await repo.revoke_key(other["id"], k1["id"])  # the key belongs to another account
    assert await repo.account_for_key(k1["key"]) == acc["id"]
    assert await repo.revoke_key(acc["id"], k1["id"])
    assert await repo.account_for_key(k1["key"]) is None
    assert not await repo.revoke_key(acc["id"], k1["id"])  # already revoked
    assert await repo.account_for_key(k2["key"]) == acc["id"]


async def test_usage_upsert_adds_up(repo: Repository) -> None:
    await put_usage(repo, {("a", "n1", T0): [1, 2, 3], ("a", "n1", T0 + 60): [10, 20, 30]})
    await put_usage(repo, {("a", "n1", T0): [100, 200, 300], ("b", "n1", T0): [5, 5, 5]})
    rows = await usage(repo, "a", T0, T0 + 120, 60)
    assert [(r.ts, r.bytes_in, r.bytes_out, r.requests) for r in rows] == [(T0, 101, 202, 303),
                                                                          (T0 + 60, 10, 20, 30)]
    assert [(r.ts, r.bytes_in) for r in await usage(repo, "b", T0, T0 + 60, 60)] == [(T0, 5)]


async def test_usage_bucketing(repo: Repository) -> None:
    minutes = {T0: 1, T0 + 60: 2, T0 + 3540: 4, T0 + 3600: 8, T0 + 86340: 16, T0 + 86400: 32, T0 + 90000: 64}
    await put_usage(repo, {("a", "n1", m): [v, 2 * v, 1] for m, v in minutes.items()})

    def pts(rows):  # type: ignore[no-untyped-def]
        return [(r.ts, r.bytes_in, r.bytes_out, r.requests) for r in rows]

    end = T0 + 2 * 86400
    assert pts(await usage(repo, "a", T0, end, 60)) == [(m, v, 2 * v, 1) for m, v in minutes.items()]
    assert pts(await usage(repo, "a", T0, end, 3600)) == [
        (T0, 7, 14, 3), (T0 + 3600, 8, 16, 1), (T0 + 82800, 16, 32, 1), (T0 + 86400, 32, 64, 1),
        (T0 + 90000, 64, 128, 1)]
    assert pts(await usage(repo, "a", T0, end, 86400)) == [(T0, 31, 62, 5), (T0 + 86400, 96, 192, 2)]
    # [start, end): the end minute is excluded, the start minute included.
    assert pts(await usage(repo, "a", T0 + 60, T0 + 3600, 60)) == [(T0 + 60, 2, 4, 1), (T0 + 3540, 4, 8, 1)]
    assert await usage(repo, "b", T0, end, 60) == []


async def test_bytes_used_since(repo: Repository) -> None:
    assert await bytes_used_since(repo, "a", T0) == 0
    await put_usage(repo, {("a", "n1", T0 - 60): [1000, 1000, 1], ("a", "n1", T0): [1, 2, 100],
                                  ("a", "n1", T0 + 86400 * 20): [4, 8, 100], ("b", "n1", T0): [50, 50, 1]})
    assert await bytes_used_since(repo, "a", T0) == 15  # bytes in + out, requests not counted
    assert await bytes_used_since(repo, "a", T0 - 60) == 2015
    assert await bytes_used_since(repo, "a", T0 + 86400 * 21) == 0
    assert await bytes_used_since(repo, "b", T0) == 100


async def test_large_values_survive(repo: Repository) -> None:
    """Per-minute sums are BIGINT: values past 2**32 must round-trip on both databases."""
    big = (1 << 44) * 100
    await put_usage(repo, {("a", "n1", T0): [big, big, 1]})
    await put_usage(repo, {("a", "n1", T0): [big, 0, 1]})
    (row,) = await usage(repo, "a", T0, T0 + 60, 60)
    assert (row.bytes_in, row.bytes_out, row.requests) == (2 * big, big, 2)
    assert await bytes_used_since(repo, "a", T0) == 3 * big


async def table_rows(db: Database, table) -> dict[tuple, list[int]]:  # type: ignore[no-untyped-def]
    keys = [c.name for c in table.primary_key.columns]
    async with db.engine.connect() as conn:
        res = await conn.execute(select(table))
        return {tuple(r[k] for k in keys): [r["bytes_in"], r["bytes_out"], r["requests"]] for r in res.mappings()}


async def test_rollups_match_an_independent_sum(repo: Repository, db: Database) -> None:
    """Every rollup table equals the sum of what was applied, over several flushes, nodes and accounts."""
    rng = random.Random(7)
    expected: dict[str, dict[tuple, list[int]]] = {t.name: {} for t in schema.USAGE_TABLES}
    widths = {"usage_minute": 60, "usage_5m": 300, "usage_hour": 3600, "usage_day": 86400,
              "usage_node_hour": 3600, "usage_node_day": 86400}
    for _ in range(6):
        batch: dict[tuple[str, str, int], list[int]] = {}
        for _ in range(200):
            key = (rng.choice("ab"), rng.choice(["n1", "n2", "edge-3"]), T0 + rng.randrange(3 * 1440) * 60)
            v = [rng.randrange(10**9), rng.randrange(10**9), rng.randrange(100)]
            batch[key] = [x + y for x, y in zip(batch.get(key, [0, 0, 0]), v, strict=True)]
        for (acc, node, minute), v in batch.items():
            for name, w in widths.items():
                k = (acc, node, minute - minute % w) if "node" in name else (acc, minute - minute % w)
                cur = expected[name].setdefault(k, [0, 0, 0])
                for i in range(3):
                    cur[i] += v[i]
        await put_usage(repo, batch)
    for table in schema.USAGE_TABLES:
        assert await table_rows(db, table) == expected[table.name], table.name


async def test_sums_saturate_and_read_without_overflow(repo: Repository, db: Database) -> None:
    """Rows clamp at the BIGINT maximum instead of overflowing; reads sum in Python, so totals past
    2**63 come back exact on SQLite too (its SUM would raise)."""
    top = BIGINT_MAX - 5
    usage_in = {("a", "n1", T0): [top, 1, 1], ("a", "n1", T0 + 86400): [top, 1, 1]}
    await put_usage(repo, usage_in)
    await put_usage(repo, usage_in)
    for table in schema.USAGE_TABLES:
        rows = await table_rows(db, table)
        assert sorted(v[0] for v in rows.values()) == [BIGINT_MAX, BIGINT_MAX], table.name
    points = await usage(repo, "a", T0, T0 + 2 * 86400, 86400)
    assert [p.bytes_in for p in points] == [BIGINT_MAX, BIGINT_MAX]
    assert await bytes_used_since(repo, "a", T0) == 2 * BIGINT_MAX + 4


async def test_minute_retention_keeps_rollups(repo: Repository, db: Database) -> None:
    await put_usage(repo, {("a", "n1", T0): [1, 1, 1], ("a", "n1", T0 + 86400): [2, 2, 2]})
    assert await Ledger(repo.db).purge_minutes(T0 + 86400) == 1
    assert list(await table_rows(db, schema.usage_minute)) == [("a", T0 + 86400)]
    assert [p.bytes_in for p in await usage(repo, "a", T0, T0 + 2 * 86400, 86400)] == [1, 2]


async def test_migration_3_backfills_rollups(db: Database) -> None:
    """A database at version 1 with minute usage gets rollups built from it and billing_timezone."""
    await db.migrate()
    async with db.engine.begin() as conn:
        for table in schema.USAGE_TABLES[1:]:
            await conn.execute(text(f"DROP TABLE {table.name}"))
        await conn.execute(text("ALTER TABLE accounts DROP COLUMN billing_timezone"))
        await conn.execute(text("DELETE FROM schema_migrations WHERE version >= 3"))
        await conn.execute(text("INSERT INTO accounts (id, name, status, created_at_ms, updated_at_ms) "
                                "VALUES ('acc_old', 'old', 'active', 1, 1)"))
        for minute, v in ((T0, 1), (T0 + 240, 2), (T0 + 300, 4), (T0 + 86400, 8)):
            await conn.execute(text(f"INSERT INTO usage_minute VALUES ('acc_old', {minute}, {v}, {v}, 1)"))
    assert await db.migrate() == [v for v in VERSIONS if v >= 3]
    repo = Repository(db)
    assert (await repo.get_account("acc_old"))["billing_timezone"] == "UTC"  # type: ignore[index]
    assert await table_rows(db, schema.usage_5m) == {("acc_old", T0): [3, 3, 2], ("acc_old", T0 + 300): [4, 4, 1],
                                                     ("acc_old", T0 + 86400): [8, 8, 1]}
    assert await table_rows(db, schema.usage_day) == {("acc_old", T0): [7, 7, 3], ("acc_old", T0 + 86400): [8, 8, 1]}
    assert await table_rows(db, schema.usage_node_hour) == {}


async def test_admin_listing_filters_deletion_and_key_last_use(repo: Repository) -> None:
    """GET /v1/accounts and .../keys on both databases: name filter case-insensitive with LIKE
    wildcards taken literally, deleted accounts only on request, keys' last use written once a minute."""
    plain = await repo.create_account("Acme Corp", None)
    percent = await repo.create_account("100% acme", None)
    await repo.create_account("globex", None, "suspended")
    assert {r["id"] for r in await repo.list_accounts(name="ACME")} == {plain["id"], percent["id"]}
    assert [r["id"] for r in await repo.list_accounts(name="0%")] == [percent["id"]]
    assert await repo.list_accounts(name="a_m") == []  # `_` is a character, not a wildcard
    assert [r["name"] for r in await repo.list_accounts(status="suspended")] == ["globex"]

    key = await repo.create_key(plain["id"])
    assert (await repo.list_keys(plain["id"]))[0]["last_used_at_ms"] is None
    assert await repo.account_for_key(key["key"]) == plain["id"]
    [listed] = await repo.list_keys(plain["id"])
    assert listed["last_used_at_ms"] is not None and "key_hash" not in listed
    assert await repo.account_for_key(key["key"]) == plain["id"]  # within the minute: no second write
    assert (await repo.list_keys(plain["id"]))[0]["last_used_at_ms"] == listed["last_used_at_ms"]

    assert await repo.delete_account(plain["id"]) and not await repo.delete_account(plain["id"])
    assert await repo.account_for_key(key["key"]) is None  # its keys are revoked
    assert plain["id"] not in {r["id"] for r in await repo.list_accounts()}
    assert [r["id"] for r in await repo.list_accounts(status="deleted")] == [plain["id"]]
    assert (await repo.get_account(plain["id"]) or {})["status"] == "deleted"
