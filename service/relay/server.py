"""Run the relay on uvicorn (`meterd relay` calls `serve`)."""

from __future__ import annotations

import socket

import uvicorn
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.relay.app import build_relay_app
from service.relay.settings import RelaySettings


def default_registry() -> CollectorRegistry:
    """A fresh registry with the process_*, python_gc_* and python_info collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def serve(
    settings: RelaySettings,
    *,
    registry: CollectorRegistry | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve until uvicorn is told to stop (SIGINT/SIGTERM). `sockets` lets tests pre-bind port 0."""
    app = build_relay_app(settings, registry=registry if registry is not None else default_registry())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # leave logging to the process (meterd's structured logging)
        access_log=False,
        server_header=False,
    )
    await uvicorn.Server(config).serve(sockets=sockets)
