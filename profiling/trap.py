"""SIGTRAP toggle: the first signal starts a capture, the next one stops it.

The handler is installed with loop.add_signal_handler, so it runs as an ordinary callback on the
event loop (never inside a raw signal handler) and only schedules the toggle as a task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

from .errors import ProfilingError
from .info import CaptureInfo

log = logging.getLogger("profiling")


class SignalToggle:
    def __init__(
        self,
        toggle: Callable[[str], Awaitable[CaptureInfo]],
        signum: int = signal.SIGTRAP,
    ) -> None:
        self._toggle = toggle
        self.signum = signum
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self) -> bool:
        """Install on the running loop; False (with a log line) where signals cannot be handled."""
        loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            log.warning("profiling: not on the main thread, SIGTRAP toggle not installed")
            return False
        try:
            loop.add_signal_handler(self.signum, self._on_signal)
        except (NotImplementedError, RuntimeError, ValueError) as exc:
            log.warning("profiling: cannot handle %s here (%s)", signal.Signals(self.signum).name, exc)
            return False
        self._loop = loop
        log.info("profiling: send %s to pid %d to start or stop a capture", signal.Signals(self.signum).name,
                 os.getpid())
        return True

    def _on_signal(self) -> None:
        task = asyncio.ensure_future(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        try:
            info = await self._toggle("signal")
        except ProfilingError:
            return  # the capture manager already logged one clear line with the fix
        except Exception:
            log.exception("profiling: SIGTRAP toggle failed")
            return
        log.info("profiling: SIGTRAP -> capture %s is %s", info.id, info.status)

    def remove(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_signal_handler(self.signum)
        self._loop = None
