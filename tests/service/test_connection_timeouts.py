"""The two connection timeouts of meterd's HTTP server, shortened: the header deadline runs per
request (service/runtime/http_protocol.py) and never touches a connection between requests; the
keep-alive timeout (uvicorn's own) closes a connection idle that long after its last response,
never one with a request in progress."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from service.runtime.http_server import HttpServer

TIMEOUT = 0.4
KEEP_ALIVE = 0.6


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(3 * KEEP_ALIVE)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def port() -> Any:
    server = HttpServer(_app, "127.0.0.1", 0, name="t", header_timeout=TIMEOUT, keep_alive_timeout=KEEP_ALIVE)
    await server.start()
    yield server.port
    await server.stop()


def _response(sock: socket.socket) -> bytes:
    """One whole response (the head and the 2-byte body may arrive in separate writes)."""
    data = b""
    while not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _ended_after(sock: socket.socket, start: float) -> tuple[float, bytes]:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return time.perf_counter() - start, data


async def test_a_silent_connection_gets_408_at_the_deadline(port: int) -> None:
    def client() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            return _ended_after(sock, time.perf_counter())

    took, data = await asyncio.to_thread(client)
    assert data.startswith(b"HTTP/1.1 408")
    assert TIMEOUT - 0.05 <= took < TIMEOUT + 0.3


async def test_the_deadline_starts_at_each_requests_first_byte(port: int) -> None:
    def client() -> tuple[float, float, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _response(sock).endswith(b"ok")
            time.sleep(0.3)  # idle between requests: not a header wait
            begun = time.perf_counter()
            sock.sendall(b"GET / HTTP/1.1\r\n")  # ... and the rest never comes
            took, data = _ended_after(sock, begun)
            return took, begun, data

    took, _, data = await asyncio.to_thread(client)
    assert data.startswith(b"HTTP/1.1 408")
    # counted from the second request's first byte, not from the connection or the first request
    assert TIMEOUT - 0.05 <= took < TIMEOUT + 0.3


async def test_busy_keep_alive_connections_outlive_the_deadline(port: int) -> None:
    def client() -> int:
        served = 0
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(2)
            end = time.perf_counter() + 3 * TIMEOUT
            while time.perf_counter() < end:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                reply = _response(sock)
                assert reply.startswith(b"HTTP/1.1 200"), reply
                served += 1
                time.sleep(0.05)
        return served

    assert await asyncio.to_thread(client) >= 10


async def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(port: int) -> None:
    def client() -> tuple[float, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            for _ in range(3):  # a few requests first, so the timer has been re-armed in between
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert _response(sock).endswith(b"ok")
                time.sleep(KEEP_ALIVE / 2)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _response(sock).endswith(b"ok")
            return _ended_after(sock, time.perf_counter())

    took, data = await asyncio.to_thread(client)
    assert data == b""  # closed without a reply: nothing was asked
    assert KEEP_ALIVE - 0.05 <= took < KEEP_ALIVE + 0.3  # counted from the last response


async def test_a_request_longer_than_both_timeouts_is_answered(port: int) -> None:
    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            return _response(sock)

    assert (await asyncio.to_thread(client)).endswith(b"ok")


@pytest.mark.parametrize("timeouts", [{"header_timeout": 0}, {"keep_alive_timeout": 0}])
def test_timeouts_must_be_positive(timeouts: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        HttpServer(_app, "127.0.0.1", 0, name="t", **timeouts)
