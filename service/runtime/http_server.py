"""uvicorn as a task we control: meterd owns the signals, the listening socket and the accept loop,
and decides when servers stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from service.runtime.http_protocol import guarded_protocol

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process-wide drain sequence handles SIGINT/SIGTERM (service.runtime.process).
        yield


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn's HTTP protocol (guarded, see http_protocol) behind meterd's own accept loop.

    With `eager_accept` (the default) every connection waiting in the kernel's accept queue is taken
    at each wake-up: uvloop's own listener accepts one per loop iteration, so while a CPU-bound
    handler holds the loop, new connections would wait in the kernel where no limiter sees them and
    their clients time out (benchmarks/overload.py measures both). Without it uvicorn listens itself.
    """

    def __init__(self, app: ASGIApp, host: str, port: int, *, name: str, header_timeout: float = 10.0,
                 max_header_bytes: int = 65536, keep_alive_timeout: float = 5.0, eager_accept: bool = True) -> None:
        if header_timeout <= 0 or keep_alive_timeout <= 0:
            raise ValueError("header_timeout and keep_alive_timeout must be positive")
        self.name, self.host, self.eager_accept = name, host, eager_accept
        self.config = uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
                                     server_header=False, timeout_graceful_shutdown=10,
                                     timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
                                     http=guarded_protocol(header_timeout, max_header_bytes))
        self._server = _Server(self.config)
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.eager_accept:
            self._sock = _listen(self.host, self.config.port, self.config.backlog)  # raises the bind error
        # With sockets=[] uvicorn opens no listener of its own but runs everything else (date header,
        # connection tracking, graceful shutdown of the connections our loop hands it).
        sockets: list[socket.socket] | None = [] if self.eager_accept else None
        self._task = asyncio.create_task(self._server.serve(sockets=sockets), name=f"http-{self.name}")
        while not self._server.started:
            if self._task.done():
                self._close_listener()
                self._task.result()  # raises the bind error
                raise RuntimeError(f"{self.name} HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        if self._sock is not None:
            self._acceptor = asyncio.create_task(self._accept_loop(self._sock), name=f"http-{self.name}-accept")

    def _protocol(self) -> asyncio.Protocol:
        server = self._server
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=server.server_state, app_state=server.lifespan.state)
        return protocol

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conns = [(await loop.sock_accept(sock))[0]]
                while True:  # drain the kernel's queue while we are awake
                    try:
                        conns.append(sock.accept()[0])
                    except (BlockingIOError, InterruptedError):
                        break
            except (ConnectionAbortedError, ConnectionResetError):
                continue
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.error("%s: accept failed (%s), pausing accepts for 1 s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            await asyncio.gather(*(self._serve(loop, conn) for conn in conns))

    async def _serve(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.connect_accepted_socket(self._protocol, conn)
        except OSError:  # the client went away before we got to it
            conn.close()
        except BaseException:  # stop() cancelled us: the socket is ours to close
            conn.close()
            raise

    @property
    def port(self) -> int:
        if self._sock is not None:
            return int(self._sock.getsockname()[1])
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("not started")

    def _close_listener(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> None:
        # Stop accepting (the loop's wait on the socket ends before the socket closes), then
        # should_exit: let in-flight requests finish (bounded by the graceful timeout).
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        self._close_listener()
        self._server.should_exit = True
        if self._task is not None:
            await self._task
