"""Refusals before a request's task exists: meterd's HTTP server asks a governed app's early_reply
(governance.asgi) for each request it has read, and the adaptive limiter refuses there while its
queue rule is armed and the request would wait past the target. All on the real server, with real
sockets; the limiter's state is set by hand only where a test needs it armed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from governance import Governance
from service.runtime.http_server import HttpServer


def _app() -> Starlette:
    async def block(request: Request) -> PlainTextResponse:
        time.sleep(0.3)  # holds the loop: requests arriving meanwhile are read in one go afterwards
        return PlainTextResponse("blocked")

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    return Starlette(routes=[Route("/block", block), Route("/hello", hello, methods=["GET", "HEAD", "POST"])])


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Paths whose ASGI task the server started (an early refusal starts none)."""
    paths: Counter[str] = Counter()
    original = HttpToolsProtocol._start_asgi_task

    def counting(self: Any, cycle: Any, app: Any) -> None:
        paths[cycle.scope["path"]] += 1
        original(self, cycle, app)

    monkeypatch.setattr(HttpToolsProtocol, "_start_asgi_task", counting)
    return paths


@pytest.fixture
async def served() -> Any:
    registry = CollectorRegistry()
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive", "cooloff": 60}]},
                                 registry=registry)
    server = HttpServer(gov.asgi(_app()), "127.0.0.1", 0, name="early")  # early_reply found on the app
    await server.start()
    yield server.port, gov.plugin("adaptive").limiter, registry
    await server.stop()
    await gov.aclose()


