"""Run the relay (`meterd relay` calls `serve`) on meterd's hardened HTTP server: header deadline,
header size cap and keep-alive limits (service.runtime.http_server)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from service.relay.app import build_relay_app
from service.relay.auth import WebhookAuth
from service.relay.settings import RelaySettings
from service.runtime.http_server import HttpServer

log = logging.getLogger("meterd.relay")


def default_registry() -> CollectorRegistry:
    """A fresh registry with the process_*, python_gc_* and python_info collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


async def serve(settings: RelaySettings, *, registry: CollectorRegistry | None = None) -> None:
    """Serve until SIGINT/SIGTERM. Stored notifications are queued again before the port opens;
    on stop the server closes first, then the dispatchers get their grace period."""
    warn_if_exposed(settings)
    app = build_relay_app(settings, registry=registry if registry is not None else default_registry())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # HttpServer runs without uvicorn's lifespan: the relay's start-up and shutdown run here.
    async with app.router.lifespan_context(app):
        server = HttpServer(app, settings.host, settings.port, name="relay",
                            header_timeout=settings.header_timeout_s, max_header_bytes=settings.max_header_bytes)
        await server.start()
        log.info("relay listening on %s:%d", settings.host, server.port)
        try:
            await stop.wait()
        finally:
            await server.stop()


def warn_if_exposed(settings: RelaySettings) -> None:
    """Anyone who reaches a non-loopback address can page people when no auth is configured."""
    if WebhookAuth(settings.auth).enabled:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        log.warning("relay listens on %s without authentication: anyone who reaches it can post alerts; "
                    "set relay.auth (bearer_token_file or basic) or bind to 127.0.0.1", settings.host)
