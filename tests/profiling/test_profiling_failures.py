"""py-spy missing or not allowed to attach: one clear log line, a typed error with the fix, and the
process keeps serving."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from profiling import Profiler, ProfilingSettings, PySpyNotFound, PySpyPermissionDenied
from tests.profiling.profiling_helpers import process_alive, wait_for_capture
from tests.support.require import require_binary

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
# What py-spy 0.4 prints when ptrace is refused (copied from a real run as an unprivileged user).
PY_SPY_DENIED = (
    "Permission Denied: Try running again with elevated permissions by going "
    "'sudo env \"PATH=$PATH\" !!'"
)


def fake_py_spy(tmp_path: Path, message: str = PY_SPY_DENIED) -> Path:
    script = tmp_path / "py-spy"
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    script.chmod(0o755)
    return script


def profiler_with(tmp_path: Path, py_spy: str) -> tuple[Profiler, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = ProfilingSettings(
        service_name="svc", directory=tmp_path / "captures", py_spy_path=py_spy, watchdog={"enabled": False}
    )
    return Profiler(settings, registry=registry), registry


def error_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "profiling" and r.levelno >= logging.ERROR]


async def test_missing_py_spy_raises_with_install_hint_and_logs_one_line(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="profiling")
    profiler, registry = profiler_with(tmp_path, str(tmp_path / "no" / "py-spy"))
    with pytest.raises(PySpyNotFound) as err:
        await profiler.start_capture("api")
    assert "pip install py-spy" in str(err.value) and "profiling.py_spy_path" in str(err.value)
    assert len(error_lines(caplog)) == 1 and "pip install py-spy" in error_lines(caplog)[0]
    assert registry.get_sample_value("profiling_capture_failures_total", {"reason": "py_spy_missing"}) == 1
    assert registry.get_sample_value("profiling_capture_in_progress") == 0
    [failed] = profiler.list_captures()  # the attempt is visible in the index
    assert failed.status == "failed" and "pip install py-spy" in (failed.error or "")
    assert profiler.current_capture() is None


async def test_permission_denied_output_gives_the_ptrace_fix(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="profiling")
    profiler, registry = profiler_with(tmp_path, str(fake_py_spy(tmp_path)))
    with pytest.raises(PySpyPermissionDenied) as err:
        await profiler.start_capture("signal")
    text = str(err.value)
    assert "cap_add: [SYS_PTRACE]" in text and "ptrace_scope" in text and "root" in text
    assert len(error_lines(caplog)) == 1
    assert registry.get_sample_value("profiling_capture_failures_total", {"reason": "permission_denied"}) == 1
    # The profiler still works afterwards: another attempt fails the same clear way, nothing hangs.
    with pytest.raises(PySpyPermissionDenied):
        await profiler.start_capture("api")


def nobody_py_spy(tmp_path: Path, real: Path, runuser: str) -> tuple[Path, Path]:
    """A py-spy copy that `nobody` can reach (pytest's tmp_path is in a root-only directory), and a
    wrapper that runs it as nobody."""
    bindir = Path(tempfile.mkdtemp(prefix="profiling-nobody-", dir="/tmp" if os.path.isdir("/tmp") else None))
    bindir.chmod(0o755)
    copy = bindir / "py-spy-real"
    shutil.copy2(real, copy)
    copy.chmod(0o755)
    wrapper = tmp_path / "py-spy"
    wrapper.write_text(f'#!/bin/sh\nexec {runuser} -u nobody -- {copy} "$@"\n')
    wrapper.chmod(0o755)
    return bindir, wrapper


@contextlib.contextmanager
def not_dumpable() -> Iterator[None]:
    """This process non-dumpable for a while: the kernel then refuses ptrace to any tracer without
    CAP_SYS_PTRACE, even one of the same user (how an unprivileged run gets a real refusal)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


async def test_real_py_spy_refused_as_an_unprivileged_user(tmp_path, caplog):
    """The real py-spy is refused by the kernel: as root, py-spy runs as `nobody` against this
    root-owned process; as any other user, this process is made non-dumpable first."""
    real = Path(sys.executable).with_name("py-spy")
    if not real.exists():
        real = Path(shutil.which("py-spy") or "")
    assert real.is_file(), "py-spy is a dependency of the project and must be installed"
    caplog.set_level(logging.INFO, logger="profiling")
    if os.geteuid() == 0:
        runuser = require_binary("runuser")
        bindir, wrapper = nobody_py_spy(tmp_path, real, runuser)
        try:
            profiler, registry = profiler_with(tmp_path, str(wrapper))
            with pytest.raises(PySpyPermissionDenied) as err:
                await profiler.start_capture("api")
        finally:
            shutil.rmtree(bindir, ignore_errors=True)
    else:
        profiler, registry = profiler_with(tmp_path, str(real))
        with not_dumpable(), pytest.raises(PySpyPermissionDenied) as err:
            await profiler.start_capture("api")
    assert "cap_add: [SYS_PTRACE]" in str(err.value)
    assert "Permission Denied" in err.value.message  # py-spy's own words are kept
    assert len(error_lines(caplog)) == 1


def test_process_keeps_serving_when_py_spy_is_denied(profiled_app, tmp_path):
    script = fake_py_spy(tmp_path)
    app = profiled_app({"py_spy_path": str(script), "watchdog": {"enabled": False}})
    app.trap()
    failed = wait_for_capture(app.directory, lambda c: c.status == "failed", service=app.service, timeout=5)
    assert "SYS_PTRACE" in (failed.error or "")
    with app.client() as client:
        assert client.get("/healthz").status_code == 200
        response = client.post("/debug/profiles/start")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 503 and "cap_add: [SYS_PTRACE]" in body["detail"]
        assert body["type"] == "https://meterd.dev/problems/profiling-permission-denied" and body["title"]
        assert client.get("/debug/profiles/").status_code == 200
        assert client.get("/healthz").status_code == 200
    time.sleep(0.2)
    assert process_alive(app.pid)
    errors = [line for line in app.output if line.startswith("ERROR profiling")]
    assert len(errors) == 2, errors  # one line per attempt (TRAP, then POST), nothing more
    assert all("SYS_PTRACE" in line for line in errors)
