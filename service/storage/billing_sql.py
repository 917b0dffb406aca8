"""The billing rule's order statistics computed by the database over the 5-minute rollup, so a
month's 8,928 rows never leave it: one ORDER BY ... OFFSET per series for the p95 and one
GROUP BY local day for the daily peaks (and the peak, their maximum)."""

from __future__ import annotations

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema

INTERVAL = 300
SERIES = ("in", "out", "max")


def _columns() -> dict[str, object]:
    t = schema.usage_5m
    return {"in": t.c.bytes_in, "out": t.c.bytes_out,
            "max": case((t.c.bytes_in > t.c.bytes_out, t.c.bytes_in), else_=t.c.bytes_out)}


async def interval_stats(conn: AsyncConnection, account_id: str, start: int, cutoff: int,
                         day_bounds: list[int]) -> dict[str, dict[str, int]]:
    """Bytes per interval over the intervals [start, cutoff): ``p95`` (the value after dropping the
    top floor(5 % x intervals); intervals without a row are 0, so an offset past the rows is 0),
    ``peak``, and ``daily_peak_sum`` with ``days``, the local days begun before cutoff."""
    t = schema.usage_5m
    n = max(0, (cutoff - start) // INTERVAL)
    drop = n * 5 // 100
    where = and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < cutoff)
    cols = _columns()
    out: dict[str, dict[str, int]] = {"p95": {}, "peak": {}, "daily_peak_sum": {}, "days": {}}
    for name, col in cols.items():
        value = (await conn.execute(select(col).where(where).order_by(col.desc()).offset(drop).limit(1))).scalar()
        out["p95"][name] = int(value or 0)
    days = [(a, b) for a, b in zip(day_bounds, day_bounds[1:], strict=False) if a < cutoff]
    # Each interval's local day: the last day start at or before it.
    day = case(*[(t.c.bucket < b, i) for i, (_, b) in enumerate(days[:-1])], else_=len(days) - 1) \
        if len(days) > 1 else 0
    q = select(*[func.max(c) for c in cols.values()]).where(where)
    if len(days) > 1:
        q = q.add_columns(day).group_by(day)
    maxima = [[int(v or 0) for v in r[:3]] for r in await conn.execute(q)]
    for i, name in enumerate(SERIES):
        out["peak"][name] = max((m[i] for m in maxima), default=0)
        out["daily_peak_sum"][name] = sum(m[i] for m in maxima)  # days without traffic add 0
        out["days"][name] = len(days)
    return out


async def interval_samples(conn: AsyncConnection, account_id: str, start: int,
                           cutoff: int) -> dict[int, tuple[int, int]]:
    """{interval start: (bytes_in, bytes_out)} of the 5-minute rows in [start, cutoff): at most
    about 8,940 rows for a month, which the billing modes rank in Python."""
    t = schema.usage_5m
    res = await conn.execute(select(t.c.bucket, t.c.bytes_in, t.c.bytes_out).where(
        and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < cutoff)))
    return {r[0]: (r[1], r[2]) for r in res}
