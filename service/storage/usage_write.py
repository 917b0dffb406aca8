"""Adding counted usage to the minute table and every rollup, saturating instead of overflowing.

The overflow rule: a stored sum never passes 2^63 - 1 (BIGINT's largest value, about 9.2 EB for
one account-minute, far beyond any link). It stops there instead of wrapping, turning REAL (SQLite)
or failing the transaction (PostgreSQL), so nothing a writer accepts can stop the consumer; reads
sum rows in Python, so totals over saturated rows stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, case
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage.regions import add_region_usage
from service.storage.rollup import BIGINT_MAX, UsageDelta, rollup_rows

MAX_SUM = BIGINT_MAX


def saturating_upsert(insert: Callable[..., Any], table: Table) -> Any:
    stmt = insert(table)
    keys = [c.name for c in table.primary_key.columns]
    # The comparison is written so that it cannot overflow itself.
    set_ = {c: case((table.c[c] > BIGINT_MAX - stmt.excluded[c], BIGINT_MAX), else_=table.c[c] + stmt.excluded[c])
            for c in ("bytes_in", "bytes_out", "requests")}
    return stmt.on_conflict_do_update(index_elements=keys, set_=set_)


_COUNTERS = ("bytes_in", "bytes_out", "requests")


async def add_usage(conn: AsyncConnection, insert: Callable[..., Any], usage: UsageDelta) -> int:
    """Adds the sums; returns how many stored sums this stopped at the ceiling (bytes dropped).
    A delta itself at the ceiling overflowed in memory and was counted there already."""
    saturated = 0
    # Minute rows and every rollup in one transaction: a query never sees one without the other.
    for table, rows in rollup_rows(usage):
        keys = [c.name for c in table.primary_key.columns]
        stmt = saturating_upsert(insert, table).returning(*(table.c[k] for k in keys),
                                                          *(table.c[c] for c in _COUNTERS))
        delta = {tuple(r[k] for k in keys): r for r in rows}
        for row in await conn.execute(stmt, rows):
            sent = delta[tuple(row[:len(keys)])]
            saturated += sum(1 for c, stored in zip(_COUNTERS, row[len(keys):], strict=True)
                             if stored == BIGINT_MAX and 0 < sent[c] < BIGINT_MAX)
    await add_region_usage(conn, insert, usage, saturating_upsert)
    return saturated
