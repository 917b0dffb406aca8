"""One send() per small response instead of two.

uvicorn's response cycle writes the status line and headers to the transport as soon as the app
sends `http.response.start`, and the body separately; uvloop sends each write at once (TCP_NODELAY),
so every response costs two send() calls, two TCP segments and, on the client, often two reads
(checked with strace: a 2-byte body went out as its own segment). Under overload that is paid for
every shed request too.

`CoalescingWriter` is the transport as a response cycle sees it: it holds the header block and
sends it together with the body's first write (one writev through `writelines`). A head without a
Content-Length (a chunked stream: server-sent events, say, which may wait long before their first
event) is never held past the current loop iteration: a flush is queued with it. A head with one is
held until its body's first write or the connection's close, i.e. only while the app produces a
body the client cannot do without (queueing a flush for every response cost more instructions than
the saving). A HEAD response has no body write, so the protocol never has its head held.
Order is never changed: while a block is held, any write goes out behind it. Written by hand:
uvicorn offers no hook for this and uvloop no option.
"""

from __future__ import annotations

import asyncio
from typing import Any

_CONTINUE = b"HTTP/1.1 100 "  # the interim reply receive() writes; the client waits for it
_SIZED = b"\r\ncontent-length:"
_JOIN_BELOW = 16384


class CoalescingWriter:
    __slots__ = ("transport", "_loop", "held", "_head_next")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self.held: bytes | None = None
        self._head_next = False

    def expect_head(self) -> None:
        """The next write starts a response: hold it for the body."""
        self._head_next = True

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= _JOIN_BELOW:  # one buffer: the transport's cheapest path
                self.transport.write(held + data)
            else:  # no copy of a large body: writev
                self.transport.writelines((held, data))
        elif self._head_next and not data.startswith(_CONTINUE):
            self._head_next = False
            self.held = data
            if _SIZED not in data:  # uvicorn writes header names lowercased
                self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, ...: the real transport's
        return getattr(self.transport, name)
