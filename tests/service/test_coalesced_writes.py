"""A response's head leaves together with its body (one send), and is never held back longer than
one loop iteration: streaming bodies, HEAD, 100-continue and pipelined requests behave as before."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from service.runtime import http_protocol
from service.runtime.coalesced_writes import CoalescingWriter
from service.runtime.http_server import HttpServer


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, data: Any) -> None:
        self.calls.append(("writelines", tuple(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
STREAMED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_head_and_body_leave_in_one_call() -> None:
    fake = FakeTransport()
    writer = CoalescingWriter(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.expect_head()
    writer.write(HEAD)
    assert fake.calls == []
    writer.write(b"ok")
    assert fake.calls == [("write", HEAD + b"ok")]
    await asyncio.sleep(0)
    assert len(fake.calls) == 1
    writer.write(b"more")  # not a response head: straight through
    assert fake.calls[-1] == ("write", b"more")


async def test_a_streamed_head_goes_out_within_one_loop_iteration_a_sized_one_waits_for_its_body() -> None:
    fake = FakeTransport()
    writer = CoalescingWriter(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.expect_head()
    writer.write(STREAMED)  # chunked: the first chunk may be minutes away (server-sent events)
    await asyncio.sleep(0)
    assert fake.calls == [("write", STREAMED)]

    writer.expect_head()
    writer.write(HEAD)  # sized: its body is what the client is waiting for
    await asyncio.sleep(0)
    assert fake.calls == [("write", STREAMED)] and writer.held == HEAD
    writer.write(b"ok")
    assert fake.calls[-1] == ("write", HEAD + b"ok")


async def test_a_large_body_is_not_copied_onto_its_head() -> None:
    fake = FakeTransport()
    writer = CoalescingWriter(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.expect_head()
    writer.write(HEAD)
    body = b"x" * 100_000
    writer.write(body)
    assert fake.calls == [("writelines", (HEAD, body))]


async def test_interim_100_continue_is_not_held_and_the_real_head_still_is() -> None:
    fake = FakeTransport()
    writer = CoalescingWriter(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.expect_head()
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert fake.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
    writer.write(HEAD)
    writer.write(b"ok")
    assert fake.calls[1:] == [("write", HEAD + b"ok")]


async def test_close_sends_what_is_held_first_and_a_closing_transport_gets_nothing() -> None:
    fake = FakeTransport()
    writer = CoalescingWriter(fake, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.expect_head()
    writer.write(HEAD)
    writer.close()
    assert fake.calls == [("write", HEAD), ("close", None)]
    assert writer.is_closing() and writer.get_extra_info("peername") == "info:peername"

    fake2 = FakeTransport()
    late = CoalescingWriter(fake2, asyncio.get_running_loop())  # type: ignore[arg-type]
    late.expect_head()
    late.write(STREAMED)
    fake2.closing = True  # the peer went away meanwhile
    await asyncio.sleep(0)
    assert fake2.calls == []


# -- through meterd's HTTP server ------------------------------------------------------------------
async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow-body":  # headers now, body later (a stream: no content-length, so chunked)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"late"})
        return
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    body = path.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> Any:
    srv = HttpServer(_app, "127.0.0.1", 0, name="t")
    await srv.start()
    yield srv
    await srv.stop()


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


async def test_a_small_response_is_one_transport_write(server: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []

    class Spy:
        def __init__(self, real: Any) -> None:
            self.real = real

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self.real.write(data)

        def writelines(self, data: Any) -> None:
            writes.append(b"".join(data))
            self.real.writelines(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    real_init = CoalescingWriter.__init__

    def spying_init(self: CoalescingWriter, transport: Any, loop: Any) -> None:
        real_init(self, Spy(transport), loop)

    monkeypatch.setattr(http_protocol.CoalescingWriter, "__init__", spying_init)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for path in (b"/a", b"/bb"):
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(len(path)) == path
    writer.close()
    # one write per response, each with the whole of it: head and body together
    assert len(writes) == 2
    assert all(w.startswith(b"HTTP/1.1 200") for w in writes)
    assert writes[0].endswith(b"\r\n\r\n/a") and writes[1].endswith(b"\r\n\r\n/bb")


async def test_headers_of_a_slow_body_are_not_held_back(server: HttpServer) -> None:
    def client() -> tuple[float, float, bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            start = time.perf_counter()
            sock.sendall(b"GET /slow-body HTTP/1.1\r\nHost: t\r\n\r\n")
            head = _read_until(sock, b"\r\n\r\n", 5)
            t_head = time.perf_counter() - start
            rest = head.split(b"\r\n\r\n", 1)[1]
            if b"late" not in rest:
                rest += _read_until(sock, b"0\r\n\r\n", 5)
            return t_head, time.perf_counter() - start, rest

    t_head, t_body, body = await asyncio.to_thread(client)
    assert body == b"4\r\nlate\r\n0\r\n\r\n"
    assert t_head < 0.3 <= t_body  # the head went out before the handler's 0.5 s wait ended


async def test_head_requests_pipelining_and_100_continue_still_work(server: HttpServer) -> None:
    def client() -> tuple[bytes, bytes, bytes]:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n")
            head_only = _read_until(sock, b"\r\n\r\n", 2)
            # two requests in one segment: both answered, in order, on the same connection
            sock.sendall(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n")
            pipelined = _read_until(sock, b"/two", 2)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            interim = _read_until(sock, b"100 Continue\r\n\r\n", 2)
            sock.sendall(b"hello")
            final = interim + _read_until(sock, b"hello", 2)
            return head_only, pipelined, final

    head_only, pipelined, final = await asyncio.to_thread(client)
    assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")
    assert pipelined.count(b"HTTP/1.1 200") == 2 and pipelined.index(b"/one") < pipelined.index(b"/two")
    assert final.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200") and final.endswith(b"hello")
