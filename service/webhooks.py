"""Quota-alert webhooks: the event's JSON, its HMAC-SHA256 signature, and the dispatcher that
drains the durable outbox with retries and backoff (at least once; receivers dedupe on the id)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from typing import Any

import httpx
import orjson

from service.config import WebhookSettings
from service.metrics import PipelineMetrics
from service.storage import Repository
from service.storage.quota_alerts import PPM
from service.timezones import format_local_at

log = logging.getLogger("meterd.webhooks")
EVENT_ID_HEADER = "Meterd-Event-Id"
TIMESTAMP_HEADER = "Meterd-Timestamp"
SIGNATURE_HEADER = "Meterd-Signature"


class _OriginOnly(logging.Filter):
    """httpx logs each request's URL at INFO; a webhook URL's path or query often is its credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(a.copy_with(path="/redacted", query=None) if isinstance(a, httpx.URL) else a
                                for a in record.args)
        return True


_ORIGIN_ONLY = _OriginOnly()


def event_body(row: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The event as GET /v1/accounts/{id}/events lists it and as the webhook POSTs it."""
    tz = row["timezone"]
    return {"id": event_id or row["id"], "type": "quota.threshold_crossed", "account_id": row["account_id"],
            "threshold": row["threshold_ppm"] / PPM, "quota_bytes": row["quota_bytes"],
            "used_bytes": row["used_bytes"], "timezone": tz,
            "period_start": format_local_at(row["period_start"], tz),
            "period_end": format_local_at(row["period_end"], tz),
            "created_at": format_local_at(row["created_at_ms"] // 1000, "UTC")}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over "<timestamp>.<body>": binding the timestamp lets receivers
    refuse replays of an old delivery."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


class WebhookDispatcher:
    def __init__(self, repo: Repository, settings: WebhookSettings, metrics: PipelineMetrics) -> None:
        self._repo = repo
        self._cfg = settings
        self._metrics = metrics
        # No redirects: a webhook goes to the URL the operator set, nowhere else.
        self._http = httpx.AsyncClient(timeout=settings.timeout_seconds, follow_redirects=False)
        httpx_log = logging.getLogger("httpx")
        if _ORIGIN_ONLY not in httpx_log.filters:
            httpx_log.addFilter(_ORIGIN_ONLY)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except Exception:  # the database may be down: try again on the next tick
                log.exception("webhook dispatch failed; retrying")
                sent = 0
            if not sent:
                await asyncio.sleep(self._cfg.poll_interval_seconds)

    async def deliver_due(self) -> int:
        now = int(time.time() * 1000)
        lease = int((self._cfg.timeout_seconds + 30) * 1000)
        rows = await self._repo.claim_deliveries(now, lease)
        # One delivery's failure must not keep the others from being booked (they would wait out
        # their lease); it is logged and its row is retried after the lease.
        for result in await asyncio.gather(*(self._send(r) for r in rows), return_exceptions=True):
            if isinstance(result, Exception):
                log.error("webhook delivery failed unexpectedly", exc_info=result)
        return len(rows)

    async def _send(self, row: dict[str, Any]) -> None:
        if not row["webhook_url"]:  # the URL was removed after the event: nothing to deliver to
            await self._repo.delivery_done(row["event_id"], attempts=row["attempts"], delivered=False,
                                           next_attempt_ms=None, error="webhook_url removed")
            self._metrics.webhook_deliveries.labels("failed").inc()
            return
        body = orjson.dumps(event_body(row, row["event_id"]))
        ts = int(time.time())
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: row["event_id"],
                   TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(row["webhook_secret"] or "", ts, body)}
        error = None
        try:
            resp = await self._http.post(row["webhook_url"], content=body, headers=headers)
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        attempts = row["attempts"] + 1
        if error is None:
            await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=True, next_attempt_ms=None)
            self._metrics.webhook_deliveries.labels("delivered").inc()
            return
        if attempts >= self._cfg.max_attempts:
            log.warning("webhook given up", extra={"event_id": row["event_id"], "attempts": attempts, "error": error})
            await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=False,
                                           next_attempt_ms=None, error=error)
            self._metrics.webhook_deliveries.labels("failed").inc()
            return
        delay = min(self._cfg.retry_base_seconds * 2 ** (attempts - 1), self._cfg.retry_max_seconds)
        delay *= 0.5 + random.random() / 2  # jitter: many failing receivers do not retry in lockstep
        await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=False,
                                       next_attempt_ms=int(time.time() * 1000 + delay * 1000), error=error)
        self._metrics.webhook_deliveries.labels("retry").inc()
