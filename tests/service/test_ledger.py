"""The pipeline's bookkeeping (service.storage.ledger) on SQLite and a real PostgreSQL: claims,
the database log, the one flush transaction and what makes it refuse, the overflow rule."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect, text

from service.storage import Database, Repository, schema
from service.storage.db import MIGRATIONS
from service.storage.ledger import (
    AlreadyApplied,
    Claim,
    ClaimResult,
    Flush,
    Ledger,
    LogRowsTaken,
    OffsetConflict,
)
from service.storage.usage_write import MAX_SUM
from tests.service.test_storage import T0, db, dump  # noqa: F401 (the db fixture: both databases)

G, T = "g", "t"
NEW = ClaimResult(new=True, conflict=False, applied=False)


@pytest.fixture
async def ledger(db: Database) -> Ledger:  # noqa: F811
    await db.migrate()
    return Ledger(db)


def claim(key: str, digest: bytes, records: int = 1, payload: bytes = b"p") -> Claim:
    return Claim(key, digest.ljust(16, b"."), records, payload)


async def usage_of(db: Database, account: str) -> list[int]:  # noqa: F811
    rows = await Repository(db).usage_rows(account, 60, T0, T0 + 60)
    return [sum(r[k] for r in rows) for k in (2, 3, 4)] if rows else []


async def test_claims_decide_new_duplicate_and_conflict(ledger: Ledger) -> None:
    first = await ledger.claim([claim("a/1", b"x"), claim("a/2", b"y"), claim("a/1", b"z")], append_to_log=True)
    assert first == [NEW, NEW, ClaimResult(new=False, conflict=True, applied=False)]
    again = await ledger.claim([claim("a/1", b"x"), claim("a/2", b"other")], append_to_log=True)
    assert again == [ClaimResult(new=False, conflict=False, applied=False),
                     ClaimResult(new=False, conflict=True, applied=False)]
    # Only the first claim of each id reached the log.
    assert sorted(r.key for r in await ledger.read_log(0, 10)) == ["a/1", "a/2"]
    await ledger.apply(Flush(applied={"a/1": (b"x".ljust(16, b"."), 1)}))
    assert (await ledger.claim([claim("a/1", b"x")], append_to_log=False))[0].applied


async def test_concurrent_claims_of_one_id_have_one_winner(ledger: Ledger) -> None:
    """Two writer replicas claim the same batch_id for different records at once."""
    results = await asyncio.gather(*(ledger.claim([claim("a/race", bytes([65 + i]))], append_to_log=True)
                                     for i in range(8)))
    flat = [r[0] for r in results]
    assert sum(r.new for r in flat) == 1
    assert all(r.conflict for r in flat if not r.new)
    assert len(await ledger.read_log(0, 10)) == 1


async def test_flush_takes_log_rows_exactly_once(ledger: Ledger, db: Database) -> None:  # noqa: F811
    await ledger.claim([claim("a/1", b"x"), claim("a/2", b"y")], append_to_log=True)
    rows = await ledger.read_log(0, 10)
    mark = {"a/1": (b"x".ljust(16, b"."), 1)}
    await ledger.apply(Flush(usage={("acc", "n1", T0): [1, 2, 3]}, applied=mark, log_seqs=[rows[0].seq]))
    before = await dump(db)
    # A second consumer that read the same row: its whole transaction is refused.
    with pytest.raises(LogRowsTaken):
        await ledger.apply(Flush(usage={("acc", "n1", T0): [1, 2, 3]}, log_seqs=[rows[0].seq, rows[1].seq]))
    with pytest.raises(AlreadyApplied):
        await ledger.apply(Flush(usage={("acc", "n1", T0): [1, 2, 3]}, applied=mark))
    assert await dump(db) == before
    assert await usage_of(db, "acc") == [1, 2, 3]
    assert (await ledger.log_backlog())[:2] == (1, 1)


async def test_offset_conflict_names_lost_partitions_and_writes_nothing(ledger: Ledger, db: Database) -> None:  # noqa: F811
    await ledger.apply(Flush(usage={("a", "n1", T0): [1, 1, 1]}, offsets={0: (None, 5), 1: (None, 9)}),
                       group_id=G, topic=T)
    before = await dump(db)
    for offsets, lost in [({0: (4, 8)}, {0}), ({0: (5, 8), 1: (8, 12)}, {1}), ({2: (None, 1), 0: (None, 6)}, {0})]:
        with pytest.raises(OffsetConflict) as info:
            await ledger.apply(Flush(usage={("a", "n1", T0): [100, 100, 100]}, offsets=offsets,
                                     applied={"a/b2": (b"y" * 16, 1)}), group_id=G, topic=T)
        assert info.value.partitions == lost
        assert await dump(db) == before
    await ledger.apply(Flush(usage={("a", "n1", T0): [2, 2, 2]}, offsets={0: (5, 8), 1: (9, 12)}), group_id=G, topic=T)
    assert await ledger.load_offsets(G, T) == {0: 8, 1: 12}
    await ledger.reset_offsets(G, T, {1: 0, 3: 0})
    assert await ledger.load_offsets(G, T) == {0: 8, 1: 0, 3: 0}


async def test_usage_saturates_instead_of_overflowing(ledger: Ledger, db: Database) -> None:  # noqa: F811
    """About 53 maximum-size batches into one account-minute pass 2^63: the sum stops at 2^63-1,
    the column stays an integer, and the next flush (another account too) still commits."""
    big = (1 << 44) * 10_000
    for _ in range(60):
        await ledger.apply(Flush(usage={("hostile", "n1", T0): [big, big, 1], ("normal", "n1", T0): [1, 2, 3]}))
    assert await usage_of(db, "hostile") == [MAX_SUM, MAX_SUM, 60]
    assert await usage_of(db, "normal") == [60, 120, 180]
    await ledger.apply(Flush(usage={("hostile", "n1", T0): [MAX_SUM * 3, 1, 1]}))  # one flush's own sum past it
    assert await usage_of(db, "hostile") == [MAX_SUM, MAX_SUM, 61]
    if db.dialect == "sqlite":
        async with db.engine.connect() as conn:
            kinds = {r[0] for r in await conn.execute(text("SELECT typeof(bytes_in) FROM usage_minute"))}
        assert kinds == {"integer"}


async def test_stored_row_saturation_is_counted(ledger: Ledger) -> None:
    """N15: each flush's sums stay below the ceiling, the stored row reaches it: that is counted
    (per column that dropped bytes), and nothing is counted while no row is at the ceiling."""
    seen: list[int] = []
    ledger.on_saturated = seen.append
    half = MAX_SUM // 2 + 1
    await ledger.apply(Flush(usage={("sat", "n1", T0): [half, 1, 1]}))
    assert sum(seen) == 0
    await ledger.apply(Flush(usage={("sat", "n1", T0): [half, 1, 1]}))  # bytes_in passes 2^63-1
    assert sum(seen) >= 1
    before = sum(seen)
    await ledger.apply(Flush(usage={("sat", "n1", T0): [0, 1, 1], ("other", "n1", T0): [5, 5, 5]}))
    assert sum(seen) == before  # nothing added to the saturated column, nothing dropped


async def test_purge_keeps_batches_not_yet_counted(ledger: Ledger) -> None:
    await ledger.claim([claim("a/old", b"x"), claim("a/pending", b"y")], append_to_log=True)
    await ledger.apply(Flush(applied={"a/old": (b"x".ljust(16, b"."), 1)}))
    assert await ledger.purge(2**40) == 1
    assert set(await ledger.batch_states(["a/old", "a/pending"])) == {"a/pending"}


async def test_v1_seen_batches_become_counted_batches(db: Database) -> None:  # noqa: F811
    """A database made by the first schema keeps its dedupe memory across the upgrade."""
    first = MIGRATIONS[0]
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE seen_batches (dedupe_key VARCHAR(300) PRIMARY KEY, "
                                "digest BYTEA NOT NULL, seen_at BIGINT NOT NULL)".replace(
                                    "BYTEA", "BLOB" if db.dialect == "sqlite" else "BYTEA")))
        await conn.execute(text("INSERT INTO seen_batches VALUES ('a/1', :d, 1700000000)"), {"d": b"x" * 16})
        await conn.run_sync(first[2])
        await conn.run_sync(lambda c: schema.metadata.create_all(c, tables=[schema.schema_migrations]))
        await conn.execute(schema.schema_migrations.insert().values(version=1, applied_at_ms=0))
    await db.migrate()
    states = await Ledger(db).batch_states(["a/1"])
    assert states["a/1"].digest == b"x" * 16 and states["a/1"].applied_at_ms == 1_700_000_000_000
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    assert "seen_batches" not in names
