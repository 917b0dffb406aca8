"""N20: quota events, dead letters and claims that were never counted are purged after their
retention (settings in `consumer.*`), on SQLite and PostgreSQL; nothing still needed goes."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from service.config import ConsumerSettings
from service.pipeline.retention import purge_expired
from service.storage import Database, Repository, schema
from service.storage.ledger import Claim, DeadLetter, Flush, Ledger
from tests.service.test_storage import db  # noqa: F401 (the db fixture: both databases)

DAY_MS = 86_400_000


async def _count(db: Database, table, *where) -> int:  # type: ignore[no-untyped-def]  # noqa: F811
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())


async def _age(db: Database, stmt) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    async with db.engine.begin() as conn:
        await conn.execute(stmt)


async def test_old_rows_are_purged_and_needed_ones_kept(db: Database) -> None:  # noqa: F811
    await db.migrate()
    ledger, repo = Ledger(db), Repository(db)
    now_ms = int(time.time() * 1000)
    acc = (await repo.create_account("ret", 10, webhook_url="http://127.0.0.1:9/hook"))["id"]
    minute = int(time.time()) // 60 * 60
    await ledger.apply(Flush(usage={(acc, "n", minute): [100, 0, 1]}))  # crosses 0.8 and 1.0: 2 events
    e, o, dl, b = schema.quota_events, schema.webhook_outbox, schema.dead_letters, schema.batches
    assert await _count(db, e) == 2
    # Both events are a year old; one was delivered, the other is still being retried.
    await _age(db, e.update().values(created_at_ms=now_ms - 400 * DAY_MS))
    first = (await repo.list_events(acc, 10))[0]["id"]
    await _age(db, o.update().where(o.c.event_id == first).values(delivered_at_ms=now_ms))
    await ledger.apply(Flush(dead=[DeadLetter("k/old", b"x", "bad"), DeadLetter("k/new", b"y", "bad")]))
    await _age(db, dl.update().where(dl.c.dedupe_key == "k/old").values(at_ms=now_ms - 100 * DAY_MS))
    # Claims never counted: one produced to Kafka long ago and lost, one still in the database log.
    await ledger.claim([Claim("k/lost", b"d" * 16, 1)], append_to_log=False)
    await ledger.claim([Claim("k/waiting", b"w" * 16, 1, b"payload")], append_to_log=True)
    await ledger.claim([Claim("k/recent", b"r" * 16, 1)], append_to_log=False)
    old_s = int(time.time()) - 40 * 86400
    await _age(db, b.update().where(b.c.dedupe_key == "k/lost").values(claimed_at=old_s - 10 * 86400))
    await _age(db, b.update().where(b.c.dedupe_key == "k/waiting").values(claimed_at=old_s))
    await _age(db, schema.ingest_log.update().values(appended_at_ms=old_s * 1000))

    cfg = ConsumerSettings(quota_event_retention_seconds=365 * 86400, dead_letter_retention_seconds=90 * 86400,
                           unapplied_claim_retention_seconds=30 * 86400)
    await purge_expired(ledger, cfg)

    assert await _count(db, e) == 1  # the delivered one went, the one still retried stays
    assert await _count(db, o) == 1 and await _count(db, e, e.c.id == first) == 0
    assert await _count(db, dl) == 1 and await _count(db, dl, dl.c.dedupe_key == "k/new") == 1
    assert set(await ledger.batch_states(["k/lost", "k/waiting", "k/recent"])) == {"k/waiting", "k/recent"}
