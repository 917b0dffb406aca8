"""Turns one flush's per-(account, node, minute) sums into the rows of every usage table."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Table

from service.storage import schema

BIGINT_MAX = (1 << 63) - 1
# (account_id, node_id, minute start in Unix seconds) -> [bytes_in, bytes_out, requests]
UsageDelta = dict[tuple[str, str, int], list[int]]


def add_into(into: dict, key: tuple, v: list[int]) -> None:
    """Adds the three counters ``v`` to ``into[key]`` (a copy when the key is new)."""
    row = into.get(key)
    if row is None:
        into[key] = list(v)
    else:
        row[0] += v[0]
        row[1] += v[1]
        row[2] += v[2]


def rollup_rows(usage: UsageDelta) -> Iterator[tuple[Table, list[dict]]]:
    """Rows for each table, sorted by key so concurrent writers on PostgreSQL lock rows in the same
    order (no deadlock). Python ints cannot overflow; values are clamped to BIGINT on the way out."""
    by_account: dict[int, dict] = {w: {} for w, _ in schema.ACCOUNT_ROLLUPS}
    by_node: dict[int, dict] = {w: {} for w, _ in schema.NODE_ROLLUPS}
    for (account, node, minute), v in usage.items():
        for w, into in by_account.items():
            add_into(into, (account, minute - minute % w), v)
        for w, into in by_node.items():
            add_into(into, (account, node, minute - minute % w), v)

    def values(v: list[int]) -> dict[str, int]:
        return {"bytes_in": min(v[0], BIGINT_MAX), "bytes_out": min(v[1], BIGINT_MAX),
                "requests": min(v[2], BIGINT_MAX)}

    for w, table in schema.ACCOUNT_ROLLUPS:
        time_col = "minute" if table is schema.usage_minute else "bucket"
        rows = [{"account_id": a, time_col: b, **values(v)} for (a, b), v in sorted(by_account[w].items())]
        if rows:
            yield table, rows
    for w, table in schema.NODE_ROLLUPS:
        rows = [{"account_id": a, "node_id": n, "bucket": b, **values(v)}
                for (a, n, b), v in sorted(by_node[w].items())]
        if rows:
            yield table, rows
