"""Quota threshold events, recorded in the apply transaction: SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from service.config import WebhookSettings
from service.metrics import PipelineMetrics
from service.storage import Repository, schema
from service.storage.ledger import Flush, Ledger, OffsetConflict
from service.storage.repository import now_ms
from service.webhooks import WebhookDispatcher
from tests.service.test_storage import db, repo  # noqa: F401  (fixtures)

GROUP, TOPIC = "g", "t"

NOV = int(datetime(2026, 11, 10, tzinfo=ZoneInfo("UTC")).timestamp())


class Flusher:
    """The consumer's flush transaction with advancing offsets, as the Kafka consumer does."""

    def __init__(self, store: Repository) -> None:
        self.ledger, self.offset = Ledger(store.db), None

    async def __call__(self, usage: dict) -> None:
        new = (self.offset or 0) + 1
        await self.ledger.apply(Flush(usage=usage, offsets={0: (self.offset, new)}), group_id=GROUP, topic=TOPIC)
        self.offset = new


async def test_each_threshold_once_per_period(repo: Repository) -> None:  # noqa: F811
    seen: list = []
    acc = (await repo.create_account("q", 1000, alert_thresholds="[0.5, 1.0, 1.5]",
                                     webhook_url="http://127.0.0.1:9/hook"))["id"]
    free = (await repo.create_account("free", None))["id"]
    flush = Flusher(repo)
    flush.ledger.on_crossings = seen.extend
    await flush({(acc, "n1", NOV): [300, 100, 1], (free, "n1", NOV): [10**9, 0, 1]})
    assert await repo.list_events(acc, 10) == [] and seen == []
    await flush({(acc, "n2", NOV + 60): [100, 0, 1]})  # 500 of 1000: 0.5 reached exactly
    await flush({(acc, "n2", NOV + 120): [1, 0, 1]})  # still past 0.5: no second event
    events = await repo.list_events(acc, 10)
    assert [(e["threshold_ppm"], e["used_bytes"], e["quota_bytes"]) for e in events] == [(500_000, 500, 1000)]
    assert [c.threshold for c in seen] == [0.5]
    await flush({(acc, "n1", NOV + 180): [2000, 0, 1]})  # jumps past 1.0 and 1.5 in one flush
    events = await repo.list_events(acc, 10)
    assert sorted(e["threshold_ppm"] for e in events) == [500_000, 1_000_000, 1_500_000]
    assert sorted(c.threshold for c in seen) == [0.5, 1.0, 1.5]
    assert await repo.list_events(free, 10) == []
    for e in events:
        assert (await repo.delivery_state(e["id"]))["attempts"] == 0  # type: ignore[index]
    # Next month is a new period: the thresholds fire again there.
    dec = int(datetime(2026, 12, 1, tzinfo=ZoneInfo("UTC")).timestamp())
    await flush({(acc, "n1", dec): [600, 0, 1]})
    assert len(await repo.list_events(acc, 10)) == 4


