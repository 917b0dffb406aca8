"""Closing ended billing months automatically: once a month has been over for the grace period
(default the ingest late window, after which no record for it can arrive), the consumer role
stores its bill for every account, as `POST .../periods/{month}/close` would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

import orjson

from service.api.billing_api import billing_body
from service.api.periods_api import month_key, previous
from service.api.timeparams import month_bounds, parse_zone
from service.storage import Repository

log = logging.getLogger("meterd.billing")
PAGE = 200


async def close_ended_months(repo: Repository, now: int, grace_seconds: int, default_region: str) -> int:
    """Closes each account's last ended month when it ended at least ``grace_seconds`` ago and
    is not closed yet; returns how many it closed."""
    closed, after = 0, None
    while True:
        accounts = await repo.list_accounts(PAGE, after)
        for row in accounts:
            zone = parse_zone(row["billing_timezone"], "billing_timezone")
            key = previous(month_key(*datetime.fromtimestamp(now, zone).timetuple()[:2]))
            _, end = month_bounds(int(key[:4]), int(key[5:]), zone)
            if end + grace_seconds > now or await repo.closed_period(row["id"], key) is not None:
                continue
            body = await billing_body(repo, row, {"month": key}, now, default_region)
            await repo.close_period(row["id"], key, body["timezone"], orjson.dumps(body),
                                    [body["bytes_in"], body["bytes_out"], body["requests"]])
            closed += 1
        if len(accounts) < PAGE:
            return closed
        after = accounts[-1]["id"]


class PeriodCloser:
    """Runs close_ended_months every ``interval`` seconds (a close is idempotent: replicas may race)."""

    def __init__(self, repo: Repository, grace_seconds: int, default_region: str, interval: float) -> None:
        self._args = (repo, grace_seconds, default_region)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="period-closer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        repo, grace, region = self._args
        while True:
            try:
                n = await close_ended_months(repo, int(time.time()), grace, region)
                if n:
                    log.info("closed %d ended billing month(s)", n)
            except Exception:  # the database may be down: try again on the next tick
                log.exception("closing ended billing months failed; retrying")
            await asyncio.sleep(self._interval)
