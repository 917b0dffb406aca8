"""Adding counted usage to the per-minute table, saturating instead of overflowing.

The overflow rule: a stored sum never passes 2^63 - 1 (BIGINT's largest value, about 9.2 EB for
one account-minute, far beyond any link). It stops there instead of wrapping, turning REAL (SQLite)
or failing the transaction (PostgreSQL), so nothing a writer accepts can stop the consumer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Numeric, cast, func
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema

MAX_SUM = (1 << 63) - 1


def saturate(value: int) -> int:
    return value if value <= MAX_SUM else MAX_SUM


def saturating_add(column: Any, excluded: Any, dialect: str) -> Any:
    if dialect == "postgresql":
        # numeric addition cannot overflow; LEAST brings it back into BIGINT's range
        return func.least(cast(column, Numeric) + cast(excluded, Numeric), MAX_SUM)
    # SQLite turns an overflowing integer sum into a REAL above MAX_SUM, so MIN picks MAX_SUM
    return func.min(column + excluded, MAX_SUM)


async def add_usage(conn: AsyncConnection, insert: Callable[..., Any], usage: dict[tuple[Any, ...], list[int]]) -> None:
    u = schema.usage_minute
    dialect = conn.dialect.name
    stmt = insert(u)
    stmt = stmt.on_conflict_do_update(
        index_elements=["account_id", "minute"],
        set_={name: saturating_add(u.c[name], stmt.excluded[name], dialect)
              for name in ("bytes_in", "bytes_out", "requests")})
    # Sorted so concurrent consumers on PostgreSQL take row locks in the same order (no deadlock).
    rows = [{"account_id": a, "minute": m, "bytes_in": saturate(v[0]), "bytes_out": saturate(v[1]),
             "requests": saturate(v[2])} for (a, m), v in sorted(usage.items())]
    await conn.execute(stmt, rows)
