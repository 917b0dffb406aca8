"""All queries meterd makes, in one place. Each public method is one short transaction."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from service.storage import schema
from service.storage.db import Database

_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id(prefix: str, length: int = 20) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class UsageRow:
    ts: int  # bucket start, Unix seconds
    bytes_in: int
    bytes_out: int
    requests: int


class Repository:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert

    # -- accounts ---------------------------------------------------------------------------
    async def create_account(self, name: str, quota_bytes: int | None, status: str = "active") -> dict:
        ts = now_ms()
        row = {"id": new_id("acc_"), "name": name, "status": status, "quota_bytes": quota_bytes,
               "created_at_ms": ts, "updated_at_ms": ts}
        async with self.db.engine.begin() as conn:
            await conn.execute(schema.accounts.insert().values(**row))
        return row

    async def get_account(self, account_id: str) -> dict | None:
        async with self.db.engine.connect() as conn:
            res = await conn.execute(select(schema.accounts).where(schema.accounts.c.id == account_id))
            row = res.mappings().first()
        return dict(row) if row else None

    async def list_accounts(self, limit: int = 100, after: str | None = None) -> list[dict]:
        q = select(schema.accounts).order_by(schema.accounts.c.id).limit(limit)
        if after:
            q = q.where(schema.accounts.c.id > after)
        async with self.db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

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

    async def revoke_key(self, account_id: str, key_id: str) -> bool:
        async with self.db.engine.begin() as conn:
            res = await conn.execute(
                update(schema.api_keys)
                .where(and_(schema.api_keys.c.id == key_id, schema.api_keys.c.account_id == account_id,
                            schema.api_keys.c.revoked_at_ms.is_(None)))
                .values(revoked_at_ms=now_ms()))
            return res.rowcount > 0

    async def account_for_key(self, key: str) -> str | None:
        """The account owning an unrevoked key, or None."""
        digest = hash_key(key)
        async with self.db.engine.connect() as conn:
            res = await conn.execute(
                select(schema.api_keys.c.account_id, schema.api_keys.c.key_hash)
                .where(and_(schema.api_keys.c.key_hash == digest, schema.api_keys.c.revoked_at_ms.is_(None))))
            row = res.first()
        # The index probe already matched; compare again in constant time so no code path ever
        # compares key material with an early-exit comparison.
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        return row[0]

    # -- usage ------------------------------------------------------------------------------
    async def usage(self, account_id: str, start_s: int, end_s: int, step_s: int) -> list[UsageRow]:
        u = schema.usage_minute
        bucket = ((u.c.minute // step_s) * step_s).label("bucket")
        q = (select(bucket, func.sum(u.c.bytes_in), func.sum(u.c.bytes_out), func.sum(u.c.requests))
             .where(and_(u.c.account_id == account_id, u.c.minute >= start_s, u.c.minute < end_s))
             .group_by(bucket).order_by(bucket))
        async with self.db.engine.connect() as conn:
            return [UsageRow(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in await conn.execute(q)]

    async def bytes_used_since(self, account_id: str, start_s: int) -> int:
        u = schema.usage_minute
        q = select(func.coalesce(func.sum(u.c.bytes_in + u.c.bytes_out), 0)).where(
            and_(u.c.account_id == account_id, u.c.minute >= start_s))
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())
