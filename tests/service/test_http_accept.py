"""meterd's own accept loop (service/runtime/http_server.py): connections that queued in the kernel
while a handler held the event loop are all served, stop() refuses new connections but lets a
request in progress finish, and a port in use fails start() with the bind error."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

from service.runtime.http_server import HttpServer


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        time.sleep(0.3)  # holds the event loop, like a CPU-bound handler
    elif scope["path"] == "/slow":
        await asyncio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _get(port: int, path: str, out: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append(data)


async def _threads(n: int, port: int, path: str, out: list[bytes]) -> list[threading.Thread]:
    threads = [threading.Thread(target=_get, args=(port, path, out)) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.parametrize("eager", [True, False])
async def test_connections_queued_while_the_loop_was_busy_are_all_served(eager: bool) -> None:
    server = HttpServer(_app, "127.0.0.1", 0, name="t", eager_accept=eager)
    await server.start()
    try:
        out: list[bytes] = []
        blocker = await _threads(1, server.port, "/block", out)
        await asyncio.sleep(0.05)  # the blocking request is being handled...
        burst = await _threads(60, server.port, "/", out)  # ...while these queue in the kernel
        for t in blocker + burst:
            await asyncio.to_thread(t.join, 10)
        assert len(out) == 61
        assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b"ok") for r in out)
    finally:
        await server.stop()


async def test_stop_refuses_new_connections_and_finishes_the_request_in_progress() -> None:
    server = HttpServer(_app, "127.0.0.1", 0, name="t")
    await server.start()
    port = server.port
    out: list[bytes] = []
    slow = await _threads(1, port, "/slow", out)
    await asyncio.sleep(0.1)
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    await asyncio.to_thread(slow[0].join, 5)
    assert len(out) == 1 and out[0].startswith(b"HTTP/1.1 200")


async def test_a_port_in_use_fails_start_with_the_bind_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = HttpServer(_app, "127.0.0.1", taken.getsockname()[1], name="t")
        with pytest.raises(OSError):
            await server.start()
