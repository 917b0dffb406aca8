"""Receivers that try to hurt the sender (audit N6, N8, N18): a 400 MB answer, a receiver that drips
its answer for ever, destinations on private and loopback addresses. The dispatcher runs against
real receivers on loopback and a real SQLite database."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.config import WebhookSettings
from service.metrics import PipelineMetrics
from service.storage import Repository, create_database
from service.storage.ledger import Flush, Ledger
from service.webhooks import WebhookDispatcher
from tests.service.test_quota_alerts import NOV
from tests.service.webhook_receivers import DripReceiver, HugeReceiver, RawReceiver

MiB = 1 << 20


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'meterd.db'}")
    await db.migrate()
    yield Repository(db)
    await db.close()


@pytest.fixture
def receivers() -> Iterator[list[RawReceiver]]:
    made: list[RawReceiver] = []
    yield made
    for r in made:
        r.close()


def dispatcher(repo: Repository, **settings: object) -> WebhookDispatcher:
    cfg = WebhookSettings.model_validate({"allow_private_destinations": True, **settings})
    return WebhookDispatcher(repo, cfg, PipelineMetrics(CollectorRegistry()))


async def crossing(repo: Repository, url: str, minute: int = NOV) -> str:
    """An account whose quota is crossed now: one event in the outbox for `url`."""
    acc = (await repo.create_account("hostile", 10, alert_thresholds="[1.0]", webhook_url=url))["id"]
    await Ledger(repo.db).apply(Flush(usage={(acc, "n", minute): [10, 0, 1]}))
    (event,) = await repo.list_events(acc, 10)
    return str(event["id"])


async def attempted(repo: Repository, event_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await repo.delivery_state(event_id)
        if state and (state["attempts"] or state["delivered_at_ms"]):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"no attempt booked for {event_id} within {timeout} s")


def high_water_rss() -> int:
    """This process's peak resident set (VmHWM), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_a_400_mb_answer_is_not_read(repo: Repository, receivers: list[RawReceiver]) -> None:
    """N6: the status is all that matters; at most a few KiB of the body are read, then the
    connection is closed, so the receiver cannot push more than the socket buffers hold."""
    huge = HugeReceiver(400 * MiB)
    receivers.append(huge)
    event_id = await crossing(repo, huge.url)
    before = high_water_rss()
    d = dispatcher(repo, timeout_seconds=60)
    try:
        await d.deliver_due()
        state = await attempted(repo, event_id, timeout=60)
    finally:
        await d.stop()
    assert state["delivered_at_ms"], state  # a 200 is a delivery, whatever follows it
    time.sleep(0.5)  # let the receiver notice the hang-up
    assert huge.sent < 32 * MiB, f"the receiver pushed {huge.sent / MiB:.0f} MiB"
    grew = high_water_rss() - before
    assert grew < 32 * MiB, f"peak RSS grew {grew / MiB:.0f} MiB"


async def test_a_dripping_receiver_does_not_stall_another_account(repo: Repository,
                                                                  receivers: list[RawReceiver]) -> None:
    """N8: a receiver answering one byte every 0.5 s (each read is quick, the whole never ends)
    holds its own attempt until the total deadline, and nobody else's."""
    drip, polite = DripReceiver(interval=0.5, limit=60), RawReceiver()
    receivers.extend([drip, polite])
    slow = await crossing(repo, drip.url)
    d = dispatcher(repo, timeout_seconds=4, poll_interval_seconds=0.1)
    await d.start()
    try:
        assert await asyncio.to_thread(drip.started.wait, 10), "the dripping receiver got no request"
        fast = await crossing(repo, polite.url, minute=NOV + 60)
        t0 = time.monotonic()
        state = await attempted(repo, fast, timeout=15)
        assert state["delivered_at_ms"] and time.monotonic() - t0 < 4, "the other account waited"
        slow_state = await attempted(repo, slow, timeout=15)
    finally:
        await d.stop()
    # The drip's attempt ended at the 4 s deadline, as a failure to retry.
    assert not slow_state["delivered_at_ms"] and "deadline" in (slow_state["last_error"] or ""), slow_state
    for _ in range(50):  # the receiver notices the hang-up on its next byte or two
        if drip.hung_up_after is not None:
            break
        await asyncio.sleep(0.1)
    assert drip.hung_up_after is not None and drip.hung_up_after < 10, drip.hung_up_after


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1",
                                     "224.0.0.1", "::"])
