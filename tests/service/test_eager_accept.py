"""meterd's HTTP server accepts every queued connection when one arrives.

libuv, under uvloop, accepts one connection per loop iteration; with iterations made long by
CPU-bound work, connections wait in the kernel's accept queue where no limiter sees them (at a 5x
step, 700+ of them for seconds). These tests keep the loop busy in 50 ms slices, open many
connections at once, and time how long the last one waits for its answer.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import uvloop

from service.runtime.http_server import HttpServer

CONNECTIONS = 40
SLICE_S = 0.05


async def _app(scope, receive, send):  # noqa: ANN001 - a bare ASGI app
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _hog(stop: asyncio.Event) -> None:
    while not stop.is_set():
        time.sleep(SLICE_S)  # CPU-bound work on the loop, one slice per iteration
        await asyncio.sleep(0)


async def _get(port: int) -> float:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(2)
    writer.close()
    return time.perf_counter() - start


async def _burst_under_load(eager: bool) -> tuple[float, int]:
    server = HttpServer(_app, "127.0.0.1", 0, name="t", eager_accept=eager)
    await server.start()
    stop = asyncio.Event()
    hog = None
    try:
        # Clients in a thread of their own: the server's loop is the one being kept busy.
        def clients() -> list[float]:
            async def all_of_them() -> list[float]:
                return list(await asyncio.gather(*(_get(server.port) for _ in range(CONNECTIONS))))
            return asyncio.run(all_of_them())

        hog = asyncio.get_running_loop().create_task(_hog(stop))
        waits = await asyncio.to_thread(clients)
        return max(waits), server.eager_accept.accepted if server.eager_accept else 0
    finally:
        stop.set()
        if hog is not None:
            await hog
        await server.stop()


def test_a_burst_of_connections_is_accepted_at_once_while_the_loop_is_busy():
    slowest, accepted = uvloop.run(_burst_under_load(eager=True))
    # One or two loop iterations (50 ms each) to accept, read and answer all of them.
    assert accepted >= CONNECTIONS // 2
    assert slowest < 0.5, f"the last connection waited {slowest:.2f} s"


def test_without_it_the_burst_is_accepted_one_connection_per_iteration():
    # The behaviour the helper exists for (if a libuv release accepts in bulk again, this fails and
    # service.runtime.eager_accept can go): ~40 iterations x 50 ms for the last connection.
    slowest, accepted = uvloop.run(_burst_under_load(eager=False))
    assert accepted == 0
    assert slowest > 1.0, f"the last connection waited only {slowest:.2f} s"


def test_stop_closes_the_duplicate_listener_too():
    async def run() -> int:
        server = HttpServer(_app, "127.0.0.1", 0, name="t")
        await server.start()
        port = server.port
        assert await _get(port) < 5
        await server.stop()
        return port

    port = uvloop.run(run())
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
