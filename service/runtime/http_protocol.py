"""uvicorn's httptools protocol with the two limits it lacks, as a thin subclass that calls super()
for everything: a deadline for a request's headers (slowloris: uvicorn only times out idle
keep-alive connections, never a request whose headers trickle in) and a cap on the bytes of the
request line plus headers (httptools has none). Both answer with problem+json and close."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from governance.problem import problem_body


def _reply(transport: asyncio.Transport, status: int, title: str, detail: str) -> None:
    """A problem+json answer written straight to the socket (no ASGI cycle exists yet), then close."""
    body = problem_body(status, detail, title=title)
    head = (f"HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    transport.write(head.encode() + body)
    transport.close()


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        deadline: asyncio.TimerHandle | None = None
        header_bytes = 0
        too_large = False
        guarded_transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.guarded_transport = transport
            self.arm()  # a connection that sends nothing is waiting on its first request's headers too

        def arm(self) -> None:
            self.disarm()
            self.deadline = asyncio.get_running_loop().call_later(header_timeout, self.headers_too_slow)

        def disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def headers_too_slow(self) -> None:
            self.deadline = None
            transport = self.guarded_transport
            if transport is not None and not transport.is_closing() and transport.get_protocol() is self:
                _reply(transport, 408, "Request Timeout", f"request headers not complete within {header_timeout:g} s")

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.header_bytes = 0  # a keep-alive connection's next request gets its own budget...
            if self.deadline is None:
                self.arm()  # ...and its own deadline

        def on_url(self, url: bytes) -> None:
            self.count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self.count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def count(self, n: int) -> None:
            self.header_bytes += n
            if self.header_bytes > max_header_bytes:
                self.too_large = True
                # Raising from a parser callback makes httptools stop; data_received then answers
                # through send_400_response, which sends 431 instead (below).
                raise ValueError("request headers too large")

        def on_headers_complete(self) -> None:
            self.disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            self.disarm()
            if self.too_large and self.guarded_transport is not None:
                _reply(self.guarded_transport, 431, "Request Header Fields Too Large",
                       f"request line and headers exceed {max_header_bytes} bytes")
                return
            super().send_400_response(msg)

    return GuardedHttpToolsProtocol
