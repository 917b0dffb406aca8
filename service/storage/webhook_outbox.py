"""Queries of quota events and their webhook deliveries (the durable outbox), and of the signing
secret's rotation. Mixed into Repository, whose engine and dialect they use."""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import and_, delete, or_, select, update

from service.storage import schema
from service.storage.db import Database

_DELIVERY_COLUMNS = ("attempts", "next_attempt_ms", "delivered_at_ms", "failed_at_ms", "last_status")


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def _now_ms() -> int:
    return int(time.time() * 1000)


class WebhookOutbox:
    db: Database

    async def list_events(self, account_id: str, limit: int, event_id: str | None = None) -> list[dict]:
        """Newest first (or the one `event_id`), each with its outbox row's columns (None when it has
        none: the account had no webhook URL then, or the row was purged); `has_delivery` tells which."""
        e, o = schema.quota_events, schema.webhook_outbox
        q = (select(e, o.c.event_id.is_not(None).label("has_delivery"), *[o.c[n] for n in _DELIVERY_COLUMNS])
             .outerjoin(o, o.c.event_id == e.c.id).where(e.c.account_id == account_id)
             .order_by(e.c.created_at_ms.desc(), e.c.threshold_ppm.desc()).limit(limit))
        if event_id is not None:
            q = q.where(e.c.id == event_id)
        async with self.db.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def rotate_webhook_secret(self, account_id: str, *, overlap: bool = True) -> str | None:
        """A new secret; with `overlap` the replaced one keeps signing for a while (webhooks.
        secret_overlap_seconds), without it (a new URL) it is forgotten at once."""
        a = schema.accounts
        secret = new_webhook_secret()
        # SET reads the old row on both SQLite and PostgreSQL: the previous secret is the one replaced.
        previous = a.c.webhook_secret if overlap else None
        async with self.db.engine.begin() as conn:
            res = await conn.execute(update(a).where(a.c.id == account_id).values(
                webhook_previous_secret=previous, webhook_secret=secret,
                webhook_secret_rotated_at_ms=_now_ms(), updated_at_ms=_now_ms()))
        return secret if res.rowcount else None

    async def claim_deliveries(self, now: int, lease_ms: int, limit: int = 20) -> list[dict]:
        """Due outbox rows, each claimed with a compare-and-set on next_attempt_ms so two
        dispatchers never send the same delivery at the same time."""
        o, e, a = schema.webhook_outbox, schema.quota_events, schema.accounts
        q = (select(o.c.event_id, o.c.attempts, o.c.next_attempt_ms, a.c.webhook_url, a.c.webhook_secret,
                    a.c.webhook_previous_secret, a.c.webhook_secret_rotated_at_ms,
                    *[c for c in e.c if c.name != "id"])
             .join(e, e.c.id == o.c.event_id).join(a, a.c.id == o.c.account_id)
             .where(and_(o.c.delivered_at_ms.is_(None), o.c.failed_at_ms.is_(None), o.c.next_attempt_ms <= now))
             .order_by(o.c.next_attempt_ms).limit(limit))
        claimed = []
        async with self.db.engine.begin() as conn:
            for r in (await conn.execute(q)).mappings():
                res = await conn.execute(update(o).where(and_(o.c.event_id == r["event_id"],
                                                              o.c.next_attempt_ms == r["next_attempt_ms"]))
                                         .values(next_attempt_ms=now + lease_ms))
                if res.rowcount == 1:
                    claimed.append(dict(r))
        return claimed

    async def delivery_done(self, event_id: str, *, attempts: int, delivered: bool, next_attempt_ms: int | None,
                            error: str | None = None, status: int | None = None) -> None:
        """Records one attempt: delivered, retry at next_attempt_ms, or (None) given up."""
        o = schema.webhook_outbox
        values: dict[str, Any] = {"attempts": attempts, "last_error": error[:300] if error else None,
                                  "last_status": status}
        ts = _now_ms()
        if delivered:
            values["delivered_at_ms"] = ts
        elif next_attempt_ms is None:
            values["failed_at_ms"] = ts
        else:
            values["next_attempt_ms"] = next_attempt_ms
        async with self.db.engine.begin() as conn:
            await conn.execute(update(o).where(o.c.event_id == event_id).values(**values))

    async def delivery_state(self, event_id: str) -> dict | None:
        o = schema.webhook_outbox
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(o).where(o.c.event_id == event_id))).mappings().first()
        return dict(row) if row else None

    async def redeliver(self, account_id: str, event_id: str) -> str:
        """Makes the event's delivery due now with a fresh retry budget: "queued", or why not
        ("no_event" for this account, "no_webhook_url")."""
        e, o, a = schema.quota_events, schema.webhook_outbox, schema.accounts
        now = _now_ms()
        async with self.db.engine.begin() as conn:
            found = (await conn.execute(select(a.c.webhook_url).join(e, e.c.account_id == a.c.id).where(
                and_(e.c.id == event_id, e.c.account_id == account_id)))).first()
            if found is None:
                return "no_event"
            if not found[0]:
                return "no_webhook_url"
            fresh = {"attempts": 0, "next_attempt_ms": now, "delivered_at_ms": None, "failed_at_ms": None,
                     "last_error": None, "last_status": None}
            res = await conn.execute(update(o).where(o.c.event_id == event_id).values(**fresh))
            if res.rowcount == 0:  # recorded without a URL, or its row was purged
                await conn.execute(o.insert().values(event_id=event_id, account_id=account_id, **fresh))
        return "queued"

    async def purge_deliveries(self, before_ms: int) -> int:
        """Deletes outbox rows delivered or given up before `before_ms` (webhooks.retention_seconds)."""
        o = schema.webhook_outbox
        async with self.db.engine.begin() as conn:
            res = await conn.execute(delete(o).where(or_(o.c.delivered_at_ms < before_ms,
                                                         o.c.failed_at_ms < before_ms)))
        return int(res.rowcount or 0)
