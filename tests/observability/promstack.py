"""Start REAL Prometheus and Alertmanager binaries for tests (random loopback ports, temp dirs).

Each runs as our child in its own process group and is stopped (TERM, then KILL) on exit. A port
taken between picking and binding (other suites run in parallel) is retried with a new port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.require import require_binary
from tests.support.servers import free_port

LOOPBACK = "127.0.0.1"


@dataclass
class Proc:
    name: str
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        try:
            return (self.workdir / "process.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def _running(
    name: str, workdir: Path, argv_for: Callable[[int], list[str]], ready_path: str, timeout: float = 30.0
) -> Iterator[Proc]:
    workdir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        log = (workdir / "process.log").open("wb")
        process = subprocess.Popen(
            argv_for(port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
        log.close()
        proc = Proc(name, f"http://{LOOPBACK}:{port}", workdir, process)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(proc.url + ready_path, timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            else:
                last_log = proc.log
                _stop(process)
                if "address already in use" in last_log:
                    continue
                raise RuntimeError(f"{name} did not become ready; log:\n{last_log[-3000:]}")
            yield proc
            return
        finally:
            _stop(process)
    raise RuntimeError(f"{name}: no free port after 3 tries; log:\n{last_log[-3000:]}")


@contextlib.contextmanager
def running_prometheus(config_file: Path, workdir: Path) -> Iterator[Proc]:
    binary = require_binary("prometheus")

    def argv(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]

    with _running("prometheus", workdir, argv, "/-/ready") as proc:
        yield proc


@contextlib.contextmanager
def running_alertmanager(config_file: Path, workdir: Path) -> Iterator[Proc]:
    binary = require_binary("prometheus-alertmanager", "alertmanager")

    def argv(port: int) -> list[str]:
        return [
            binary,
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            f"--web.external-url=http://{LOOPBACK}:{port}",
            "--cluster.listen-address=",  # no gossip: a single test instance
            "--log.level=warn",
        ]

    with _running("alertmanager", workdir, argv, "/-/ready") as proc:
        yield proc
