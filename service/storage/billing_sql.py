"""The month's 5-minute rows for billing: at most about 8,940 per account, read in one query and
ranked in Python (service.billing, service.billing_modes), so every mode costs one read."""

from __future__ import annotations

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema


async def interval_samples(conn: AsyncConnection, account_id: str, start: int,
                           cutoff: int) -> dict[int, tuple[int, int]]:
    """{interval start: (bytes_in, bytes_out)} of the 5-minute rows in [start, cutoff)."""
    t = schema.usage_5m
    res = await conn.execute(select(t.c.bucket, t.c.bytes_in, t.c.bytes_out).where(
        and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < cutoff)))
    return {r[0]: (r[1], r[2]) for r in res.all()}
