"""Accept every pending connection, not one per event-loop iteration.

libuv (so uvloop, so uvicorn's default loop) accepts one connection each time the listening socket
polls readable, i.e. one per loop iteration. While the loop is busy with CPU-bound requests an
iteration lasts one request or more, so under a load step new connections wait in the kernel's
accept queue, unseen by the server and by the overload limiter (which can only shed what reaches
it): measured with a 5x step on a 5 ms route, 700+ connections queued there for 1.7-4.5 s and their
clients timed out although the limiter was shedding everything it saw within 20 ms.

`EagerAccept` drains that queue whenever a new connection shows up: the HTTP protocol calls it from
`connection_made` (so only when libuv has just accepted one, i.e. there may be more), it accepts the
rest with non-blocking accept() on a duplicate of the listening descriptor and hands each socket to
the loop (`connect_accepted_socket`), as asyncio's own selector loop does with its accept backlog.
Nothing here replaces uvicorn's server: the first connection of each burst is still uvicorn's,
shutdown still closes every connection through uvicorn's server state, and `close()` drops our
duplicate descriptors before uvicorn closes its listener so the port stops accepting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

# Accepted per call: bounds one callback's work (~30 us per connection) while the kernel queue drains
# over a few callbacks; every connection accepted here triggers another call when it is made.
BATCH = 128


class EagerAccept:
    def __init__(self, batch: int = BATCH) -> None:
        self._batch = batch
        self._listeners: list[socket.socket] = []
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[object]] = set()
        self.accepted = 0  # connections this helper accepted (uvicorn's own are not counted)

    def attach(self, listeners: list[int], factory: Callable[[], asyncio.Protocol]) -> None:
        """Start draining the listening descriptors `listeners` with protocols from `factory`."""
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        for fd in listeners:
            sock = socket.socket(fileno=os.dup(fd))  # same open socket; closing ours leaves uvicorn's
            sock.setblocking(False)
            self._listeners.append(sock)

    def __call__(self) -> None:
        """Accept what is queued now (called from a protocol's connection_made)."""
        loop, factory = self._loop, self._factory
        if loop is None or factory is None:
            return
        for listener in self._listeners:
            for _ in range(self._batch):
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # EMFILE and friends: leave the rest to uvicorn's listener
                    log.warning("eager accept stopped: %s", exc)
                    break
                conn.setblocking(False)
                self.accepted += 1
                task = loop.create_task(self._connect(loop, factory, conn))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _connect(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol],
                       conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(factory, conn)
        except OSError:  # the peer went away between accept() and here
            conn.close()

    def close(self) -> None:
        """Stop accepting (idempotent). Connections already handed over stay uvicorn's."""
        self._loop = self._factory = None
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        self._listeners.clear()