def _read_reply(sock: socket.socket) -> bytes:
    """One whole response (Content-Length framed) from a keep-alive connection with one reply in flight."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(_head(head + b"\r\n\r\n")[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a reply"
        body += chunk
    return head + b"\r\n\r\n" + body


def _head(reply: bytes) -> dict[bytes, bytes]:
    lines = reply.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines)}


def _arm(lim: Any) -> None:
    lim.queue_armed = True
    lim.last_drop = lim._clock()  # within the 60 s cool-off: the sampler keeps it armed


async def test_requests_read_behind_a_long_batch_are_refused_before_any_task(
        served: Any, started: Counter[str]) -> None:
    port, lim, registry = served
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    blocker = socket.create_connection(("127.0.0.1", port))
    try:
        await asyncio.sleep(0.2)  # all connections accepted
        _arm(lim)

        def client() -> list[bytes]:
            blocker.sendall(b"GET /block HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.1)  # the server is inside /block now
            for s in socks:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_reply(blocker).endswith(b"blocked")
            return [_read_reply(s) for s in socks]

        replies = await asyncio.to_thread(client)
        for reply in replies:
            assert reply.startswith(b"HTTP/1.1 503 ")
            head = _head(reply)
            assert head[b"content-type"] == b"application/problem+json"
            assert int(head[b"retry-after"]) >= 1
            problem = json.loads(reply.partition(b"\r\n\r\n")[2])
            assert (problem["status"], problem["plugin"], problem["reason"]) == (503, "adaptive", "queueing")
        assert started["/hello"] == 0 and started["/block"] == 1  # no task for any refused request
        # accounted like any refusal
        labels = {"method": "GET", "route": "/hello"}
        assert registry.get_sample_value("governance_rejections_total", {
            "plugin": "adaptive", "reason": "queueing", "transport": "http"}) == 6
        assert registry.get_sample_value("http_server_request_duration_seconds_count",
                                         {**labels, "status_code": "503"}) == 6
        assert registry.get_sample_value("http_server_active_requests", labels) == 0
        assert registry.get_sample_value("governance_adaptive_early_refusals_total", {"limiter": "default"}) == 6

        lim.queue_armed = False  # overload over: the same keep-alive connections are served

        def again() -> list[bytes]:
            for s in socks:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            return [_read_reply(s) for s in socks]

        assert all(r.startswith(b"HTTP/1.1 200 ") and r.endswith(b"hello") for r in await asyncio.to_thread(again))
        assert started["/hello"] == 6
    finally:
        for s in [*socks, blocker]:
            s.close()


async def test_unarmed_the_server_starts_every_request(served: Any, started: Counter[str]) -> None:
    port, lim, _ = served

    def client() -> list[bytes]:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            for s in socks:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            return [_read_reply(s) for s in socks]
        finally:
            for s in socks:
                s.close()

    replies = await asyncio.to_thread(client)
    assert all(r.startswith(b"HTTP/1.1 200 ") for r in replies)
    assert started["/hello"] == 6 and lim.drops == 0


@pytest.fixture
def refusing(served: Any) -> Any:
    """The limiter refuses every request early (the framing tests below are about the server)."""
    port, lim, _ = served
    _arm(lim)
    lim.refuse_early = lambda: "queueing"
    yield port, lim
    del lim.refuse_early


async def test_an_early_refusal_drops_the_body_and_keeps_the_connection(refusing: Any, started: Counter[str]) -> None:
    port, lim = refusing

    def client() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
            refused = _read_reply(s)  # answered before the body was sent
            s.sendall(b"0123456789")
            del lim.refuse_early
            lim.queue_armed = False
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            return refused, _read_reply(s)

    refused, served_after = await asyncio.to_thread(client)
    lim.refuse_early = lambda: "queueing"  # for the fixture's teardown
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert served_after.startswith(b"HTTP/1.1 200 ") and served_after.endswith(b"hello")
    assert started["/hello"] == 2 - 1  # the POST got no task; the GET after its body did


@pytest.mark.parametrize("request_head", [
    b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    b"GET /hello HTTP/1.0\r\n\r\n",
])
async def test_an_early_refusal_closes_when_the_client_asked(refusing: Any, request_head: bytes) -> None:
    port, _ = refusing

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(request_head)
            data = b""
            while chunk := s.recv(65536):  # read to the server's close
                data += chunk
            return data

    reply = await asyncio.to_thread(client)
    assert reply.startswith(b"HTTP/1.1 503 ") and _head(reply)[b"connection"] == b"close"


async def test_an_early_refusal_of_head_sends_no_body(refusing: Any) -> None:
    port, lim = refusing

    def client() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            s.sendall(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += s.recv(1)
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            return head, _read_reply(s)  # starts right after the head: no body bytes in between

    head, next_reply = await asyncio.to_thread(client)
    assert head.startswith(b"HTTP/1.1 503 ") and int(_head(head)[b"content-length"]) > 0
    assert next_reply.startswith(b"HTTP/1.1 503 ")


async def test_pipelined_requests_are_refused_in_order(refusing: Any, started: Counter[str]) -> None:
    port, lim = refusing

    def read_one(stream: Any, with_body: bool) -> bytes:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = stream.readline()
            assert line, f"connection closed after {head!r}"
            head += line
        return head + (stream.read(int(_head(head)[b"content-length"])) if with_body else b"")

    def client() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(5)
            # three requests in one segment: the second and third wait behind the first in uvicorn's
            # pipeline and are asked about when the one ahead of them completes; the replies may
            # arrive in one segment too, so they are read from one buffered stream
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n" * 2 + b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
            stream = s.makefile("rb")
            replies = [read_one(stream, True), read_one(stream, True), read_one(stream, False)]
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")  # nothing stray after the HEAD reply
            return [*replies, read_one(stream, True)]

    replies = await asyncio.to_thread(client)
    assert [r[:13] for r in replies] == [b"HTTP/1.1 503 "] * 4
    bodies = [r.partition(b"\r\n\r\n")[2] for r in (replies[0], replies[1], replies[3])]
    assert [json.loads(body)["status"] for body in bodies] == [503] * 3
    assert replies[2].endswith(b"\r\n\r\n")  # HEAD: no body
    assert started["/hello"] == 0
