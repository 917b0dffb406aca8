"""Closed billing months: the frozen bill of each, and the reads that turn records arriving after
the close into a late adjustment of the first open month."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import schema

MAX_LISTED = 36  # closed months read back per request (three years)


class Periods:
    def __init__(self, engine: AsyncEngine, insert: Callable[..., Any]) -> None:
        self.engine = engine
        self._insert = insert

    async def close(self, account_id: str, month: str, timezone: str, bill_json: bytes,
                    totals: list[int]) -> dict:
        """Stores the month's bill unless it is closed already; returns the stored row either way
        (a repeated close never changes the first one)."""
        t = schema.closed_periods
        row = {"account_id": account_id, "month": month, "timezone": timezone, "bill_json": bill_json,
               "bytes_in": str(totals[0]), "bytes_out": str(totals[1]), "requests": str(totals[2]),
               "closed_at_ms": int(time.time() * 1000)}
        async with self.engine.begin() as conn:
            await conn.execute(self._insert(t).values(**row).on_conflict_do_nothing())
        stored = await self.get(account_id, month)
        assert stored is not None
        return stored

    async def get(self, account_id: str, month: str) -> dict | None:
        t = schema.closed_periods
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t).where(and_(t.c.account_id == account_id, t.c.month == month))))
            found = row.mappings().first()
        return dict(found) if found else None

    async def before(self, account_id: str, month: str) -> list[dict]:
        """The closed months before ``month``, newest first (at most MAX_LISTED)."""
        t = schema.closed_periods
        q = (select(t.c.month, t.c.timezone, t.c.bytes_in, t.c.bytes_out, t.c.requests)
             .where(and_(t.c.account_id == account_id, t.c.month < month)).order_by(t.c.month.desc())
             .limit(MAX_LISTED))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]
