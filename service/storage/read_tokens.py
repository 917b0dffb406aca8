"""Read-only customer tokens: one account, read-only, expiring, revocable. Only a SHA-256 of a
token is stored (tokens are 256 random bits, so a fast hash is enough, as for API keys)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.storage import schema

PREFIX = "mr_"
MAX_ACTIVE_PER_ACCOUNT = 100  # unexpired, unrevoked tokens an account may hold
KEEP_DEAD_MS = 30 * 86400 * 1000  # expired or revoked rows are purged this long after


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReadTokens:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, token_id: str, account_id: str, ttl_ms: int) -> dict | None:
        """A new token (its plaintext in ``token``, shown once), or None when the account already
        holds MAX_ACTIVE_PER_ACCOUNT live ones."""
        t, now = schema.read_tokens, _now_ms()
        token = PREFIX + secrets.token_urlsafe(32)
        row = {"id": token_id, "account_id": account_id, "prefix": token[:10], "token_hash": token_hash(token),
               "created_at_ms": now, "expires_at_ms": now + ttl_ms, "revoked_at_ms": None}
        async with self.engine.begin() as conn:
            dead = or_(t.c.expires_at_ms < now - KEEP_DEAD_MS, t.c.revoked_at_ms < now - KEEP_DEAD_MS)
            await conn.execute(delete(t).where(and_(t.c.account_id == account_id, dead)))
            count = select(func.count()).select_from(t).where(self._live(account_id, now))
            live = (await conn.execute(count)).scalar_one()
            if live >= MAX_ACTIVE_PER_ACCOUNT:
                return None
            await conn.execute(t.insert().values(**row))
        return {**row, "token": token}

    @staticmethod
    def _live(account_id: str, now: int):  # type: ignore[no-untyped-def]
        t = schema.read_tokens
        return and_(t.c.account_id == account_id, t.c.revoked_at_ms.is_(None), t.c.expires_at_ms > now)

    async def list_live(self, account_id: str) -> list[dict]:
        t = schema.read_tokens
        q = (select(t.c.id, t.c.account_id, t.c.prefix, t.c.created_at_ms, t.c.expires_at_ms)
             .where(self._live(account_id, _now_ms())).order_by(t.c.created_at_ms, t.c.id))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def revoke(self, account_id: str, token_id: str) -> bool:
        t = schema.read_tokens
        async with self.engine.begin() as conn:
            res = await conn.execute(update(t).where(and_(t.c.id == token_id, self._live(account_id, _now_ms())))
                                     .values(revoked_at_ms=_now_ms()))
            return res.rowcount > 0

    async def account_for(self, token: str) -> str | None:
        """The account of a live token, or None."""
        t, digest = schema.read_tokens, token_hash(token)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.c.account_id, t.c.token_hash, t.c.expires_at_ms, t.c.revoked_at_ms)
                                      .where(t.c.token_hash == digest))).first()
        # Compared again in constant time, as for API keys: no early-exit comparison of key material.
        if row is None or not hmac.compare_digest(row[1], digest) or row[3] is not None or row[2] <= _now_ms():
            return None
        return str(row[0])
