"""The supervisor process of `meterd up --workers N`: its children, its own admin port, pid file and banner.

Metrics: every process serves its own /metrics (prometheus-client's multiprocess mode would not
carry the governance and profiling collectors, nor per-process gauges). The supervisor lists them
all in `<data dir>/meterd-up-targets.json`, a Prometheus file_sd file kept current across restarts,
and serves its own (restarts, children running) on admin.port. SIGTRAP to the supervisor (the pid
file's pid) profiles it and every child: py-spy records with --subprocesses.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from profiling import Profiler
from service.api.app import build_admin_app
from service.config import Settings
from service.runtime import datadir
from service.runtime.http_server import HttpServer
from service.runtime.startup import binding, check_port_free, open_database
from service.runtime.supervisor import TARGETS_FILE, Supervisor

log = logging.getLogger("meterd")


async def serve_supervised(settings: Settings, workers: int, config: Path | None,
                           banner: Callable[[list[str]], None]) -> int:
    s = settings
    _check_ports(s)
    await _migrate_once(s)
    registry = _supervisor_registry()
    supervisor = Supervisor(s, workers, config, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    profiler = Profiler(s.profiling.model_copy(update={"service_name": s.service_name})
                        if "service_name" not in s.profiling.model_fields_set else s.profiling, registry=registry)
    admin: HttpServer | None = None
    pid_file = datadir.PidFile(s.data_dir, "up")
    try:
        await profiler.start()
        await supervisor.start()

        async def children_ready() -> str | None:
            return None if supervisor.healthy() else "a child process is not running (being restarted)"

        admin = HttpServer(build_admin_app(registry, [children_ready]), s.admin.host, s.admin.port, name="admin",
                           header_timeout=s.http.header_timeout_seconds, max_header_bytes=s.http.max_header_bytes)
        with binding("admin", s.admin.host, s.admin.port):
            await admin.start()
        admin_url = f"http://{s.admin.host}:{admin.port}"
        supervisor.write_targets([{"targets": [admin_url.removeprefix("http://")],
                                   "labels": {"job": "meterd", "role": "supervisor", "process": "supervisor"}}])
        pid_file.write()
        banner(_lines(supervisor, workers, admin_url))
        await stop.wait()
        log.info("draining")
        code = await supervisor.stop()
        log.info("stopped")
        return code
    finally:
        if not supervisor.stopped:
            await supervisor.stop()
        if admin is not None:
            await admin.stop()
        await profiler.aclose()
        pid_file.remove()
        http = supervisor.endpoint("api", "http")
        if http:
            datadir.remove_api_url(s.data_dir, http)


async def _migrate_once(s: Settings) -> None:
    db = await open_database(s)  # one line if unreachable; migrated once here, children never race on it
    try:
        await db.migrate()
    finally:
        await db.close()


def _supervisor_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _check_ports(s: Settings) -> None:
    """Every port of every child, before any starts, all busy ones in one line. gRPC's plain bind
    also refuses a port another process holds with SO_REUSEPORT: writers share only among themselves."""
    busy = []
    for kind, host, port in (("grpc", s.grpc.host, s.grpc.port), ("http", s.http.host, s.http.port),
                             ("admin", s.admin.host, s.admin.port)):
        try:
            check_port_free(kind, host, port)
        except datadir.StartupError as exc:
            busy.append(str(exc))
    if busy:
        raise datadir.StartupError("; ".join(busy))


def _lines(supervisor: Supervisor, workers: int, admin_url: str) -> list[str]:
    s = supervisor.settings
    http = supervisor.endpoint("api", "http")
    return [f"  HTTP API     {http}   (docs {http}/docs, metrics {http}/metrics)",
            f"  gRPC writer  {s.grpc.host}:{supervisor.grpc_port}   ({workers} writer processes, SO_REUSEPORT)",
            f"  admin        {admin_url}   (/metrics /healthz /readyz of the supervisor)",
            f"  metrics      every process's /metrics listed in {s.data_dir / TARGETS_FILE} (Prometheus file_sd)",
            f"  Log          {supervisor.endpoint('consumer', 'log')}"]
