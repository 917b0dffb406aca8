"""Admin usage adjustments: a signed delta at a (node, 5-minute interval), applied to the rollups
(5-minute, hour, day; per node hour and day; per region 5-minute; never the minute table, which
keeps traffic as received) in the transaction that records its idempotency key, so it counts once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.storage import schema
from service.storage.nodes import register_nodes
from service.storage.regions import DEFAULT, regions_of
from service.storage.usage_write import saturating_upsert

FIELDS = ("bytes_in", "bytes_out", "requests")
CONTENT = ("node_id", "bucket", *FIELDS, "reason")  # what a replay must repeat exactly
MAX_LISTED = 1000


class KeyReused(Exception):
    """The idempotency key was used for another adjustment."""


class WouldGoNegative(Exception):
    """A negative delta larger than the usage it would come off."""


class NodeCapReached(Exception):
    """A new node id would take the account past ingest.max_nodes_per_account."""


def _targets(account: str, node: str, region: str, bucket: int) -> list[tuple[Table, dict[str, Any]]]:
    s = schema
    return [(s.usage_5m, {"account_id": account, "bucket": bucket}),
            (s.usage_hour, {"account_id": account, "bucket": bucket - bucket % 3600}),
            (s.usage_day, {"account_id": account, "bucket": bucket - bucket % 86400}),
            (s.usage_node_hour, {"account_id": account, "node_id": node, "bucket": bucket - bucket % 3600}),
            (s.usage_node_day, {"account_id": account, "node_id": node, "bucket": bucket - bucket % 86400}),
            (s.usage_region_5m, {"account_id": account, "region": region, "bucket": bucket})]


async def _add(conn: AsyncConnection, insert: Callable[..., Any], table: Table, key: dict[str, Any],
               delta: dict[str, int]) -> None:
    if min(delta.values()) >= 0:  # an upsert, atomic against the consumers' own upserts
        await conn.execute(saturating_upsert(insert, table), [{**key, **delta}])
        return
    where = and_(*[table.c[k] == v for k, v in key.items()], *[table.c[f] + d >= 0 for f, d in delta.items()])
    res = await conn.execute(update(table).where(where).values({f: table.c[f] + d for f, d in delta.items()}))
    if res.rowcount != 1:
        raise WouldGoNegative(f"the adjustment would take {table.name} below 0 at {key['bucket']}")


class Adjustments:
    def __init__(self, engine: AsyncEngine, insert: Callable[..., Any]) -> None:
        self.engine = engine
        self._insert = insert

    async def find(self, account_id: str, idempotency_key: str) -> dict | None:
        t = schema.adjustments
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t).where(and_(t.c.account_id == account_id,
                                                           t.c.idempotency_key == idempotency_key)))).mappings().first()
        return dict(row) if row else None

    async def apply(self, row: dict[str, Any], node_cap: int) -> tuple[dict, bool]:
        """(the stored adjustment, True when this call applied it). A key seen before with the same
        content is a replay (False); with other content it is KeyReused."""
        existing = await self.find(row["account_id"], row["idempotency_key"])
        if existing is None:
            row = {**row, "created_at_ms": int(time.time() * 1000)}
            try:
                async with self.engine.begin() as conn:
                    # A node an adjustment names counts against the cap as one ingest writes does.
                    if await register_nodes(conn, self._insert, {row["account_id"]: {row["node_id"]}}, node_cap):
                        raise NodeCapReached(row["node_id"])
                    region = (await regions_of(conn, [row["node_id"]])).get(row["node_id"], DEFAULT)
                    delta = {f: row[f] for f in FIELDS}
                    for table, key in _targets(row["account_id"], row["node_id"], region, row["bucket"]):
                        await _add(conn, self._insert, table, key, delta)
                    await conn.execute(schema.adjustments.insert().values(**row))
                return row, True
            except IntegrityError:  # the same key committed by a concurrent call: ours rolled back
                existing = await self.find(row["account_id"], row["idempotency_key"])
                if existing is None:
                    raise
        if any(existing[k] != row[k] for k in CONTENT):
            raise KeyReused(f"idempotency_key {row['idempotency_key']!r} was used for another adjustment")
        return existing, False

    async def in_window(self, account_id: str, start: int, end: int) -> list[dict]:
        t = schema.adjustments
        q = (select(t).where(and_(t.c.account_id == account_id, t.c.bucket >= start, t.c.bucket < end))
             .order_by(t.c.created_at_ms.desc(), t.c.id).limit(MAX_LISTED))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]
