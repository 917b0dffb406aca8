"""Quota-alert webhooks: the event's JSON, its HMAC-SHA256 signature, and the dispatcher that
drains the durable outbox with retries and backoff (at least once; receivers dedupe on the signed
body's id). Each attempt runs in its own task under a total deadline (service.webhook_send)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Iterable
from typing import Any

import httpx
import orjson

from service.config import WebhookSettings
from service.metrics import PipelineMetrics
from service.storage import Repository
from service.storage.quota_alerts import PPM
from service.timezones import format_local_at
from service.webhook_send import AttemptFailed, post

log = logging.getLogger("meterd.webhooks")
EVENT_ID_HEADER = "Meterd-Event-Id"
TIMESTAMP_HEADER = "Meterd-Timestamp"
SIGNATURE_HEADER = "Meterd-Signature"


def origin(url: httpx.URL | str) -> str:
    """scheme://host[:port] only: a webhook URL's user info, path or query is often its credential."""
    try:
        url = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


class _OriginOnly(logging.Filter):
    """httpx logs each request's URL at INFO: keep only its origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(origin(a) + "/redacted" if isinstance(a, httpx.URL) else a for a in record.args)
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


def delivery_json(row: dict[str, Any]) -> dict[str, Any] | None:
    """An event's delivery as GET .../events shows it (None: the event has no outbox row)."""
    if not row.get("has_delivery"):
        return None

    def at(ms: int | None) -> str | None:
        return None if ms is None else format_local_at(ms // 1000, "UTC")

    done = row["delivered_at_ms"] or row["failed_at_ms"]
    status = ("delivered" if row["delivered_at_ms"] else "given_up" if row["failed_at_ms"]
              else "retrying" if row["attempts"] else "pending")
    return {"status": status, "attempts": row["attempts"], "http_status": row["last_status"],
            "delivered_at": at(row["delivered_at_ms"]), "next_attempt_at": None if done else at(row["next_attempt_ms"]),
            "given_up_at": at(row["failed_at_ms"])}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over "<timestamp>.<body>": binding the timestamp lets receivers
    refuse replays of an old delivery."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_header(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    """One ``v1=`` signature per secret, comma-separated: two while a rotated secret overlaps."""
    return ", ".join(sign(s, timestamp, body) for s in secrets)


def signing_secrets(row: dict[str, Any], overlap_seconds: int, now_ms: int) -> list[str]:
    """The current secret, then the replaced one while its overlap lasts."""
    out = [row["webhook_secret"] or ""]
    rotated = row.get("webhook_secret_rotated_at_ms")
    if row.get("webhook_previous_secret") and rotated is not None and now_ms < rotated + overlap_seconds * 1000:
        out.append(row["webhook_previous_secret"])
    return out


class _FailureLog:
    """One warning per failed attempt, at most one per account per interval (a receiver that is
    down for a day must not fill the log); the lines skipped meanwhile are counted in the next."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # account -> (last logged, skipped since)

    def failed(self, row: dict[str, Any], attempts: int, error: str, retry_in: float | None) -> None:
        account, now = row["account_id"], time.monotonic()
        last, skipped = self._last.get(account, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[account] = (last, skipped + 1)
            return
        if len(self._last) >= 10_000:  # bounded: forget the oldest half
            for key in sorted(self._last, key=lambda k: self._last[k][0])[:5_000]:
                del self._last[key]
        self._last[account] = (now, 0)
        what = "webhook attempt failed; given up" if retry_in is None else "webhook attempt failed; will retry"
        log.warning(what, extra={"event_id": row["event_id"], "account_id": account, "attempt": attempts,
                                 "error": error, "destination": origin(row["webhook_url"]),
                                 "retry_in_seconds": retry_in, "similar_lines_skipped": skipped})


class WebhookDispatcher:
    def __init__(self, repo: Repository, settings: WebhookSettings, metrics: PipelineMetrics, *,
                 mode: str = "production") -> None:
        self._repo = repo
        self._cfg = settings
        self._metrics = metrics
        self._allow_private = settings.private_destinations_allowed(mode)
        # No redirects: a webhook goes to the URL the operator set, nowhere else. No kept-alive
        # connections: requests go to checked IP addresses, and a connection verified for one
        # host name must not carry another host's request to the same address.
        limits = httpx.Limits(max_connections=settings.max_concurrent_deliveries, max_keepalive_connections=0)
        self._http = httpx.AsyncClient(timeout=settings.timeout_seconds, follow_redirects=False, limits=limits)
        httpx_log = logging.getLogger("httpx")
        if _ORIGIN_ONLY not in httpx_log.filters:
            httpx_log.addFilter(_ORIGIN_ONLY)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._failures = _FailureLog(settings.failure_log_interval_seconds)
        self._next_purge = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()  # a cancelled attempt's row is retried after its lease
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    async def settle(self) -> None:
        """Waits for the attempts under way (tests, and anyone who wants the outcome)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _run(self) -> None:
        while True:
            try:
                await self._purge_if_due()
                started = await self.deliver_due()
            except Exception:  # the database may be down: try again on the next tick
                log.exception("webhook dispatch failed; retrying")
                started = 0
            if not started:
                await asyncio.sleep(self._cfg.poll_interval_seconds)

    async def _purge_if_due(self) -> None:
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + 3600
        cutoff = int(time.time() * 1000) - self._cfg.retention_seconds * 1000
        purged = await self._repo.purge_deliveries(cutoff)
        if purged:
            log.info("webhook outbox rows purged", extra={"rows": purged})

    async def deliver_due(self) -> int:
        """Claims due deliveries for the free slots and starts one task each; the number started."""
        free = self._cfg.max_concurrent_deliveries - len(self._inflight)
        if free <= 0:
            return 0
        now = int(time.time() * 1000)
        lease = int((self._cfg.timeout_seconds + 30) * 1000)  # longer than any attempt can take
        rows = await self._repo.claim_deliveries(now, lease, limit=free)
        for row in rows:
            task = asyncio.create_task(self._attempt(row), name=f"webhook-{row['event_id']}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(rows)

    async def _attempt(self, row: dict[str, Any]) -> None:
        # One delivery's failure must not keep the others from being booked: it is logged and
        # its row is retried after the lease.
        try:
            await self._send(row)
        except Exception:
            log.exception("webhook delivery failed unexpectedly", extra={"event_id": row["event_id"]})

    async def _send(self, row: dict[str, Any]) -> None:
        if not row["webhook_url"]:  # the URL was removed after the event: nothing to deliver to
            await self._repo.delivery_done(row["event_id"], attempts=row["attempts"], delivered=False,
                                           next_attempt_ms=None, error="webhook_url removed")
            self._metrics.webhook_deliveries.labels("failed").inc()
            return
        body = orjson.dumps(event_body(row, row["event_id"]))
        ts = int(time.time())
        secrets = signing_secrets(row, self._cfg.secret_overlap_seconds, int(time.time() * 1000))
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: row["event_id"],
                   TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: signature_header(secrets, ts, body)}
        error, status = None, None
        try:
            async with asyncio.timeout(self._cfg.timeout_seconds):
                status = await post(self._http, row["webhook_url"], body, headers, allow_private=self._allow_private)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except AttemptFailed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"deadline of {self._cfg.timeout_seconds:g} s exceeded"
        await self._book(row, error, status)

    async def _book(self, row: dict[str, Any], error: str | None, status: int | None) -> None:
        attempts = row["attempts"] + 1
        if error is None:
            await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=True,
                                           next_attempt_ms=None, status=status)
            self._metrics.webhook_deliveries.labels("delivered").inc()
            return
        if attempts >= self._cfg.max_attempts:
            self._failures.failed(row, attempts, error, None)
            await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=False,
                                           next_attempt_ms=None, error=error, status=status)
            self._metrics.webhook_deliveries.labels("failed").inc()
            return
        delay = min(self._cfg.retry_base_seconds * 2 ** (attempts - 1), self._cfg.retry_max_seconds)
        delay *= 0.5 + random.random() / 2  # jitter: many failing receivers do not retry in lockstep
        self._failures.failed(row, attempts, error, round(delay, 1))
        await self._repo.delivery_done(row["event_id"], attempts=attempts, delivered=False,
                                       next_attempt_ms=int(time.time() * 1000 + delay * 1000), error=error,
                                       status=status)
        self._metrics.webhook_deliveries.labels("retry").inc()
