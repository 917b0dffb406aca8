"""The relay's edges: who may post, how much, on which address, and what survives a SIGKILL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import select
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from service.relay import RelaySettings
from service.relay.store import NotificationStore
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET, alert, notification, relay_client, relay_process, relay_settings
from tests.support.servers import free_port

TOKEN = "relay-webhook-token-0123456789"
TEN_MB = 10_000_000
CHALLENGE = 'Bearer realm="meterd-relay", Basic realm="meterd-relay", charset="UTF-8"'


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_binds_loopback_unless_configured() -> None:
    assert RelaySettings().host == "127.0.0.1"
    assert RelaySettings.model_validate({"host": "0.0.0.0"}).host == "0.0.0.0"


async def test_unauthenticated_requests_get_401_when_auth_is_configured(
    fake_robot: FakeDingTalk, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # trailing newline as `echo` writes it: ignored
    auth = {"bearer_token_file": str(token_file), "basic": {"username": "am", "password": "pw-0123456789"}}
    settings = relay_settings(fake_robot, auth=auth)
    payload = notification(alert("Forged"))
    async with relay_client(settings, fake_robot) as (client, _app, registry):
        refused = {
            "no header": None,
            "wrong token": "Bearer relay-webhook-token-012345678X",
            "token prefix": "Bearer relay-webhook-token",
            "wrong password": _basic("am", "pw-012345678X"),
            "wrong user": _basic("xx", "pw-0123456789"),
            "token as basic": _basic(TOKEN, ""),
            "not base64": "Basic !!!",
            "other scheme": f"Token {TOKEN}",
        }
        for case, header in refused.items():
            headers = {"Authorization": header} if header else {}
            r = await client.post("/alerts/oncall", json=payload, headers=headers)
            assert r.status_code == 401, case
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == CHALLENGE
            assert TOKEN not in r.text
        # An unknown robot is not revealed before authentication either.
        assert (await client.post("/alerts/nope", json=payload)).status_code == 401
        accepted = [f"Bearer {TOKEN}", f"bearer   {TOKEN}", _basic("am", "pw-0123456789")]
        for i, header in enumerate(accepted):
            r = await client.post("/alerts/oncall", json=notification(alert(f"Real{i}")),
                                  headers={"Authorization": header})
            assert r.status_code == 200, header
        # Health and metrics stay open for probes and the scraper.
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    assert len(fake_robot.messages) == 3 and not any("Forged" in m.text for m in fake_robot.messages)
    assert registry.get_sample_value(
        "meterd_relay_notifications_total", {"robot": "unknown", "result": "unauthorized"}) == len(refused) + 1


def test_auth_settings_need_one_source_per_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        RelaySettings.model_validate({"auth": {"bearer_token": "a" * 16, "bearer_token_file": str(tmp_path)}})
    with pytest.raises(ValueError, match="exactly one"):
        RelaySettings.model_validate({"auth": {"basic": {"username": "am"}}})


def _raw_post(port: int, head: bytes, body_chunks: int, chunk: bytes, *, chunked: bool) -> tuple[bytes, int, str]:
    """Send `head`, then up to `body_chunks` chunks, reading what the server answers after each
    (a short pause, so its reply is read before a reset can discard it).
    Returns (reply bytes, body bytes the kernel accepted from us, how sending ended)."""
    sent, reply, ended = 0, b"", "sent everything"

    def read(sock: socket.socket, wait: float) -> bool:
        nonlocal reply
        while select.select([sock], [], [], wait)[0]:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                return False
            if not part:
                return False
            reply += part
            wait = 0.05
        return True

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        read(sock, 0.3)
        for _ in range(body_chunks):
            data = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") if chunked else chunk
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError) as exc:
                ended = type(exc).__name__
                break
            except TimeoutError:
                ended = "server stopped reading"
                break
            sent += len(chunk)
            if not read(sock, 0.02):
                ended = "closed by the server"
                break
        read(sock, 0.5)
    return reply, sent, ended


async def test_ten_megabyte_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    fake = FakeDingTalk(secret=SECRET)
    config = {
        "data_dir": str(tmp_path / "data"),
        "max_body_bytes": 256 * 1024,
        "auth": {"bearer_token": TOKEN},
        "robots": {"oncall": {"webhook_url": fake.webhook_url, "secret": SECRET}},
    }
    async with relay_process(tmp_path, config) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        chunk = b"x" * 65536
        auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
        # 1. Declared length: answered 413 from the headers alone, and the connection is closed, so
        # the client cannot push the 10 MB through.
        head = (b"POST /alerts/oncall HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n" + auth
                + f"Content-Length: {TEN_MB}\r\n\r\n".encode())
        reply, sent, ended = await asyncio.to_thread(_raw_post, port, head, TEN_MB // len(chunk) + 1, chunk,
                                                     chunked=False)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert b"connection: close" in reply.lower()
        assert ended != "sent everything" and sent <= len(chunk), (ended, sent)  # closed at the first body bytes
        # 2. No length (chunked): counted while reading, refused once past the cap; the relay stops
        # reading and closes long before the 10 MB are through.
        head = (b"POST /alerts/oncall HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n" + auth
                + b"Transfer-Encoding: chunked\r\n\r\n")
        reply, sent, ended = await asyncio.to_thread(_raw_post, port, head, TEN_MB // len(chunk) + 1, chunk,
                                                     chunked=True)
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert ended != "sent everything" and sent < TEN_MB / 2, (ended, sent)
        # 3. Without credentials the body is never looked at: 401, whatever its size.
        head = (b"POST /alerts/oncall HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {TEN_MB}\r\n\r\n".encode())
        reply, _sent, _ended = await asyncio.to_thread(_raw_post, port, head, 1, chunk, chunked=False)
        assert reply.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: Bearer" in reply, reply[:300]
        # The relay is still fine afterwards.
        async with httpx.AsyncClient() as client:
            assert (await client.get(relay.url + "/readyz")).status_code == 200
        # Header deadline and size cap come from meterd's HttpServer: an oversized header is 431.
        head = b"GET /readyz HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        reply, _sent, _ended = await asyncio.to_thread(_raw_post, port, head, 0, b"", chunked=False)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]


async def _blackhole(port: int) -> asyncio.Server:
    """DingTalk blocked: accepts connections, reads, never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    return await asyncio.start_server(hold, "127.0.0.1", port)


