"""uvicorn's httptools protocol with the two limits it lacks: a deadline for a request's headers
(slowloris: uvicorn only times out idle keep-alive connections, never a request whose headers
trickle in) and a cap on the bytes of the request line plus headers (httptools has none); each
response's head sent together with its body (service.runtime.coalesced_writes); and the header
deadline and uvicorn's keep-alive timeout run from one timer per connection, not per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from service.runtime.coalesced_writes import CoalescingWriter


def _reply(transport: asyncio.Transport, status: int, title: str, detail: str) -> None:
    """A problem+json answer written straight to the socket (no ASGI cycle exists yet), then close."""
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    head = (f"HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    transport.write(head.encode() + body)
    transport.close()


EarlyReply = Callable[[dict[str, Any]], "tuple[int, list[tuple[bytes, bytes]], bytes] | None"]


def _answer_early(cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """Complete `cycle` with this reply without running the app: one write, then what uvicorn's
    send does at the end of a response (close unless keep-alive, then the protocol's bookkeeping:
    the next pipelined request, keep-alive idle time). A body still arriving is dropped by the
    parser hooks, as for an app that answers without reading it."""
    parts = [STATUS_LINE[status]]
    for name, value in (*cycle.default_headers, *headers):
        parts += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if cycle.scope["method"] != "HEAD":
        parts.append(body)
    cycle.response_started = cycle.response_complete = True
    cycle.transport.write(b"".join(parts))
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def guarded_protocol(header_timeout: float, max_header_bytes: int,
                     on_connection: Callable[[], None] | None = None,
                     coalesce_writes: bool = True, early_reply: EarlyReply | None = None) -> type[HttpToolsProtocol]:
    """on_connection runs after each new connection is set up (service.runtime.eager_accept);
    coalesce_writes=False keeps uvicorn's two writes per response (for A/B measurements);
    early_reply(scope) is asked before each request's ASGI task is started and may answer it instead
    (governance.asgi.GovernanceMiddleware.early_reply: refusals under overload without a task)."""

    base = HttpToolsProtocol  # hooks below call it directly: no super() object per parser callback

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _header_start = 0.0  # loop time the current request's first byte arrived
        _in_headers = False
        _too_large = False
        _writer: CoalescingWriter | None = None
        _idle_since: float | None = None  # loop time the last response completed, while idle

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if coalesce_writes:
                self._writer = CoalescingWriter(transport, self.loop)
            # A connection that sends nothing is waiting on its first request's headers too.
            self._header_start, self._in_headers = self.loop.time(), True
            # One timer per connection for both of its timeouts (the header deadline and uvicorn's
            # keep-alive), re-armed when it fires, instead of a timer armed and cancelled per request
            # for each: a request only stamps the loop time its headers started and its response
            # ended. Arming and cancelling a uvloop timer costs ~2 us; counted with callgrind on
            # keep-alive requests to a bare Starlette route, the header deadline's alone was 10.7k
            # instructions per request (216k -> 205k, with the base hooks called without super()).
            self._deadline = self.loop.call_later(min(header_timeout, self.timeout_keep_alive), self._check_timeouts)
            if on_connection is not None:
                on_connection()

        def _check_timeouts(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:  # closed / upgraded
                return
            keep_alive = self.timeout_keep_alive
            # Never sleep past the earliest deadline a state entered from now on could have.
            wait = min(header_timeout, keep_alive)
            if self._in_headers:
                left = self._header_start + header_timeout - self.loop.time()
                if left <= 0:
                    _reply(self.transport, 408, "Request Timeout",
                           f"request headers not complete within {header_timeout:g} s")
                    return
                wait = min(wait, left)
            elif self._idle_since is not None:
                left = self._idle_since + keep_alive - self.loop.time()
                if left <= 0:
                    self.timeout_keep_alive_handler()
                    return
                wait = min(wait, left)
            self._deadline = self.loop.call_later(wait, self._check_timeouts)

        def on_response_complete(self) -> None:
            # uvicorn's own, except that idle time is stamped instead of a keep-alive timer armed
            # (data_received's cancel of that timer then finds none: a no-op).
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_since = self.loop.time()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            base.on_message_begin(self)
            # a keep-alive connection's next request gets its own deadline and byte budget
            self._header_bytes, self._header_start, self._in_headers = 0, self.loop.time(), True
            self._idle_since = None

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            if self._header_bytes > max_header_bytes:
                self._refuse_too_large()
            base.on_url(self, url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4
            if self._header_bytes > max_header_bytes:
                self._refuse_too_large()
            base.on_header(self, name, value)

        def _refuse_too_large(self) -> None:
            self._too_large = True
            # Raising from a parser callback makes httptools stop; data_received then answers
            # through send_400_response, which sends 431 instead (below).
            raise ValueError("request headers too large")

        def send_400_response(self, msg: str) -> None:
            self._in_headers = False
            if self._too_large:
                _reply(self.transport, 431, "Request Header Fields Too Large",
                       f"request line and headers exceed {max_header_bytes} bytes")
                return
            super().send_400_response(msg)

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            # `app` is uvicorn's own 503 app when its concurrency limit is hit: left to it.
            if early_reply is not None and app is self.app:
                reply = early_reply(cycle.scope)
                if reply is not None:
                    _answer_early(cycle, *reply)
                    return
            base._start_asgi_task(self, cycle, app)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            previous = self.cycle
            base.on_headers_complete(self)
            cycle, writer = self.cycle, self._writer
            if cycle is not previous and cycle is not None and writer is not None and not cycle.response_complete:
                cycle.transport = writer  # type: ignore[assignment]
                # Not for a cycle queued behind a pipelined one (its head is not the next write), nor
                # for HEAD (uvicorn writes no body for it, so nothing would release the head).
                if (previous is None or previous.response_complete) and self.scope["method"] != "HEAD":
                    writer.expect_head()

    return GuardedHttpToolsProtocol