def test_private_addresses_are_refused(address: str) -> None:
    from service.webhook_send import refused_reason

    assert refused_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    from service.webhook_send import refused_reason

    assert refused_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_loopback_refused_at_send_time_unless_allowed(repo: Repository, receivers: list[RawReceiver],
                                                            host: str) -> None:
    """N18: the address is checked when sending (after resolving the name), so a URL that was
    public when it was set and now resolves to a private address is refused too."""
    receiver = RawReceiver()
    receivers.append(receiver)
    url = receiver.url.replace("127.0.0.1", host)
    refused_event = await crossing(repo, url)
    d = dispatcher(repo, allow_private_destinations=False)
    try:
        await d.deliver_due()
        state = await attempted(repo, refused_event, timeout=15)
    finally:
        await d.stop()
    assert not state["delivered_at_ms"] and receiver.requests == []
    assert "refused" in (state["last_error"] or "") and "127.0.0.1" in (state["last_error"] or ""), state

    allowed_event = await crossing(repo, url, minute=NOV + 60)
    d = dispatcher(repo, allow_private_destinations=True)
    try:
        await d.deliver_due()
        state = await attempted(repo, allowed_event, timeout=15)
    finally:
        await d.stop()
    assert state["delivered_at_ms"] and len(receiver.requests) == 1, state


def test_private_destinations_default_follows_the_mode() -> None:
    """`meterd up` (development) may post to a receiver on the developer's machine; the roles
    (production) may not; an explicit setting wins either way."""
    assert WebhookSettings().private_destinations_allowed("development") is True
    assert WebhookSettings().private_destinations_allowed("production") is False
    explicit = WebhookSettings(allow_private_destinations=False)
    assert explicit.private_destinations_allowed("development") is False
    assert WebhookSettings(allow_private_destinations=True).private_destinations_allowed("production") is True


@pytest.mark.parametrize("url", ["http://:80/hook", "http://exa%20mple/hook", "http://[bad/hook"])
async def test_unusable_urls_are_booked_as_failed_attempts(repo: Repository, url: str) -> None:
    """URLs the API's check lets through but no request can use: a failed attempt with a reason,
    retried and given up like any other (never an unbooked row re-sent after every lease)."""
    event_id = await crossing(repo, url)
    d = dispatcher(repo, allow_private_destinations=True)
    try:
        await d.deliver_due()
        state = await attempted(repo, event_id, timeout=15)
    finally:
        await d.stop()
    assert state["attempts"] == 1 and not state["delivered_at_ms"] and state["last_error"], state


async def test_concurrent_attempts_are_capped(repo: Repository, receivers: list[RawReceiver]) -> None:
    """webhooks.max_concurrent_deliveries bounds the attempts (and sockets) hostile receivers can hold."""
    drips = [DripReceiver(interval=0.5, limit=30) for _ in range(3)]
    receivers.extend(drips)
    for i, drip in enumerate(drips):
        await crossing(repo, drip.url, minute=NOV + 60 * i)
    d = dispatcher(repo, timeout_seconds=3, poll_interval_seconds=0.1, max_concurrent_deliveries=2)
    await d.start()
    try:
        await asyncio.sleep(1.5)
        assert sum(r.started.is_set() for r in drips) == 2  # the third waits for a free slot
        for _ in range(100):  # a slot frees at the 3 s deadline
            if all(r.started.is_set() for r in drips):
                break
            await asyncio.sleep(0.1)
        assert all(r.started.is_set() for r in drips)
    finally:
        await d.stop()
