"""Webhook secret rotation with an overlap (audit N19): during it every delivery carries two
signatures, one per secret, so a receiver can switch secrets without dropping events; a new URL
gets a new secret at once (the previous receiver knows the old one)."""

from __future__ import annotations

import hashlib
import hmac
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
from tests.service.webhook_receivers import RawReceiver


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'meterd.db'}")
    await db.migrate()
    yield Repository(db)
    await db.close()


@pytest.fixture
def receiver() -> Iterator[RawReceiver]:
    r = RawReceiver()
    yield r
    r.close()


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check: any of the comma-separated v1 signatures matches this secret."""
    mac = "v1=" + hmac.new(secret.encode(), headers["meterd-timestamp"].encode() + b"." + body,
                           hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(sig.strip(), mac) for sig in headers["meterd-signature"].split(","))


async def deliver_one(repo: Repository, account: str, minute: int, overlap: int) -> None:
    await Ledger(repo.db).apply(Flush(usage={(account, "n", minute): [10, 0, 1]}))
    cfg = WebhookSettings(allow_private_destinations=True, secret_overlap_seconds=overlap)
    d = WebhookDispatcher(repo, cfg, PipelineMetrics(CollectorRegistry()))
    try:
        deadline = time.monotonic() + 10
        while await d.deliver_due() == 0:
            assert time.monotonic() < deadline, "nothing due"
        await d.settle()
    finally:
        await d.stop()


async def test_rotation_signs_with_both_secrets_during_the_overlap(repo: Repository, receiver: RawReceiver) -> None:
    created = await repo.create_account("rot", 10, alert_thresholds="[1.0]", webhook_url=receiver.url)
    acc, old = created["id"], created["webhook_secret"]
    new = await repo.rotate_webhook_secret(acc)
    assert new and new != old
    await deliver_one(repo, acc, NOV, overlap=3600)
    (headers,), (body,) = receiver.headers, receiver.requests
    assert signed_by(new, headers, body) and signed_by(old, headers, body)
    assert headers["meterd-signature"].count("v1=") == 2
    assert headers["meterd-signature"].startswith("v1=" + hmac.new(  # the current secret's first
        new.encode(), headers["meterd-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest())


async def test_after_the_overlap_only_the_new_secret_signs(repo: Repository, receiver: RawReceiver) -> None:
    created = await repo.create_account("rot", 10, alert_thresholds="[1.0]", webhook_url=receiver.url)
    acc, old = created["id"], created["webhook_secret"]
    new = await repo.rotate_webhook_secret(acc)
    assert new
    await deliver_one(repo, acc, NOV, overlap=0)
    (headers,), (body,) = receiver.headers, receiver.requests
    assert signed_by(new, headers, body) and not signed_by(old, headers, body)
    assert headers["meterd-signature"].count("v1=") == 1


async def test_a_rotation_without_overlap_forgets_the_old_secret(repo: Repository, receiver: RawReceiver) -> None:
    """What a new webhook URL does: the previous receiver's secret never signs again."""
    created = await repo.create_account("rot", 10, alert_thresholds="[1.0]", webhook_url=receiver.url)
    acc, old = created["id"], created["webhook_secret"]
    new = await repo.rotate_webhook_secret(acc, overlap=False)
    assert new
    await deliver_one(repo, acc, NOV, overlap=3600)
    (headers,), (body,) = receiver.headers, receiver.requests
    assert signed_by(new, headers, body) and not signed_by(old, headers, body)


async def test_logs_name_the_origin_only(repo: Repository, receiver: RawReceiver,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """A failed attempt's line and httpx's request line keep neither user info, path nor query."""
    url = receiver.url.replace("http://", "http://hookuser:hookpass@") + "?token=t0psecret"
    receiver.answer = lambda conn: conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")  # type: ignore[method-assign]
    created = await repo.create_account("logs", 10, alert_thresholds="[1.0]", webhook_url=url)
    caplog.set_level("INFO")
    await deliver_one(repo, created["id"], NOV, overlap=0)
    assert len(receiver.requests) == 1
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "webhook attempt failed" in text and f"http://127.0.0.1:{receiver.port}" in text
    for secret in ("hookpass", "t0psecret", "/hook", created["webhook_secret"]):
        assert secret not in text, secret
