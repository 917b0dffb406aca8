"""One send() per small response instead of two.

uvicorn's response cycle writes the status line and headers to the transport as soon as the app
sends `http.response.start`, and the body separately; uvloop sends each write at once (TCP_NODELAY),
so every response costs two send() calls, two TCP segments and, on the client, often two reads
(checked with strace: a 2-byte body went out as its own segment). Under overload that is paid for
every shed request too.

`CoalescingWriter` is the transport as a response cycle sees it: it holds the header block and
sends it together with the body's first write (one writev through `writelines`). Nothing is held
longer than the current loop iteration: a fallback flush is queued with the held block, for apps
that send the headers and then wait before any body (streaming, server-sent events) and for
responses with no body write at all (HEAD). Order is never changed: while a block is held, any
write goes out behind it. Written by hand: uvicorn offers no hook for this and uvloop no option.
"""

from __future__ import annotations

import asyncio
from typing import Any

_CONTINUE = b"HTTP/1.1 100 "  # the interim reply receive() writes; the client waits for it


class CoalescingWriter:
    __slots__ = ("transport", "_loop", "_held", "_head_next")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._head_next = False

    def expect_head(self) -> None:
        """The next write starts a response: hold it for the body."""
        self._head_next = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.writelines((held, data))
        elif self._head_next and not data.startswith(_CONTINUE):
            self._head_next = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...: the real transport's
        return getattr(self.transport, name)
