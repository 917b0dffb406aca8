"""Fixtures for the profiling suite: a real profiled process started on demand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

APP = Path(__file__).with_name("profiled_app.py")
TOKEN = "profiling-test-token"


@dataclass
class ProfiledApp:
    proc: subprocess.Popen[str]
    port: int
    pid: int
    tmpdir: Path
    service: str
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def directory(self) -> Path:
        return self.tmpdir / f"{self.service}_profile"

    def client(self, authorized: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def trap(self) -> None:
        os.kill(self.pid, signal.SIGTRAP)

    def log_text(self) -> str:
        return "".join(self.output)


def _start(
    tmp_path: Path,
    settings: dict[str, Any],
    busy: bool,
    hold_mib: int,
    open_access: bool = False,
    loop: str = "asyncio",
) -> ProfiledApp:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    settings = {"service_name": "profapp", **settings}
    env = dict(os.environ)
    env["TMPDIR"] = str(tmpdir)  # captures must follow TMPDIR when no directory is configured
    env["PROFILED_APP_CONFIG"] = json.dumps(
        {"settings": settings, "busy": busy, "hold_mib": hold_mib, "token": TOKEN, "open": open_access, "loop": loop}
    )
    proc = subprocess.Popen(
        [sys.executable, "-u", str(APP)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    output: list[str] = []
    ready: list[str] = []
    event = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("READY "):
                ready.append(line)
                event.set()
        event.set()

    threading.Thread(target=pump, daemon=True).start()
    if not event.wait(30) or not ready:
        proc.kill()
        raise AssertionError("profiled app did not start:\n" + "".join(output))
    _, port, pid = ready[0].split()
    return ProfiledApp(proc, int(port), int(pid), tmpdir, settings["service_name"], output)


@pytest.fixture
def profiled_app(tmp_path: Path) -> Iterator[Any]:
    """Factory: profiled_app(settings, busy=, hold_mib=, open_access=, loop=) -> ProfiledApp, stopped at teardown."""
    apps: list[ProfiledApp] = []

    def factory(
        settings: dict[str, Any] | None = None,
        *,
        busy: bool = False,
        hold_mib: int = 0,
        open_access: bool = False,
        loop: str = "asyncio",
    ) -> ProfiledApp:
        app = _start(tmp_path, settings or {}, busy, hold_mib, open_access, loop)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        if app.proc.poll() is None:
            app.proc.send_signal(signal.SIGTERM)
            try:
                app.proc.wait(15)
            except subprocess.TimeoutExpired:
                app.proc.kill()
                app.proc.wait()
