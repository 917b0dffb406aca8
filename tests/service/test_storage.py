"""Acceptance 4: the store, against both SQLite (a temp file) and a real PostgreSQL server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from service.storage import Database, Repository, create_database, schema
from service.storage.db import MIGRATIONS
from service.storage.ledger import Flush, Ledger

ALL_VERSIONS = [v for v, _, _ in MIGRATIONS]
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
    assert await db.migrate() == ALL_VERSIONS
    return Repository(db)


async def put_usage(repo: Repository, usage: dict[tuple[str, int], list[int]]) -> None:
    """Usage written the way the consumer writes it: through the one flush transaction."""
    await Ledger(repo.db).apply(Flush(usage=usage))


async def dump(db: Database) -> dict[str, list[tuple]]:
    """Every row of every table, for "nothing changed" and "secret appears nowhere" checks."""
    out = {}
    async with db.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            out[table.name] = sorted(tuple(r) for r in await conn.execute(select(table)))
    return out


async def test_migrations_idempotent(db: Database) -> None:
    assert await db.migrate() == ALL_VERSIONS
    assert await db.migrate() == []
    assert await db.migrate() == []
    await db.ping()
    async with db.engine.connect() as conn:
        versions = [r[0] for r in await conn.execute(select(schema.schema_migrations.c.version))]
    assert versions == ALL_VERSIONS


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
    await put_usage(repo, {("a", T0): [1, 2, 3], ("a", T0 + 60): [10, 20, 30]})
    await put_usage(repo, {("a", T0): [100, 200, 300], ("b", T0): [5, 5, 5]})
    rows = await repo.usage("a", T0, T0 + 120, 60)
    assert [(r.ts, r.bytes_in, r.bytes_out, r.requests) for r in rows] == [(T0, 101, 202, 303),
                                                                          (T0 + 60, 10, 20, 30)]
    assert [(r.ts, r.bytes_in) for r in await repo.usage("b", T0, T0 + 60, 60)] == [(T0, 5)]


async def test_usage_bucketing(repo: Repository) -> None:
    minutes = {T0: 1, T0 + 60: 2, T0 + 3540: 4, T0 + 3600: 8, T0 + 86340: 16, T0 + 86400: 32, T0 + 90000: 64}
    await put_usage(repo, {("a", m): [v, 2 * v, 1] for m, v in minutes.items()})

    def pts(rows):  # type: ignore[no-untyped-def]
        return [(r.ts, r.bytes_in, r.bytes_out, r.requests) for r in rows]

    end = T0 + 2 * 86400
    assert pts(await repo.usage("a", T0, end, 60)) == [(m, v, 2 * v, 1) for m, v in minutes.items()]
    assert pts(await repo.usage("a", T0, end, 3600)) == [
        (T0, 7, 14, 3), (T0 + 3600, 8, 16, 1), (T0 + 82800, 16, 32, 1), (T0 + 86400, 32, 64, 1),
        (T0 + 90000, 64, 128, 1)]
    assert pts(await repo.usage("a", T0, end, 86400)) == [(T0, 31, 62, 5), (T0 + 86400, 96, 192, 2)]
    # [start, end): the end minute is excluded, the start minute included.
    assert pts(await repo.usage("a", T0 + 60, T0 + 3600, 60)) == [(T0 + 60, 2, 4, 1), (T0 + 3540, 4, 8, 1)]
    assert await repo.usage("b", T0, end, 60) == []


async def test_bytes_used_since(repo: Repository) -> None:
    assert await repo.bytes_used_since("a", T0) == 0
    await put_usage(repo, {("a", T0 - 60): [1000, 1000, 1], ("a", T0): [1, 2, 100],
                                  ("a", T0 + 86400 * 20): [4, 8, 100], ("b", T0): [50, 50, 1]})
    assert await repo.bytes_used_since("a", T0) == 15  # bytes in + out, requests not counted
    assert await repo.bytes_used_since("a", T0 - 60) == 2015
    assert await repo.bytes_used_since("a", T0 + 86400 * 21) == 0
    assert await repo.bytes_used_since("b", T0) == 100


async def test_large_values_survive(repo: Repository) -> None:
    """Per-minute sums are BIGINT: values past 2**32 must round-trip on both databases."""
    big = (1 << 44) * 100
    await put_usage(repo, {("a", T0): [big, big, 1]})
    await put_usage(repo, {("a", T0): [big, 0, 1]})
    (row,) = await repo.usage("a", T0, T0 + 60, 60)
    assert (row.bytes_in, row.bytes_out, row.requests) == (2 * big, big, 2)
    assert await repo.bytes_used_since("a", T0) == 3 * big
