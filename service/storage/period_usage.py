"""Bytes used by accounts over a long period, read from as few rollup rows as possible: whole UTC
days from the daily table, the edges from hourly, 5-minute and minute rows."""

from __future__ import annotations

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema

_WIDTHS = tuple(w for w, _ in reversed(schema.ACCOUNT_ROLLUPS))  # 86400, 3600, 300, 60
_TABLES = dict(schema.ACCOUNT_ROLLUPS)


def cover(start: int, end: int, level: int = 0) -> list[tuple[int, int, int]]:
    """(width, a, b) segments tiling [start, end), each [a, b) aligned to its width, widest first
    in the middle. A month costs at most about 31 daily + 46 hourly + 22 five-minute rows."""
    if start >= end:
        return []
    w = _WIDTHS[level]
    if level == len(_WIDTHS) - 1:
        return [(w, start, end)]
    a = -(-start // w) * w
    b = end // w * w
    if a >= b:
        return cover(start, end, level + 1)
    return [*cover(start, a, level + 1), (w, a, b), *cover(b, end, level + 1)]


async def usage_totals(conn: AsyncConnection, account_ids: list[str], start: int, end: int) -> dict[str, list[int]]:
    """[bytes_in, bytes_out, requests] per account over [start, end), summed in Python (no SQL
    overflow)."""
    out = {a: [0, 0, 0] for a in account_ids}
    if not account_ids:
        return out
    for width, a, b in cover(start, end):
        t = _TABLES[width]
        col = t.c.minute if t is schema.usage_minute else t.c.bucket
        res = await conn.execute(select(t.c.account_id, t.c.bytes_in, t.c.bytes_out, t.c.requests).where(
            and_(t.c.account_id.in_(account_ids), col >= a, col < b)))
        for acc, b_in, b_out, reqs in res:
            row = out[acc]
            row[0] += b_in
            row[1] += b_out
            row[2] += reqs
    return out


async def bytes_used(conn: AsyncConnection, account_ids: list[str], start: int, end: int) -> dict[str, int]:
    """bytes_in + bytes_out per account over [start, end)."""
    return {a: v[0] + v[1] for a, v in (await usage_totals(conn, account_ids, start, end)).items()}
