"""Spawning py-spy: files it creates are private from the first byte, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from profiling import pyspy
from tests.support.require import require_binary


async def _create(path: Path) -> None:
    proc = await pyspy._spawn([shutil.which("touch") or "/usr/bin/touch", str(path)])
    assert await proc.wait() == 0


@pytest.mark.parametrize("shell", [True, False], ids=["sh-wrapper", "preexec-fallback"])
def test_spawned_files_are_private_on_both_loops(tmp_path, monkeypatch, shell):
    if not shell:
        monkeypatch.setattr(pyspy, "_SH", str(tmp_path / "no-sh"))  # as in an image without /bin/sh
    old = os.umask(0o022)  # a typical service umask: files would be 0644
    try:
        asyncio.run(_create(tmp_path / "asyncio.txt"))
        import uvloop  # a dependency of meterd (pyproject.toml): missing is a failure, not a skip

        uvloop.run(_create(tmp_path / "uvloop.txt"))
    finally:
        os.umask(old)
    for name in ("asyncio.txt", "uvloop.txt"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name}: {oct(mode)}"


def test_umask_wrapper_keeps_the_child_pid(tmp_path):
    async def run() -> tuple[int, str]:
        proc = await pyspy._spawn(["/bin/sh", "-c", "echo $$"])
        out, _ = await proc.communicate()
        return proc.pid, out.decode().strip()

    require_binary("/bin/sh")  # skips locally without it, fails under CI=true
    pid, reported = asyncio.run(run())
    assert str(pid) == reported  # exec, not a child of the shell: PR_SET_PTRACER names py-spy itself


def test_catches_sigint_reads_the_handler_mask():
    """/proc's SigCgt tells a process that would die of SIGINT from one that handles it."""
    plain = subprocess.Popen(["sleep", "30"])
    python = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(30)"], stdout=subprocess.PIPE
    )
    try:
        assert python.stdout is not None and python.stdout.readline()  # its SIGINT handler is in
        assert pyspy.catches_sigint(plain.pid) is False
        assert pyspy.catches_sigint(python.pid) is True
        assert pyspy.catches_sigint(2**22 + 12345) is None  # no such process: unknown, not False
    finally:
        for proc in (plain, python):
            proc.kill()
            proc.wait()


def test_a_recording_stopped_at_once_still_writes_its_file(tmp_path):
    """py-spy prints its ready line before it installs its Control-C handler; a stop in between
    used to kill it and lose the capture (seen in CI). record() returns only once the handler is in."""
    from profiling.settings import ProfilingSettings

    executable = ProfilingSettings().resolve_py_spy()
    assert executable, "py-spy is a dependency of the project"
    target = subprocess.Popen([sys.executable, "-c", "while True: sum(range(1000))"])

    async def once(n: int) -> tuple[int, bool | None, Path]:
        output = tmp_path / f"stacks-{n}.txt"
        recording = await pyspy.record(executable, target.pid, output, rate_hz=100, duration_s=30, subprocesses=False)
        handled = pyspy.catches_sigint(recording.pid)
        return await recording.stop(), handled, output

    try:
        for n in range(3):
            rc, handled, output = asyncio.run(once(n))
            assert handled is True
            assert rc == 0 and output.exists(), f"round {n}: py-spy exited {rc} without its file"
    finally:
        target.kill()
        target.wait()


LATE_HANDLER_PY_SPY = """\
import signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)  # like a fresh Rust binary: SIGINT kills
out = sys.argv[sys.argv.index("--output") + 1]
print("Sampling process 100 times a second. Press Control-C to exit.", flush=True)
time.sleep(0.5)  # py-spy sets its progress bar up here, before its Control-C handler

def stop(*_):
    open(out, "w").write("main (app.py:1) 1\\n")
    print("Wrote raw flamegraph data. Samples: 1 Errors: 0", flush=True)
    sys.exit(0)

signal.signal(signal.SIGINT, stop)
time.sleep(30)
"""


def test_record_returns_only_once_py_spy_handles_control_c(tmp_path):
    """A stand-in py-spy that prints its ready line 0.5 s before installing its SIGINT handler, as
    the real one does for a moment: a stop right after record() returns must still get its file."""
    fake = tmp_path / "py-spy"
    fake.write_text(f"#!{sys.executable}\n{LATE_HANDLER_PY_SPY}")
    fake.chmod(0o700)
    output = tmp_path / "stacks.txt"

    async def run() -> int:
        recording = await pyspy.record(str(fake), os.getpid(), output, rate_hz=100, duration_s=5, subprocesses=False)
        return await recording.stop()

    assert asyncio.run(run()) == 0
    assert output.read_text() == "main (app.py:1) 1\n"
