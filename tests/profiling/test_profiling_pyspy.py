"""Spawning py-spy: files it creates are private from the first byte, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest

from profiling import pyspy


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
        uvloop = pytest.importorskip("uvloop")
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

    if not os.path.exists("/bin/sh"):
        pytest.skip("no /bin/sh")
    pid, reported = asyncio.run(run())
    assert str(pid) == reported  # exec, not a child of the shell: PR_SET_PTRACER names py-spy itself