async def test_notification_answered_202_survives_sigkill_and_is_sent_after_restart(tmp_path: Path) -> None:
    dingtalk_port = free_port()
    fake = FakeDingTalk(secret=SECRET)
    fake.base_url = f"http://127.0.0.1:{dingtalk_port}"
    config = {
        "data_dir": str(tmp_path / "data"),
        "ack_timeout_s": 0.5,
        "send_timeout_s": 30,
        "merge_window_s": 0,
        "auth": {"bearer_token": TOKEN},
        "robots": {"oncall": {"webhook_url": fake.webhook_url, "secret": SECRET}},
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    blackhole = await _blackhole(dingtalk_port)
    try:
        async with relay_process(tmp_path, config, log_name="relay-1.log") as relay:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(relay.url + "/alerts/oncall", headers=headers,
                                      json=notification(alert("Durable", fingerprint="durable")))
            # DingTalk never answered within ack_timeout_s: the relay took the notification over.
            assert r.status_code == 202, r.text
            os.killpg(relay.process.pid, signal.SIGKILL)
            assert await asyncio.wait_for(relay.process.wait(), 10) == -signal.SIGKILL
    finally:
        blackhole.close()
        await blackhole.wait_closed()
    assert fake.messages == []
    assert [r.robot for r in NotificationStore(tmp_path / "data").load()] == ["oncall"]

    await fake.start(dingtalk_port)  # DingTalk is back
    try:
        async with relay_process(tmp_path, config, log_name="relay-2.log") as relay:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not fake.messages:
                await asyncio.sleep(0.1)
            assert len(fake.messages) == 1, relay.log()[-2000:]
            assert "Durable" in fake.messages[0].text and fake.violations == []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and NotificationStore(tmp_path / "data").load():
                await asyncio.sleep(0.1)
            assert NotificationStore(tmp_path / "data").load() == []  # settled rows are deleted
            assert "restored 1 stored notifications" in relay.log()
    finally:
        await fake.stop()
    assert len(fake.messages) == 1  # sent once, not again on the clean shutdown
