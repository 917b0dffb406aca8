"""Running py-spy as an asyncio child process: a one-shot dump and a long-running record."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path

from . import ptrace
from .errors import PySpyFailed, classify_py_spy_failure

# py-spy prints this once it has attached and the first sample is on its way.
_READY_MARKER = "Sampling process"
# py-spy installs its Control-C handler a moment *after* printing the marker; a SIGINT in between
# kills it with the default action and it writes nothing. How long we wait for the handler.
_HANDLER_WAIT_S = 2.0
_STDERR_LIMIT = 64 * 1024


_SH = "/bin/sh"


def _private_umask() -> None:
    os.umask(0o077)


def _with_private_umask(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """Make the files py-spy writes private from the first byte.

    Not `umask=` (uvloop's subprocess_exec rejects it) and preferably not a preexec_fn either: that
    forces a plain fork that runs Python and every library's fork handlers (gRPC's among them) in
    the child. A shell sets the umask and execs py-spy, so the child's pid stays py-spy's. Images
    without /bin/sh (distroless) fall back to preexec_fn.
    """
    if os.path.exists(_SH):
        return [_SH, "-c", 'umask 077 && exec "$0" "$@"', *argv], None
    return argv, _private_umask


async def _spawn(argv: list[str], *, merge_output: bool = False) -> asyncio.subprocess.Process:
    # Yama scope 1: allow any tracer until the child's pid is known, then only that pid.
    ptrace.before_spawn()
    command, preexec = _with_private_umask(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            # `record` prints its progress on stdout and its errors on stderr: read them as one.
            stderr=asyncio.subprocess.STDOUT if merge_output else asyncio.subprocess.PIPE,
            # Its own session: a Ctrl-C or SIGTERM sent to our process group must not kill py-spy
            # before it wrote its output; we stop it ourselves.
            start_new_session=True,
            preexec_fn=preexec,
        )
    except BaseException:
        ptrace.released(None)
        raise
    ptrace.spawned(proc.pid)
    return proc


async def dump(executable: str, pid: int, *, timeout: float = 5.0) -> str:
    """Every thread's stack once; raises a PySpyUnavailable subclass when py-spy cannot attach.

    No --subprocesses here: the dumping py-spy is itself our child, is not Python, and makes
    `dump --subprocesses` fail. The caller dumps Python children one by one instead.
    """
    # --nonblocking: never stop the service's threads. A blocking dump ptrace-stops every thread
    # of the process, including the event loop that is waiting for the dump to finish.
    argv = [executable, "dump", "--pid", str(pid), "--nonblocking"]
    proc = await _spawn(argv)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise PySpyFailed(f"py-spy dump did not answer within {timeout:.0f}s") from None
    finally:
        ptrace.released(proc.pid)
    if proc.returncode != 0:
        raise classify_py_spy_failure(pid, err.decode(errors="replace") or out.decode(errors="replace"))
    return out.decode(errors="replace")


class Recording:
    """A running `py-spy record`; `stop()` makes it write its output and exit.

    `output` holds the tail of everything py-spy printed (stdout and stderr merged).
    """

    def __init__(self, proc: asyncio.subprocess.Process, output_file: Path, target_pid: int) -> None:
        self.proc = proc
        self.output_file = output_file
        self._target = target_pid
        self._output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self._output)[-_STDERR_LIMIT:]

    async def wait_ready(self, timeout: float) -> None:
        """Return once py-spy says it is sampling; raise the typed error if it exits instead."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                # Some py-spy versions may word it differently; a live process is a started one.
                break
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except TimeoutError:
                break
            if not line:  # EOF: py-spy exited before it started sampling
                await self.proc.wait()
                raise classify_py_spy_failure(self._target, self.output)
            self._output.append(line.decode(errors="replace"))
            if _READY_MARKER in self._output[-1]:
                break
        if self.proc.returncode is not None:
            raise classify_py_spy_failure(self._target, self.output)
        self._drain = asyncio.create_task(self._drain_output(), name="py-spy-output")
        await _until_catches_sigint(self.proc, _HANDLER_WAIT_S)

    async def _drain_output(self) -> None:
        # Keep reading so py-spy never blocks on a full pipe; keep only the tail.
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self._output.append(line.decode(errors="replace"))
            if len(self._output) > 500:
                del self._output[:250]

    async def wait(self) -> int:
        rc = await self.proc.wait()
        ptrace.released(self.proc.pid)
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
        return rc

    def interrupt(self) -> None:
        # SIGINT is py-spy's "Control-C": it stops sampling and writes the output file.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)

    async def stop(self, timeout: float = 15.0) -> int:
        self.interrupt()
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return await self.wait()


def catches_sigint(pid: int) -> bool | None:
    """Whether the process has a SIGINT handler installed (Linux /proc); None when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError, IndexError):
        return None
    return None


async def _until_catches_sigint(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """Wait (briefly) until py-spy would survive a SIGINT, so stopping right after start still
    yields its output file. Gives up silently where /proc cannot tell or py-spy has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.returncode is None and loop.time() < deadline:
        if catches_sigint(proc.pid) is not False:
            return
        await asyncio.sleep(0.005)


async def record(
    executable: str,
    pid: int,
    output: Path,
    *,
    rate_hz: int,
    duration_s: float,
    subprocesses: bool,
    ready_timeout: float = 3.0,
) -> Recording:
    argv = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate_hz),
        "--format",
        "raw",
        "--nonblocking",  # never pause the service to sample it
        "--output",
        str(output),
        # A backstop: if our event loop is stuck the timer that stops py-spy cannot run, so py-spy
        # stops on its own a little later and still writes the stacks of the stuck process.
        "--duration",
        str(math.ceil(duration_s) + 2),
    ]
    if subprocesses:
        argv.append("--subprocesses")
    proc = await _spawn(argv, merge_output=True)
    recording = Recording(proc, output, pid)
    try:
        await recording.wait_ready(ready_timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        ptrace.released(proc.pid)
        raise
    return recording
