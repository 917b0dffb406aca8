"""Helpers for tests that drive a real profiled process (this suite's test app, or `meterd up`).

They only read the capture directory through the library's CaptureStore, so an end-to-end test of
any service that embeds `profiling` can reuse them: send SIGTRAP with `os.kill`, then
`wait_for_capture(...)`, then `assert_capture_files(...)`.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from profiling import CaptureInfo, CaptureStore

EXPECTED_KINDS = ("folded", "flamegraph", "threads", "alloc", "meta")


def profile_directory(tmpdir: Path, service: str = "meterd") -> Path:
    """Where a process started with TMPDIR=tmpdir and no profiling.directory writes captures."""
    return Path(tmpdir) / f"{service}_profile"


def list_captures(directory: Path, service: str = "meterd") -> list[CaptureInfo]:
    return CaptureStore(Path(directory), service).list()


def wait_for_capture(
    directory: Path,
    predicate: Callable[[CaptureInfo], bool],
    *,
    service: str = "meterd",
    timeout: float = 10.0,
    interval: float = 0.02,
) -> CaptureInfo:
    """The newest capture matching predicate, polling until timeout (then AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        for info in list_captures(directory, service):
            if predicate(info):
                return info
        if time.monotonic() > deadline:
            seen = [(c.id, c.trigger, c.status) for c in list_captures(directory, service)]
            raise AssertionError(f"no matching capture in {directory} after {timeout}s; seen {seen}")
        time.sleep(interval)


def assert_capture_files(directory: Path, info: CaptureInfo, function_name: str | None = None) -> None:
    """Every kind of file exists, is non-empty and private; the stacks name function_name."""
    directory = Path(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700, oct(directory.stat().st_mode)
    for kind in EXPECTED_KINDS:
        assert kind in info.files, f"{kind} missing from {info.files}"
        path = directory / info.files[kind]
        assert path.stat().st_size > 0, f"{path} is empty"
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is readable by others: {oct(mode)}"
        assert path.name.startswith(info.id), path.name
    if function_name is not None:
        folded = (directory / info.files["folded"]).read_text()
        assert function_name in folded, f"{function_name} not in folded stacks:\n{folded[:2000]}"
        svg = (directory / info.files["flamegraph"]).read_text()
        assert function_name in svg


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """A sample's value from Prometheus text exposition, e.g. metric_value(t, "x_total", 'trigger="cpu"')."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
