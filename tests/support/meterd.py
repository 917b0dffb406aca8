"""Run real meterd processes (``meterd up`` or single roles) for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.servers import free_port  # noqa: F401 (re-exported: tests import it from here)

MeterdBin = str(Path(sys.executable).with_name("meterd"))
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class MeterdProc:
    args: list[str]
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    http: str | None = None
    grpc: str | None = None
    admin: str | None = None
    kafka: str | None = None
    admin_token: str = ADMIN_TOKEN

    def start(self, timeout: float = 60.0) -> MeterdProc:
        self.lines = []
        # Its own session: a test can SIGKILL the whole process tree (os.killpg) as a crash would.
        self.proc = subprocess.Popen([MeterdBin, *self.args], cwd=self.cwd, env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1,
                                     start_new_session=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                self._parse(line)
                if " ready; " in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("meterd did not start:\n" + "".join(self.lines[-40:]))
        return self

    def _parse(self, line: str) -> None:
        for name, pattern in (("http", r"HTTP API\s+(\S+)"), ("grpc", r"gRPC writer\s+(\S+)"),
                              ("admin", r"admin\s+(http\S+)"), ("kafka", r"Kafka\s+(\S+)")):
            m = re.search(pattern, line)
            if m:
                setattr(self, name, m.group(1))
        m = re.search(r"admin token \(development mode[^)]*\): (\S+)", line)
        if m:
            self.admin_token = m.group(1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful drain."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def kill_group(self) -> None:
        """SIGKILL of meterd's whole process group (meterd and every child): a crash, no drain."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def client(self, token: str | None = None) -> httpx.Client:
        assert self.http is not None
        headers = {"authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.http, headers=headers, timeout=10)


def meterd_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
    env.update({"METERD_ADMIN_TOKEN": ADMIN_TOKEN, "METERD_DATA_DIR": str(tmp / "data"),
                "METERD_HTTP__PORT": str(free_port()), "METERD_GRPC__PORT": str(free_port()),
                "METERD_ADMIN__PORT": str(free_port()), "TMPDIR": str(tmp),
                # One process, as these tests were written for (its /metrics, its SIGTRAP); the
                # multi-process default is run by test_durability, test_supervisor and the quickstart.
                "METERD_WORKERS": "1",
                # Test receivers listen on loopback, which production mode refuses to post to.
                "METERD_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS": "true"})
    env.update(extra)
    return env


@contextlib.contextmanager
def running_meterd(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[MeterdProc]:
    proc = MeterdProc(list(args or ("up",)), env or meterd_env(tmp), tmp).start()
    try:
        yield proc
    finally:
        try:
            proc.stop(timeout=20)  # the graceful path, so its drain runs in every test too
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message} (last value {last!r})")
