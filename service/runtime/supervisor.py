"""`meterd up` on every core: the roles in child processes under one supervisor.

N writer processes accept on one gRPC port (SO_REUSEPORT: the kernel spreads connections), the
HTTP API and the consumer run in a process each. Every child is `meterd child ROLE`, reads the same
configuration and data dir, and reports its endpoints on one stdout line when ready.

Drain order is the single process's, across processes: writers and the API stop accepting and
commit their log (SIGTERM, wait for exit), then the consumer counts what the log holds and stops.
Children ignore SIGINT (a terminal's Ctrl-C reaches the whole process group) so that order holds.
A child that exits on its own is logged, counted and restarted with a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from service.config import Settings
from service.runtime.datadir import StartupError
from service.runtime.workers import reserve_shared_port

log = logging.getLogger("meterd.supervisor")
READY_PREFIX = "meterd-child-ready "
TARGETS_FILE = "meterd-up-targets.json"
START_TIMEOUT_S = 120.0
FRONT_STOP_S = 60.0  # writers/API: in-flight calls finish (gRPC grace 10 s) and the log commits
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long restarts without delay next time


@dataclass
class Child:
    slot: str  # writer-1, writer-2, api, consumer
    role: str
    proc: asyncio.subprocess.Process | None = None
    endpoints: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    backoff: float = 0.5


class SupervisorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter("meterd_supervisor_restarts", "Child processes restarted after an unexpected exit",
                                ["role"], registry=registry)
        self.children = Gauge("meterd_supervisor_children", "Child processes running, by role",
                              ["role"], registry=registry)


class Supervisor:
    def __init__(self, settings: Settings, workers: int, config: Path | None, registry: CollectorRegistry) -> None:
        self.settings, self.config = settings, config
        self.metrics = SupervisorMetrics(registry)
        self.children = [Child(f"writer-{i + 1}", "writer") for i in range(workers)]
        self.children += [Child("api", "api"), Child("consumer", "consumer")]
        self._stopping = False
        self.stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._reservation: socket.socket | None = None
        self._extra_targets: list[dict[str, Any]] = []  # the supervisor's own admin target
        self.grpc_port = settings.grpc.port

    def _check_and_reserve(self) -> None:
        from service.runtime.startup import port_in_use

        s = self.settings
        try:
            reservation = reserve_shared_port(s.grpc.host, s.grpc.port)
        except OSError:
            raise port_in_use("grpc", s.grpc.host, s.grpc.port) from None
        self._reservation = reservation
        self.grpc_port = int(reservation.getsockname()[1])

    async def start(self) -> None:
        self._check_and_reserve()
        for child in self.children:
            await self._spawn(child)
        waits = [asyncio.create_task(self._until_ready(c)) for c in self.children]
        try:
            await asyncio.gather(*waits)
        except BaseException:
            for w in waits:
                w.cancel()
            raise

    async def _until_ready(self, child: Child) -> None:
        assert child.proc is not None
        exited = asyncio.create_task(child.proc.wait())
        ready = asyncio.create_task(child.ready.wait())
        try:
            await asyncio.wait({exited, ready}, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if not child.ready.is_set():
            code = child.proc.returncode
            why = f"exited with code {code}" if code is not None else f"was not ready within {START_TIMEOUT_S:.0f} s"
            raise StartupError(f"the {child.slot} process {why} (its own message is above)")

    def _command(self, child: Child) -> list[str]:
        argv = [sys.executable, "-m", "service.cli", "child", child.role, "--slot", child.slot]
        return argv + (["--config", str(self.config)] if self.config is not None else [])

    def _env(self) -> dict[str, str]:
        s = self.settings
        # The environment wins over the YAML file in every child, as in the supervisor.
        return {**os.environ, "METERD_DATA_DIR": str(s.data_dir), "METERD_MODE": s.mode or "development",
                "METERD_HTTP__PORT": str(s.http.port), "METERD_GRPC__PORT": str(self.grpc_port),
                "METERD_ADMIN__PORT": "0", "METERD_WORKERS": "1"}

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        child.endpoints = {}
        child.proc = await asyncio.create_subprocess_exec(*self._command(child), env=self._env(),
                                                          stdin=asyncio.subprocess.PIPE,  # EOF there: we are gone
                                                          stdout=asyncio.subprocess.PIPE)
        child.started_at = time.monotonic()
        self.metrics.children.labels(child.role).inc()
        self._track(self._read_stdout(child, child.proc))
        self._track(self._watch(child, child.proc))

    def _track(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_stdout(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(READY_PREFIX):
                child.endpoints = json.loads(line[len(READY_PREFIX):])
                child.ready.set()
                self.write_targets()
            else:
                sys.stdout.write(line)
                sys.stdout.flush()

    async def _watch(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.metrics.children.labels(child.role).dec()
        if self._stopping or child.proc is not proc:
            return
        if time.monotonic() - child.started_at > STABLE_AFTER_S:
            child.backoff = 0.5
        delay = child.backoff
        child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
        how = f"signal {-code}" if code < 0 else f"code {code}"
        log.error("%s process (pid %d) exited with %s; restarting it in %.1f s", child.slot, proc.pid, how, delay,
                  extra={"slot": child.slot, "exit_code": code})
        self.metrics.restarts.labels(child.role).inc()
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn(child)
            log.info("%s process restarted (pid %d)", child.slot, child.proc.pid if child.proc else 0)

    def healthy(self) -> bool:
        return all(c.proc is not None and c.proc.returncode is None and c.ready.is_set() for c in self.children)

    def endpoint(self, slot: str, name: str) -> str | None:
        return next((c.endpoints.get(name) for c in self.children if c.slot == slot), None)

    def scrape_targets(self) -> list[dict[str, Any]]:
        """Prometheus file_sd entries: every process's /metrics (the API's on its HTTP port)."""
        entries = []
        for c in self.children:
            url = c.endpoints.get("http") or c.endpoints.get("admin")
            if url:
                entries.append({"targets": [url.removeprefix("http://")],
                                "labels": {"job": "meterd", "role": c.role, "process": c.slot}})
        return entries

    def write_targets(self, extra: list[dict[str, Any]] | None = None) -> None:
        if extra is not None:
            self._extra_targets = extra
        path = self.settings.data_dir / TARGETS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([*self._extra_targets, *self.scrape_targets()], indent=1) + "\n")
        tmp.replace(path)

    async def stop(self) -> int:
        """The drain, in order; 0 if every child drained cleanly."""
        self._stopping = True
        front = [c for c in self.children if c.role != "consumer"]
        codes = await asyncio.gather(*(self._terminate(c, FRONT_STOP_S) for c in front))
        consumer_s = self.settings.consumer.drain_seconds + 30.0
        codes += await asyncio.gather(*(self._terminate(c, consumer_s) for c in self.children if c.role == "consumer"))
        for task in list(self._tasks):
            task.cancel()
        if self._reservation is not None:
            self._reservation.close()
        with contextlib.suppress(OSError):
            (self.settings.data_dir / TARGETS_FILE).unlink()
        self.stopped = True
        return 0 if all(code == 0 for code in codes) else 1

    async def _terminate(self, child: Child, timeout: float) -> int:
        proc = child.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.error("%s process did not stop within %.0f s; killing it", child.slot, timeout)
            proc.kill()
            code = await proc.wait()
        if code != 0:
            log.error("%s process stopped with code %d", child.slot, code, extra={"slot": child.slot})
        return code
