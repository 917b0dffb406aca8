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


async def add_usage(conn: AsyncConnection, insert: Callable[..., Any], usage: UsageDelta) -> None:
    # Minute rows and every rollup in one transaction: a query never sees one without the other.
    for table, rows in rollup_rows(usage):
        await conn.execute(saturating_upsert(insert, table), rows)
    await add_region_usage(conn, insert, usage, saturating_upsert)
