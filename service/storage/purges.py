"""Retention: the deletes the consumers run on schedule (service/pipeline/retention.py).

Each keeps what is still needed: batch ids while a record of theirs can be accepted again, quota
events while their webhook is still being delivered, claims while their batch waits in the log."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema


async def counted_batch_ids(conn: AsyncConnection, before_s: int, future_s: int) -> int:
    """Counted batch ids whose latest record time is before ``before_s`` (now minus the dedupe
    retention) by more than the clock allowance ``future_s``; an id without a stored record time
    is bounded by its claim time plus max_future (no record of it was stamped later)."""
    b = schema.batches
    counted = b.c.applied_at_ms.is_not(None)
    cut = before_s - future_s
    by_record = await conn.execute(b.delete().where(and_(counted, b.c.latest_record_s < cut)))
    by_claim = await conn.execute(b.delete().where(and_(
        counted, b.c.latest_record_s.is_(None), b.c.claimed_at < cut - future_s)))
    return (by_record.rowcount or 0) + (by_claim.rowcount or 0)


async def unapplied_claims(conn: AsyncConnection, before_s: int) -> int:
    """Claims never counted (a Kafka produce that failed and was not retried, a dead-lettered log
    row) claimed before ``before_s``; never one whose batch still waits in the database log (its
    row is appended in the claim's transaction, so no claim older than the oldest row has one)."""
    b, log = schema.batches, schema.ingest_log
    oldest_ms = (await conn.execute(select(func.min(log.c.appended_at_ms)))).scalar_one()
    cut = before_s if oldest_ms is None else min(before_s, int(oldest_ms) // 1000 - 1)
    res = await conn.execute(b.delete().where(and_(b.c.applied_at_ms.is_(None), b.c.claimed_at < cut)))
    return res.rowcount or 0


async def quota_events(conn: AsyncConnection, before_ms: int) -> int:
    """Events recorded before ``before_ms`` whose webhook is delivered, given up, or never wanted."""
    e, o = schema.quota_events, schema.webhook_outbox
    pending = select(o.c.event_id).where(and_(o.c.delivered_at_ms.is_(None), o.c.failed_at_ms.is_(None)))
    old = e.c.created_at_ms < before_ms
    await conn.execute(o.delete().where(and_(o.c.event_id.in_(select(e.c.id).where(old)),
                                             or_(o.c.delivered_at_ms.is_not(None), o.c.failed_at_ms.is_not(None)))))
    res = await conn.execute(e.delete().where(and_(old, e.c.id.not_in(pending))))
    return res.rowcount or 0


async def dead_letters(conn: AsyncConnection, before_ms: int) -> int:
    d = schema.dead_letters
    return (await conn.execute(d.delete().where(d.c.at_ms < before_ms))).rowcount or 0


async def minute_rows(conn: AsyncConnection, before_s: int) -> int:
    """Minute rows older than the retention; the rollups keep their sums."""
    u = schema.usage_minute
    return (await conn.execute(u.delete().where(u.c.minute < before_s))).rowcount or 0
