"""The per-account node registry behind ingest.max_nodes_per_account."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema

_CHUNK = 1000


async def register_nodes(conn: AsyncConnection, insert: Callable[..., Any], wanted: dict[str, set[str]],
                         cap: int) -> dict[str, set[str]]:
    """Registers each account's nodes not yet known, unless that would take the account past
    ``cap`` nodes; returns the nodes refused per account (all of an account's new ones, or none).
    Two writers racing can pass the cap by the nodes of the batches in flight: a bound, not exact."""
    n = schema.account_nodes
    refused: dict[str, set[str]] = {}
    now = int(time.time() * 1000)
    for account, nodes in sorted(wanted.items()):
        ordered = sorted(nodes)
        known: set[str] = set()
        for i in range(0, len(ordered), _CHUNK):
            res = await conn.execute(select(n.c.node_id).where(
                and_(n.c.account_id == account, n.c.node_id.in_(ordered[i:i + _CHUNK]))))
            known.update(r[0] for r in res)
        new = [x for x in ordered if x not in known]
        if not new:
            continue
        have = (await conn.execute(select(func.count()).select_from(n).where(n.c.account_id == account))).scalar_one()
        if have + len(new) > cap:
            refused[account] = set(new)
            continue
        rows = [{"account_id": account, "node_id": x, "first_seen_ms": now} for x in new]
        for i in range(0, len(rows), _CHUNK):
            await conn.execute(insert(n).values(rows[i:i + _CHUNK]).on_conflict_do_nothing())
    return refused
