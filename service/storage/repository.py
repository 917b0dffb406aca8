"""All queries meterd makes, in one place. Each public method is one short transaction."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from sqlalchemy import and_, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.billing import interval_stats
from service.storage import schema
from service.storage.adjustments import Adjustments
from service.storage.billing_sql import interval_samples
from service.storage.db import Database
from service.storage.nodes import register_nodes
from service.storage.period_usage import bytes_used, usage_totals
from service.storage.periods import Periods
from service.storage.read_tokens import ReadTokens
from service.storage.regions import (
    region_map,
    region_samples,
    region_usage_rows,
    regions_of,
    set_region,
    unmapped_nodes,
    unset_region,
)
from service.storage.webhook_outbox import WebhookOutbox, new_webhook_secret

LAST_USED_RESOLUTION_MS = 60_000
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 20) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


class Repository(WebhookOutbox):
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
        self._read_tokens = ReadTokens(db.engine)
        self._periods = Periods(db.engine, self._insert)
        self._adjustments = Adjustments(db.engine, self._insert)

    # -- accounts ---------------------------------------------------------------------------
    async def create_account(self, name: str, quota_bytes: int | None, status: str = "active", *,
                             billing_timezone: str = "UTC", alert_thresholds: str | None = None,
                             webhook_url: str | None = None, billing_plan: str | None = None) -> dict:
        ts = now_ms()
        row = {"id": new_id("acc_"), "name": name, "status": status, "quota_bytes": quota_bytes,
               "billing_timezone": billing_timezone, "alert_thresholds": alert_thresholds,
               "webhook_url": webhook_url, "webhook_secret": new_webhook_secret() if webhook_url else None,
               "webhook_previous_secret": None, "webhook_secret_rotated_at_ms": None,
               "billing_plan": billing_plan,
               "created_at_ms": ts, "updated_at_ms": ts}
        async with self.db.engine.begin() as conn:
            await conn.execute(schema.accounts.insert().values(**row))
        return row

    async def get_account(self, account_id: str) -> dict | None:
        async with self.db.engine.connect() as conn:
            res = await conn.execute(select(schema.accounts).where(schema.accounts.c.id == account_id))
            row = res.mappings().first()
        return dict(row) if row else None

    async def list_accounts(self, limit: int = 100, after: str | None = None, *, status: str | None = None,
                            name: str | None = None) -> list[dict]:
        """Accounts by id after the cursor `after`; deleted ones only when asked for by status;
        `name`: a case-insensitive substring."""
        a = schema.accounts
        q = select(a).order_by(a.c.id).limit(limit)
        if after:
            q = q.where(a.c.id > after)
        q = q.where(a.c.status == status) if status else q.where(a.c.status != "deleted")
        if name:
            q = q.where(func.lower(a.c.name).contains(name.lower(), autoescape=True))
        async with self.db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def delete_account(self, account_id: str) -> bool:
        """Marks the account deleted and revokes its keys; its usage rows stay (see README)."""
        ts = now_ms()
        a, k = schema.accounts, schema.api_keys
        async with self.db.engine.begin() as conn:
            res = await conn.execute(update(a).where(and_(a.c.id == account_id, a.c.status != "deleted"))
                                     .values(status="deleted", webhook_url=None, updated_at_ms=ts))
            if res.rowcount == 0:
                return False
            await conn.execute(update(k).where(and_(k.c.account_id == account_id, k.c.revoked_at_ms.is_(None)))
                               .values(revoked_at_ms=ts))
        return True

    async def update_account(self, account_id: str, changes: dict[str, Any]) -> dict | None:
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(schema.accounts).where(schema.accounts.c.id == account_id)
                .values(**changes, updated_at_ms=now_ms()))
            if res.rowcount == 0:
                return None
        return await self.get_account(account_id)

    async def account_statuses(self, account_ids: list[str]) -> dict[str, str]:
        async with self.db.engine.connect() as conn:
            res = await conn.execute(select(schema.accounts.c.id, schema.accounts.c.status)
                                     .where(schema.accounts.c.id.in_(account_ids)))
            return {r[0]: r[1] for r in res}

    # -- API keys ---------------------------------------------------------------------------
    async def create_key(self, account_id: str) -> dict:
        secret = secrets.token_urlsafe(32)
        key = f"mk_{secret}"
        row = {"id": new_id("key_"), "account_id": account_id, "prefix": key[:10],
               "key_hash": hash_key(key), "created_at_ms": now_ms(), "revoked_at_ms": None}
        async with self.db.engine.begin() as conn:
            await conn.execute(schema.api_keys.insert().values(**row))
        return {"id": row["id"], "prefix": row["prefix"], "key": key, "account_id": account_id,
                "created_at_ms": row["created_at_ms"]}

    async def list_keys(self, account_id: str) -> list[dict]:
        k = schema.api_keys
        q = (select(k.c.id, k.c.prefix, k.c.created_at_ms, k.c.last_used_at_ms, k.c.revoked_at_ms)
             .where(k.c.account_id == account_id).order_by(k.c.created_at_ms, k.c.id))
        async with self.db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def revoke_key(self, account_id: str, key_id: str) -> bool:
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(schema.api_keys)
                .where(and_(schema.api_keys.c.id == key_id, schema.api_keys.c.account_id == account_id,
                            schema.api_keys.c.revoked_at_ms.is_(None)))
                .values(revoked_at_ms=now_ms()))
            return res.rowcount > 0

    async def active_key_hashes(self, created_since_ms: int = 0) -> list[tuple[str, int]]:
        """(SHA-256 hex, created_at_ms) of the unrevoked API keys and live read-only tokens created
        at or after `created_since_ms`: both pass the credential gate's valid-key filter."""
        keys, tokens = schema.api_keys.c, schema.read_tokens.c
        async with self.db.engine.connect() as conn:
            res = await conn.execute(select(keys.key_hash, keys.created_at_ms)
                                     .where(and_(keys.created_at_ms >= created_since_ms, keys.revoked_at_ms.is_(None))))
            live = await conn.execute(select(tokens.token_hash, tokens.created_at_ms).where(and_(
                tokens.created_at_ms >= created_since_ms, tokens.revoked_at_ms.is_(None),
                tokens.expires_at_ms > now_ms())))
            return [(r[0], r[1]) for r in res] + [(r[0], r[1]) for r in live]

    async def account_for_key(self, key: str) -> str | None:
        """The account owning an unrevoked key, or None."""
        digest = hash_key(key)
        async with self.db.engine.connect() as conn:
            res = await conn.execute(
                select(schema.api_keys.c.account_id, schema.api_keys.c.key_hash, schema.api_keys.c.last_used_at_ms)
                .where(and_(schema.api_keys.c.key_hash == digest, schema.api_keys.c.revoked_at_ms.is_(None))))
            row = res.first()
        # The index probe already matched; compare again in constant time so no code path ever
        # compares key material with an early-exit comparison.
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        if row[2] is None or now_ms() - row[2] >= LAST_USED_RESOLUTION_MS:
            await self._touch_key(digest)
        return row[0]

    async def _touch_key(self, digest: str) -> None:
        # At most one write a minute per key (lookups are cached for a second on top of that).
        async with self.db.engine.begin() as conn:
            await conn.execute(update(schema.api_keys).where(schema.api_keys.c.key_hash == digest)
                               .values(last_used_at_ms=now_ms()))

    # -- closed months (service.storage.periods) -------------------------------------------
    async def close_period(self, account_id: str, month: str, timezone: str, bill_json: bytes,
                           totals: list[int]) -> dict:
        return await self._periods.close(account_id, month, timezone, bill_json, totals)

    async def closed_period(self, account_id: str, month: str) -> dict | None:
        return await self._periods.get(account_id, month)

    async def closed_before(self, account_id: str, month: str) -> list[dict]:
        return await self._periods.before(account_id, month)

    async def month_totals(self, account_id: str, start_s: int, end_s: int) -> list[int]:
        async with self.db.engine.connect() as conn:
            return (await usage_totals(conn, [account_id], start_s, end_s))[account_id]

    async def apply_adjustment(self, row: dict[str, Any], node_cap: int) -> tuple[dict, bool]:
        """(stored adjustment, applied now); see service.storage.adjustments."""
        return await self._adjustments.apply(row, node_cap)

    async def adjustments_in(self, account_id: str, start_s: int, end_s: int) -> list[dict]:
        return await self._adjustments.in_window(account_id, start_s, end_s)

    # -- read-only customer tokens (service.storage.read_tokens) -----------------------------
    async def create_read_token(self, account_id: str, ttl_ms: int) -> dict | None:
        return await self._read_tokens.create(new_id("rt_"), account_id, ttl_ms)

    async def list_read_tokens(self, account_id: str) -> list[dict]:
        return await self._read_tokens.list_live(account_id)

    async def revoke_read_token(self, account_id: str, token_id: str) -> bool:
        return await self._read_tokens.revoke(account_id, token_id)

    async def account_for_read_token(self, token: str) -> str | None:
        return await self._read_tokens.account_for(token)

    # -- usage ------------------------------------------------------------------------------
    async def usage_rows(self, account_id: str, width: int, start_s: int, end_s: int, *,
                         by_node: bool = False, node_ids: list[str] | None = None,
                         limit: int | None = None) -> list[tuple[int, str, int, int, int]]:
        """Raw rows ``(bucket, node_id, bytes_in, bytes_out, requests)`` of the table ``width`` seconds
        wide (node_id is "" for account tables), ``start_s <= bucket < end_s``, by bucket.

        Sums happen in Python, never in SQL: SQLite's SUM raises on integer overflow and rows may
        hold saturated values. ``limit`` caps the rows read (the caller asks for one more than it
        allows, to tell "exactly at the limit" from "over it")."""
        tables = dict(schema.NODE_ROLLUPS if by_node or node_ids else schema.ACCOUNT_ROLLUPS)
        t = tables[width]
        time_col = t.c.minute if t is schema.usage_minute else t.c.bucket
        node_col = t.c.node_id if "node_id" in t.c else literal("")
        q = (select(time_col, node_col, t.c.bytes_in, t.c.bytes_out, t.c.requests)
             .where(and_(t.c.account_id == account_id, time_col >= start_s, time_col < end_s))
             .order_by(time_col, node_col))
        if node_ids:
            q = q.where(t.c.node_id.in_(node_ids))
        if limit is not None:
            q = q.limit(limit)
        async with self.db.engine.connect() as conn:
            # Both drivers return Python ints for BIGINT: the rows are used as they come.
            return [tuple(r) for r in (await conn.execute(q)).all()]  # type: ignore[misc]

    async def bytes_used(self, account_id: str, start_s: int, end_s: int) -> int:
        """bytes_in + bytes_out over [start_s, end_s) (balance, billing periods)."""
        async with self.db.engine.connect() as conn:
            return (await bytes_used(conn, [account_id], start_s, end_s))[account_id]

    async def billing_figures(self, account_id: str, start_s: int, cutoff_s: int, end_s: int,
                              day_bounds: list[int]) -> tuple[list[int], dict[str, dict[str, int]]]:
        """The period's [bytes_in, bytes_out, requests] over [start_s, end_s) and the interval
        statistics over [start_s, cutoff_s) (see service.billing.interval_stats)."""
        totals, stats, _ = await self.billing_inputs(account_id, start_s, cutoff_s, end_s, day_bounds)
        return totals, stats

    async def billing_inputs(self, account_id: str, start_s: int, cutoff_s: int, end_s: int, day_bounds: list[int],
                             ) -> tuple[list[int], dict[str, dict[str, int]], dict[int, tuple[int, int]]]:
        """billing_figures plus the 5-minute samples of [start_s, cutoff_s), read in one connection."""
        async with self.db.engine.connect() as conn:
            totals = (await usage_totals(conn, [account_id], start_s, end_s))[account_id]
            samples = await interval_samples(conn, account_id, start_s, cutoff_s)
        return totals, interval_stats(samples, start_s, cutoff_s, day_bounds), samples

    # -- billing regions (service.storage.regions) -------------------------------------------
    async def set_node_region(self, node_id: str, region: str) -> bool:
        async with self.db.engine.begin() as conn:
            return await set_region(conn, self._insert, node_id, region)

    async def unset_node_region(self, node_id: str, region: str) -> bool:
        async with self.db.engine.begin() as conn:
            return await unset_region(conn, node_id, region)

    async def node_regions(self, node_ids: list[str]) -> dict[str, str]:
        async with self.db.engine.connect() as conn:
            return await regions_of(conn, node_ids)

    async def region_overview(self, since_s: int, limit: int) -> tuple[dict[str, list[str]], int, list[str]]:
        """The map {region: nodes}, and the nodes seen since ``since_s`` without a region."""
        async with self.db.engine.connect() as conn:
            return (await region_map(conn), *await unmapped_nodes(conn, since_s, limit))

    async def region_samples(self, account_id: str, start_s: int,
                             cutoff_s: int) -> dict[str, dict[int, tuple[int, int]]]:
        async with self.db.engine.connect() as conn:
            return await region_samples(conn, account_id, start_s, cutoff_s)

    async def region_usage_rows(self, account_id: str, start_s: int, end_s: int, regions: list[str] | None,
                                limit: int) -> list[tuple[int, str, int, int, int]]:
        async with self.db.engine.connect() as conn:
            return await region_usage_rows(conn, account_id, start_s, end_s, regions, limit)

    async def register_nodes(self, wanted: dict[str, set[str]], cap: int) -> dict[str, set[str]]:
        """Node ids per account for the node cap; returns those refused (see storage/nodes.py)."""
        insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        async with self.db.engine.begin() as conn:
            return await register_nodes(conn, insert, wanted, cap)