async def test_period_follows_billing_timezone(repo: Repository) -> None:  # noqa: F811
    """Usage at 2026-11-30T20:00Z is December in Shanghai: it counts towards December there."""
    acc = (await repo.create_account("sh", 100, billing_timezone="Asia/Shanghai"))["id"]
    flush = Flusher(repo)
    nov30 = int(datetime(2026, 11, 30, 12, tzinfo=ZoneInfo("UTC")).timestamp())
    await flush({(acc, "n", nov30): [60, 0, 1]})  # 20:00 in Shanghai, still November
    await flush({(acc, "n", nov30 + 8 * 3600): [60, 0, 1]})  # 04:00 on 1 December in Shanghai
    events = await repo.list_events(acc, 10)
    assert events == []  # 60 bytes in each month: neither reaches 80
    await flush({(acc, "n", nov30 + 9 * 3600): [30, 0, 1]})
    (event,) = await repo.list_events(acc, 10)
    start = int(datetime(2026, 12, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp())
    assert (event["period_start"], event["timezone"], event["used_bytes"]) == (start, "Asia/Shanghai", 90)
    assert await repo.delivery_state(event["id"]) is None  # no webhook_url: no outbox row


async def test_lost_partition_records_no_event(repo: Repository) -> None:  # noqa: F811
    acc = (await repo.create_account("c", 10))["id"]
    flush = Flusher(repo)
    await flush({(acc, "n", NOV): [1, 0, 1]})
    with pytest.raises(OffsetConflict):
        await flush.ledger.apply(Flush(usage={(acc, "n", NOV): [50, 0, 1]}, offsets={0: (0, 5)}),
                                 group_id=GROUP, topic=TOPIC)
    assert await repo.list_events(acc, 10) == []


async def test_outbox_claim_and_backoff_bookkeeping(repo: Repository) -> None:  # noqa: F811
    acc = (await repo.create_account("w", 10, webhook_url="http://127.0.0.1:9/x"))["id"]
    await Flusher(repo)({(acc, "n", NOV): [10, 0, 1]})
    (ev,) = [e for e in await repo.list_events(acc, 10) if e["threshold_ppm"] == 1_000_000]
    now = 2 * 10**12
    claimed = await repo.claim_deliveries(now, lease_ms=60_000)
    assert sorted(r["event_id"] for r in claimed) == sorted(e["id"] for e in await repo.list_events(acc, 10))
    assert claimed[0]["webhook_secret"].startswith("whsec_")
    assert await repo.claim_deliveries(now, lease_ms=60_000) == []  # leased: nobody else sends it
    await repo.delivery_done(ev["id"], attempts=1, delivered=False, next_attempt_ms=now + 5000, error="HTTP 500")
    assert [r["event_id"] for r in await repo.claim_deliveries(now + 5000, 1000)] == [ev["id"]]
    await repo.delivery_done(ev["id"], attempts=2, delivered=True, next_attempt_ms=None)
    state = await repo.delivery_state(ev["id"])
    assert state is not None and state["delivered_at_ms"] and state["attempts"] == 2
    # Delivered rows are never claimed again; the 0.8 event's row is due again once its lease ran out.
    (other,) = [e["id"] for e in await repo.list_events(acc, 10) if e["id"] != ev["id"]]
    assert [r["event_id"] for r in await repo.claim_deliveries(now + 10**9, 1000)] == [other]


async def test_dispatcher_backoff_and_removed_url(repo: Repository) -> None:  # noqa: F811
    """The dispatcher against a port nothing listens on: each failure is booked with a growing
    delay until max_attempts; an event whose account lost its URL is given up, not retried."""
    dead = (await repo.create_account("dead", 10, alert_thresholds="[1.0]",
                                      webhook_url="http://127.0.0.1:9/hook"))["id"]
    gone = (await repo.create_account("gone", 10, alert_thresholds="[1.0]",
                                      webhook_url="http://127.0.0.1:9/hook"))["id"]
    await Flusher(repo)({(dead, "n", NOV): [10, 0, 1], (gone, "n", NOV): [10, 0, 1]})
    await repo.update_account(gone, {"webhook_url": None})
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    cfg = WebhookSettings(retry_base_seconds=0.05, retry_max_seconds=0.1, max_attempts=3, timeout_seconds=2,
                          allow_private_destinations=True)
    dispatcher = WebhookDispatcher(repo, cfg, metrics)
    try:
        (dead_event,) = await repo.list_events(dead, 10)
        (gone_event,) = await repo.list_events(gone, 10)
        delays = []  # (retry time - start of the round, retry time - end of the round)
        for _ in range(3):
            deadline = time.monotonic() + 5
            started = now_ms()
            while await dispatcher.deliver_due() == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await dispatcher.settle()  # attempts run in their own tasks
            state = await repo.delivery_state(dead_event["id"])
            assert state is not None
            delays.append((state["next_attempt_ms"] - started, state["next_attempt_ms"] - now_ms()))
    finally:
        await dispatcher.stop()
    # Base 50 ms doubling, with 50-100 % jitter: 25-50 ms after the first failure, 50-100 ms after
    # the second. The failure was booked within the round, so the delay lies between the two bounds.
    assert delays[0][0] >= 25 and delays[0][1] <= 50 and delays[1][0] >= 50 and delays[1][1] <= 100, delays
    state = await repo.delivery_state(dead_event["id"])
    assert state is not None and state["attempts"] == 3 and state["failed_at_ms"] and not state["delivered_at_ms"]
    assert "ConnectError" in (state["last_error"] or "")
    gone_state = await repo.delivery_state(gone_event["id"])
    assert gone_state is not None and gone_state["failed_at_ms"] and gone_state["last_error"] == "webhook_url removed"
    assert registry.get_sample_value("meterd_webhook_deliveries_total", {"result": "retry"}) == 2
    assert registry.get_sample_value("meterd_webhook_deliveries_total", {"result": "failed"}) == 2


async def test_delivery_status_given_up_and_redeliver(repo: Repository) -> None:  # noqa: F811
    """The states /events shows, from the outbox row, and the admin's redeliver on a given-up event."""
    from service.webhooks import delivery_json

    acc = (await repo.create_account("s", 10, alert_thresholds="[1.0]", webhook_url="http://127.0.0.1:9/x"))["id"]
    flush = Flusher(repo)
    await flush({(acc, "n", NOV): [10, 0, 1]})
    (ev,) = await repo.list_events(acc, 10)
    pending = delivery_json(ev)
    assert pending and (pending["status"], pending["attempts"], pending["http_status"]) == ("pending", 0, None)
    assert pending["next_attempt_at"] and pending["delivered_at"] is None and pending["given_up_at"] is None
    await repo.delivery_done(ev["id"], attempts=1, delivered=False, next_attempt_ms=2 * 10**12, error="HTTP 503",
                             status=503)
    (ev,) = await repo.list_events(acc, 10)
    retrying = delivery_json(ev)
    assert retrying and (retrying["status"], retrying["http_status"]) == ("retrying", 503)
    assert retrying["next_attempt_at"] == "2033-05-18T03:33:20Z"
    await repo.delivery_done(ev["id"], attempts=15, delivered=False, next_attempt_ms=None, error="HTTP 503",
                             status=503)
    (ev,) = await repo.list_events(acc, 10)
    given_up = delivery_json(ev)
    assert given_up and given_up["status"] == "given_up" and given_up["given_up_at"]
    assert given_up["next_attempt_at"] is None
    assert await repo.claim_deliveries(now_ms(), 1000) == []
    # Redeliver: due now, attempts and errors reset, claimed by the next dispatcher round.
    assert await repo.redeliver(acc, ev["id"]) == "queued"
    (ev,) = await repo.list_events(acc, 10)
    assert (delivery_json(ev) or {})["status"] == "pending"
    assert [r["event_id"] for r in await repo.claim_deliveries(now_ms() + 1, 1000)] == [ev["id"]]
    assert await repo.redeliver(acc, "evt_missing") == "no_event"
    other = (await repo.create_account("o", 10))["id"]
    assert await repo.redeliver(other, ev["id"]) == "no_event"  # another account's event
    # An event recorded without a URL has no outbox row: no delivery, and redeliver adds one once a URL is set.
    bare = (await repo.create_account("bare", 10, alert_thresholds="[1.0]"))["id"]
    await flush({(bare, "n", NOV): [10, 0, 1]})
    (bare_ev,) = await repo.list_events(bare, 10)
    assert delivery_json(bare_ev) is None
    assert await repo.redeliver(bare, bare_ev["id"]) == "no_webhook_url"
    await repo.update_account(bare, {"webhook_url": "http://127.0.0.1:9/y"})
    assert await repo.redeliver(bare, bare_ev["id"]) == "queued"
    assert (delivery_json((await repo.list_events(bare, 10))[0]) or {})["status"] == "pending"


async def test_outbox_retention(repo: Repository) -> None:  # noqa: F811
    """N20: delivered and given-up rows older than webhooks.retention_seconds are deleted by the
    dispatcher; pending and retrying rows, and the events themselves, stay."""
    accs = [(await repo.create_account(f"r{i}", 10, alert_thresholds="[1.0]",
                                       webhook_url="http://127.0.0.1:9/x"))["id"] for i in range(4)]
    await Flusher(repo)({(a, "n", NOV): [10, 0, 1] for a in accs})
    ids = [(await repo.list_events(a, 10))[0]["id"] for a in accs]
    delivered_old, failed_old, delivered_new, retrying = ids
    for event_id, delivered in ((delivered_old, True), (failed_old, False), (delivered_new, True)):
        await repo.delivery_done(event_id, attempts=1, delivered=delivered, next_attempt_ms=None)
    await repo.delivery_done(retrying, attempts=1, delivered=False, next_attempt_ms=now_ms() + 10**9, error="x")
    old = now_ms() - 40 * 86400 * 1000  # backdate two of them past the 30-day default
    async with repo.db.engine.begin() as conn:
        o = schema.webhook_outbox
        await conn.execute(o.update().where(o.c.event_id == delivered_old).values(delivered_at_ms=old))
        await conn.execute(o.update().where(o.c.event_id == failed_old).values(failed_at_ms=old))
    cfg = WebhookSettings(poll_interval_seconds=0.05)
    dispatcher = WebhookDispatcher(repo, cfg, PipelineMetrics(CollectorRegistry()))
    await dispatcher.start()
    try:
        deadline = time.monotonic() + 10
        while await repo.delivery_state(delivered_old) is not None:
            assert time.monotonic() < deadline, "old rows not purged"
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    assert await repo.delivery_state(failed_old) is None
    assert await repo.delivery_state(delivered_new) is not None and await repo.delivery_state(retrying) is not None
    assert all([await repo.list_events(a, 10) for a in accs])  # the events stay
