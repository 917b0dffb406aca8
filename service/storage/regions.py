"""Billing regions in the database: the node -> region map, the per-region 5-minute usage the
consumer writes with each flush, and the reads billing and usage make of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema
from service.storage.rollup import BIGINT_MAX, UsageDelta, add_into

DEFAULT = ""  # the stored name of the default region: nodes without a mapping
MAX_MAPPED_NODES = 10_000  # the map is read whole by GET /v1/regions
_CHUNK = 1000  # node ids per IN (...): far below both databases' parameter limits
UNMAPPED_WINDOW = 35 * 86400  # "unmapped nodes" are those seen in this many days


async def regions_of(conn: AsyncConnection, nodes: list[str]) -> dict[str, str]:
    t = schema.node_regions
    out: dict[str, str] = {}
    for i in range(0, len(nodes), _CHUNK):
        res = await conn.execute(select(t.c.node_id, t.c.region).where(t.c.node_id.in_(nodes[i:i + _CHUNK])))
        out.update({r[0]: r[1] for r in res})
    return out


async def add_region_usage(conn: AsyncConnection, insert: Callable[..., Any], usage: UsageDelta,
                           upsert: Callable[[Callable[..., Any], Any], Any]) -> None:
    """Adds a flush's usage to usage_region_5m under each node's current region, in the flush's
    transaction; rows sorted by key so concurrent writers lock them in the same order."""
    mapping = await regions_of(conn, sorted({node for _, node, _ in usage}))
    sums: dict[tuple[str, str, int], list[int]] = {}
    for (account, node, minute), v in usage.items():
        add_into(sums, (account, mapping.get(node, DEFAULT), minute - minute % 300), v)
    rows = [{"account_id": a, "region": r, "bucket": b, "bytes_in": min(v[0], BIGINT_MAX),
             "bytes_out": min(v[1], BIGINT_MAX), "requests": min(v[2], BIGINT_MAX)}
            for (a, r, b), v in sorted(sums.items())]
    if rows:
        await conn.execute(upsert(insert, schema.usage_region_5m), rows)


async def region_samples(conn: AsyncConnection, account_id: str, start: int,
                         cutoff: int) -> dict[str, dict[int, tuple[int, int]]]:
    """{region: {interval start: (bytes_in, bytes_out)}} over [start, cutoff)."""
    t = schema.usage_region_5m
    res = await conn.execute(select(t.c.region, t.c.bucket, t.c.bytes_in, t.c.bytes_out).where(
        and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < cutoff)))
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for region, bucket, b_in, b_out in res.all():
        out.setdefault(region, {})[bucket] = (b_in, b_out)
    return out


async def region_usage_rows(conn: AsyncConnection, account_id: str, start: int, end: int, regions: list[str] | None,
                            limit: int) -> list[tuple[int, str, int, int, int]]:
    """(bucket, region, bytes_in, bytes_out, requests) rows of [start, end), at most ``limit``."""
    t = schema.usage_region_5m
    q = (select(t.c.bucket, t.c.region, t.c.bytes_in, t.c.bytes_out, t.c.requests)
         .where(and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < end))
         .order_by(t.c.bucket, t.c.region).limit(limit))
    if regions is not None:
        q = q.where(t.c.region.in_(regions))
    return [tuple(r) for r in await conn.execute(q)]  # type: ignore[misc]


async def set_region(conn: AsyncConnection, insert: Callable[..., Any], node_id: str, region: str) -> bool:
    """Maps a node; False when the map is full and the node is not in it yet."""
    t = schema.node_regions
    known = (await conn.execute(select(t.c.node_id).where(t.c.node_id == node_id))).first() is not None
    if not known and (await conn.execute(select(func.count()).select_from(t))).scalar_one() >= MAX_MAPPED_NODES:
        return False
    stmt = insert(t).values(node_id=node_id, region=region, updated_at_ms=int(time.time() * 1000))
    changed = {"region": stmt.excluded.region, "updated_at_ms": stmt.excluded.updated_at_ms}
    await conn.execute(stmt.on_conflict_do_update(index_elements=["node_id"], set_=changed))
    return True


async def unset_region(conn: AsyncConnection, node_id: str, region: str) -> bool:
    t = schema.node_regions
    res = await conn.execute(delete(t).where(and_(t.c.node_id == node_id, t.c.region == region)))
    return res.rowcount > 0


async def region_map(conn: AsyncConnection) -> dict[str, list[str]]:
    t = schema.node_regions
    out: dict[str, list[str]] = {}
    for node, region in await conn.execute(select(t.c.node_id, t.c.region).order_by(t.c.region, t.c.node_id)):
        out.setdefault(region, []).append(node)
    return out


async def unmapped_nodes(conn: AsyncConnection, since: int, limit: int) -> tuple[int, list[str]]:
    """Nodes with usage since ``since`` (daily per-node rows) and no region: (how many, the first ids)."""
    d, t = schema.usage_node_day, schema.node_regions
    seen = (select(d.c.node_id).where(d.c.bucket >= since - since % 86400).distinct()
            .where(~d.c.node_id.in_(select(t.c.node_id))))
    count = (await conn.execute(select(func.count()).select_from(seen.subquery()))).scalar_one()
    ids = [r[0] for r in await conn.execute(seen.order_by(d.c.node_id).limit(limit))]
    return int(count), ids
