"""A small profiled service for the tests: Starlette + uvicorn on a free port, the Profiler with its
SIGTRAP toggle and watchdog, the capture index under /debug/profiles, and optional CPU or memory
pressure from a function with a recognisable name.

Configured by the JSON in $PROFILED_APP_CONFIG:
  {"settings": {...ProfilingSettings...}, "busy": bool, "hold_mib": int, "token": str, "open": bool,
   "loop": "asyncio" | "uvloop"}
("open": no admin check, for a browser that cannot send the token; auth is tested separately.)
Prints "READY <port> <pid>" on stdout once it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import threading

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from profiling import Profiler, ProfilingSettings


def recognisable_busy_function(stop: threading.Event) -> None:
    """CPU pressure the flamegraph must show by name."""
    total = 0
    while not stop.is_set():
        for i in range(5000):
            total += i * i
    print("busy done", total % 7, flush=True)


async def main() -> None:
    config = json.loads(os.environ.get("PROFILED_APP_CONFIG", "{}"))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    settings = ProfilingSettings.model_validate(config.get("settings", {}))
    profiler = Profiler(settings)
    token = config.get("token", "secret-token")
    held = bytearray(config.get("hold_mib", 0) * 1024 * 1024)  # memory pressure, if asked for

    def authorize(request: Request) -> bool:
        return bool(config.get("open")) or request.headers.get("authorization") == f"Bearer {token}"

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"ok {len(held)}")

    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await profiler.start()
        yield
        await profiler.aclose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Mount("/debug/profiles", routes=profiler.starlette_routes(authorize)),
        ],
        lifespan=lifespan,
    )
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such sockets;
    # with proto 0 every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    busy = None
    if config.get("busy"):
        busy = threading.Thread(target=recognisable_busy_function, args=(stop,), daemon=True)
        busy.start()

    async def announce() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"READY {port} {os.getpid()}", flush=True)

    announcer = asyncio.create_task(announce())
    await server.serve(sockets=[sock])
    announcer.cancel()
    stop.set()


if __name__ == "__main__":
    if json.loads(os.environ.get("PROFILED_APP_CONFIG", "{}")).get("loop") == "uvloop":
        import uvloop  # the loop meterd runs on: its subprocess API differs in details

        uvloop.run(main())
    else:
        asyncio.run(main())
