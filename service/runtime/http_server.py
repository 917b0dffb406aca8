"""uvicorn as a task we control: meterd owns the signals and decides when servers stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from service.runtime.http_protocol import guarded_protocol


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The process-wide drain sequence handles SIGINT/SIGTERM (service.runtime.process).
        yield


class HttpServer:
    def __init__(self, app: ASGIApp, host: str, port: int, *, name: str, header_timeout: float = 10.0,
                 max_header_bytes: int = 65536, keep_alive_timeout: float = 5.0) -> None:
        if header_timeout <= 0 or keep_alive_timeout <= 0:
            raise ValueError("header_timeout and keep_alive_timeout must be positive")
        self.name = name
        config = uvicorn.Config(app, host=host, port=port, lifespan="off", access_log=False, log_config=None,
                                server_header=False, timeout_graceful_shutdown=10,
                                timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
                                http=guarded_protocol(header_timeout, max_header_bytes))
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name=f"http-{self.name}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the bind error
                raise RuntimeError(f"{self.name} HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("not started")

    async def stop(self) -> None:
        # should_exit: stop accepting, let in-flight requests finish (bounded by the graceful timeout).
        self._server.should_exit = True
        if self._task is not None:
            await self._task
