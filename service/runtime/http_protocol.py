"""uvicorn's httptools protocol with the two limits it lacks: a deadline for a request's headers
(slowloris: uvicorn only times out idle keep-alive connections, never a request whose headers
trickle in) and a cap on the bytes of the request line plus headers (httptools has none); and each
response's head sent together with its body (service.runtime.coalesced_writes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.runtime.coalesced_writes import CoalescingWriter


def _reply(transport: asyncio.Transport, status: int, title: str, detail: str) -> None:
    """A problem+json answer written straight to the socket (no ASGI cycle exists yet), then close."""
    body = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    head = (f"HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    transport.write(head.encode() + body)
    transport.close()


def guarded_protocol(header_timeout: float, max_header_bytes: int,
                     on_connection: Callable[[], None] | None = None) -> type[HttpToolsProtocol]:
    """on_connection runs after each new connection is set up (service.runtime.eager_accept)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _too_large = False
        _writer: CoalescingWriter | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._writer = CoalescingWriter(transport, self.loop)
            self._arm()
            if on_connection is not None:
                on_connection()

        def _arm(self) -> None:
            self._header_bytes = 0
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._headers_timed_out)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_timed_out(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                _reply(self.transport, 408, "Request Timeout",
                       f"request headers not complete within {header_timeout:g} s")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a keep-alive connection's next request gets its own deadline

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def _count(self, n: int) -> None:
            self._header_bytes += n
            if self._header_bytes > max_header_bytes:
                self._too_large = True
                # Raising from a parser callback makes httptools stop; data_received then answers
                # through send_400_response, which sends 431 instead (below).
                raise ValueError("request headers too large")

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            if self._too_large:
                _reply(self.transport, 431, "Request Header Fields Too Large",
                       f"request line and headers exceed {max_header_bytes} bytes")
                return
            super().send_400_response(msg)

        def on_headers_complete(self) -> None:
            self._disarm()
            previous = self.cycle
            super().on_headers_complete()
            cycle, writer = self.cycle, self._writer
            if cycle is not previous and cycle is not None and writer is not None:
                cycle.transport = writer  # type: ignore[assignment]
                if previous is None or previous.response_complete:  # not queued behind a pipelined one
                    writer.expect_head()

        def on_response_complete(self) -> None:
            if self._writer is not None:
                self._writer.flush()  # a response with no body write (HEAD) sends its head now
            super().on_response_complete()

    return GuardedHttpToolsProtocol

