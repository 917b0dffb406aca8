"""Quota threshold crossings, detected in the transaction that applies usage.

For every account with a quota that the applied usage touched, the month-to-date bytes of each
billing month the usage fell in are read back (after the upsert) and every threshold reached gets
one event per period; the unique key (account, period, threshold) keeps it to one across flushes,
consumers and restarts. An account with a webhook URL also gets an outbox row, so delivery is as
durable as the event."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage import schema
from service.storage.period_usage import bytes_used
from service.storage.rollup import BIGINT_MAX, UsageDelta
from service.timezones import month_bounds

DEFAULT_THRESHOLDS = (0.8, 1.0)
PPM = 1_000_000
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Crossing:
    event_id: str
    account_id: str
    threshold: float


def thresholds_ppm(raw: str | None) -> list[int]:
    values = json.loads(raw) if raw else DEFAULT_THRESHOLDS
    return sorted({round(v * PPM) for v in values})


def _months(minutes: set[int], zone: ZoneInfo) -> set[tuple[int, int]]:
    # The first and last minute of each UTC day cover every local month the day overlaps.
    out = set()
    for day in {m // 86400 for m in minutes}:
        for t in (day * 86400, day * 86400 + 86340):
            local = datetime.fromtimestamp(t, zone)
            out.add(month_bounds(local.year, local.month, zone))
    return out


async def record_crossings(conn: AsyncConnection, insert: Callable[..., Any], usage: UsageDelta) -> list[Crossing]:
    touched: dict[str, set[int]] = {}
    for account, _node, minute in usage:
        touched.setdefault(account, set()).add(minute)
    a = schema.accounts
    res = await conn.execute(select(a.c.id, a.c.quota_bytes, a.c.billing_timezone, a.c.alert_thresholds,
                                    a.c.webhook_url)
                             .where(and_(a.c.id.in_(sorted(touched)), a.c.quota_bytes.is_not(None))))
    accounts = {r.id: r for r in res}
    if not accounts:
        return []
    # Group accounts by period so each distinct period costs one read of the rollups.
    by_period: dict[tuple[int, int, str], list[str]] = {}
    for acc, r in accounts.items():
        zone = ZoneInfo(r.billing_timezone)
        for start, end in _months(touched[acc], zone):
            by_period.setdefault((start, end, r.billing_timezone), []).append(acc)
    e = schema.quota_events
    crossings: list[Crossing] = []
    now_ms = int(time.time() * 1000)
    for (start, end, tz), accs in sorted(by_period.items()):
        have = {(r[0], int(r[1])) for r in await conn.execute(
            select(e.c.account_id, e.c.threshold_ppm).where(and_(e.c.account_id.in_(accs), e.c.period_start == start)))}
        # Accounts with every threshold already recorded this period need no usage read.
        accs = [acc for acc in accs
                if any((acc, t) not in have for t in thresholds_ppm(accounts[acc].alert_thresholds))]
        if not accs:
            continue
        used = await bytes_used(conn, accs, start, end)
        for acc in sorted(accs):
            r = accounts[acc]
            quota, spent = int(r.quota_bytes), used[acc]
            for t in thresholds_ppm(r.alert_thresholds):
                if (acc, t) in have or spent == 0 or spent * PPM < t * quota:
                    continue
                event_id = "evt_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
                stmt = insert(e).values(id=event_id, account_id=acc, period_start=start, period_end=end,
                                        timezone=tz, threshold_ppm=t, quota_bytes=quota,
                                        used_bytes=min(spent, BIGINT_MAX),  # saturates like usage rows
                                        created_at_ms=now_ms).on_conflict_do_nothing(
                    index_elements=["account_id", "period_start", "threshold_ppm"])
                if (await conn.execute(stmt)).rowcount != 1:
                    continue  # another consumer recorded it first
                if r.webhook_url:
                    await conn.execute(schema.webhook_outbox.insert().values(
                        event_id=event_id, account_id=acc, attempts=0, next_attempt_ms=now_ms))
                crossings.append(Crossing(event_id, acc, t / PPM))
    return crossings
