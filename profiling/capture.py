"""One capture at a time: start py-spy + tracemalloc, stop them, write every file, report.

Three things can end a capture: a stop request, the duration timer, or py-spy exiting on its own
(its --duration backstop, or a crash). They all converge on one idempotent finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field

from . import pyspy
from .allocations import AllocationTracker, MemorySummary, start_allocations
from .capture_files import log_failure, log_finished, py_spy_summary, render_files, thread_dump, upload
from .errors import (
    CaptureAlreadyRunning,
    CaptureWriteFailed,
    NoCaptureRunning,
    ProfilingDisabled,
    ProfilingError,
    PySpyFailed,
    PySpyNotFound,
    PySpyPermissionDenied,
    classify_py_spy_failure,
)
from .info import CaptureInfo, utcnow
from .metrics import ProfilingMetrics
from .settings import ProfilingSettings
from .store import CaptureStore
from .threads import python_thread_dump

log = logging.getLogger("profiling")


@dataclass(eq=False)
class _Active:
    info: CaptureInfo
    store: CaptureStore
    recording: pyspy.Recording
    allocations: AllocationTracker | MemorySummary | None
    timer: asyncio.TimerHandle | None = None
    watcher: asyncio.Task[None] | None = None
    finish: asyncio.Task[CaptureInfo] | None = None
    dump: asyncio.Task[None] | None = None
    freeze: asyncio.TimerHandle | None = None
    extra_files: dict[str, str] = field(default_factory=dict)


class CaptureManager:
    def __init__(self, settings: ProfilingSettings, metrics: ProfilingMetrics, *, pid: int | None = None):
        self.settings = settings
        self.metrics = metrics
        self.pid = os.getpid() if pid is None else pid
        self._lock = asyncio.Lock()
        self._active: _Active | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- queries -------------------------------------------------------------------------------

    def store(self) -> CaptureStore:
        return CaptureStore(self.settings.resolve_directory(), self.settings.file_service_name)

    @property
    def current(self) -> CaptureInfo | None:
        """The running capture, if any (also while it is being finished)."""
        return self._active.info if self._active else None

    # -- commands ------------------------------------------------------------------------------

    async def start(
        self,
        trigger: str,
        duration_s: float | None = None,
        *,
        tracemalloc: bool | None = None,
        detail: str | None = None,
    ) -> CaptureInfo:
        """tracemalloc: trace allocation sites (None: when the trigger is in tracemalloc_triggers);
        detail: why, kept in the meta file (the watchdog puts its reading there)."""
        async with self._lock:
            return await self._start_locked(trigger, duration_s, tracemalloc, detail)

    async def stop(self, reason: str = "requested") -> CaptureInfo:
        async with self._lock:
            active = self._active
            if active is None:
                raise NoCaptureRunning("no profiling capture is running", "start one first")
            task = self._begin_finish(active, reason)
        return await asyncio.shield(task)

    async def toggle(self, trigger: str) -> CaptureInfo:
        """Start a capture, or stop the running one (whoever started it): the SIGTRAP semantics."""
        async with self._lock:
            active = self._active
            if active is None or active.finish is not None:
                return await self._start_locked(trigger, None)
            task = self._begin_finish(active, "requested")
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        active = self._active
        if active is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._begin_finish(active, "shutdown"))
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.pyroscope.timeout_s + 1)

    # -- start ---------------------------------------------------------------------------------

    async def _start_locked(self, trigger: str, duration_s: float | None, tracemalloc: bool | None = None,
                            detail: str | None = None) -> CaptureInfo:
        if not self.settings.enabled:
            raise ProfilingDisabled("profiling is disabled", "set profiling.enabled to true")
        if self._active is not None and self._active.finish is not None:
            # A capture that is still writing its files: let it finish, then start the new one.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._active.finish)
        if self._active is not None:
            running = self._active.info
            raise CaptureAlreadyRunning(
                f"capture {running.id} (trigger {running.trigger}) is already running",
                "stop it first (send SIGTRAP again or POST stop), or wait until it ends",
            )
        duration = float(duration_s or self.settings.duration_s)
        started = utcnow()
        store = self.store()
        info: CaptureInfo | None = None
        try:
            store.prepare()
            capture_id = store.new_capture_id(started, self.pid)
            info = CaptureInfo(id=capture_id, service=self.settings.file_service_name, pid=self.pid, trigger=trigger,
                               status="running", started_at=started, requested_duration_s=duration,
                               rate_hz=self.settings.rate_hz, trigger_detail=detail)
            active = await self._launch(store, info, duration, tracemalloc)
        except ProfilingError as err:
            self.metrics.failures.labels(err.reason).inc()
            # One line that says what failed and how to fix it; the caller decides what else to do.
            log.error("profiling capture (trigger %s) could not start: %s", trigger, err)
            if info is not None:
                with contextlib.suppress(OSError):
                    store.write_meta(info.replace(status="failed", stopped_at=utcnow(), error=str(err)))
            raise
        self._active = active
        self.metrics.captures.labels(trigger).inc()
        self.metrics.in_progress.set(1)
        loop = asyncio.get_running_loop()
        active.timer = loop.call_later(duration, self._begin_finish, active, "duration")
        active.watcher = asyncio.create_task(self._watch(active), name=f"profiling-watch-{info.id}")
        log.info(
            "profiling capture %s started (trigger %s, %.0f s at %d Hz) in %s",
            info.id, trigger, duration, self.settings.rate_hz, store.directory,
            extra={"capture_id": info.id, "capture_trigger": trigger},
        )
        return active.info

    async def _launch(
        self, store: CaptureStore, info: CaptureInfo, duration: float, trace_allocations: bool | None
    ) -> _Active:
        settings = self.settings
        executable = settings.resolve_py_spy()
        if executable is None:
            searched = settings.py_spy_path or "beside the Python executable and on PATH"
            raise PySpyNotFound(searched)
        subprocesses = settings.include_subprocesses
        # Sampling first: "running within a second of the signal" must hold on a loaded machine,
        # so everything else (the thread dump, reading child processes) comes after.
        try:
            recording = await pyspy.record(
                executable,
                self.pid,
                store.path(info.id, "folded"),
                rate_hz=settings.rate_hz,
                duration_s=duration,
                subprocesses=subprocesses,
            )
        except OSError as exc:
            raise PySpyFailed(f"cannot run {executable}: {exc}") from exc
        except PySpyFailed as exc:
            # With --subprocesses py-spy words a refused attach as "No python processes found";
            # a plain dump of our own pid says what really happened.
            try:
                await pyspy.dump(executable, self.pid)
            except PySpyPermissionDenied as denied:
                raise denied from exc
            except (ProfilingError, OSError):
                pass
            raise
        allocations, freeze_after = start_allocations(settings, info.trigger, trace_allocations, duration)
        try:
            store.write_meta(info)
        except OSError as exc:  # disk full, directory removed under us: do not leave py-spy behind
            await recording.stop()
            if isinstance(allocations, AllocationTracker):
                allocations.stop(1)
            raise CaptureWriteFailed(
                f"cannot write capture files in {store.directory}: {exc}",
                "free disk space or set profiling.directory to a writable path",
            ) from exc
        active = _Active(info=info, store=store, recording=recording, allocations=allocations)
        active.dump = asyncio.create_task(self._write_thread_dump(active, executable, subprocesses))
        if freeze_after is not None and freeze_after < duration:
            active.freeze = asyncio.get_running_loop().call_later(
                freeze_after, lambda: asyncio.ensure_future(self._freeze(active))
            )
        return active

    async def _freeze(self, active: _Active) -> None:
        # Bounded tracing window: tracemalloc slows every allocation, so it does not run for the
        # whole capture. The snapshot is taken off the loop.
        if isinstance(active.allocations, AllocationTracker) and active.finish is None:
            await asyncio.to_thread(active.allocations.freeze)

    async def _write_thread_dump(self, active: _Active, executable: str, subprocesses: bool) -> None:
        try:
            text = await thread_dump(executable, self.pid, subprocesses)
        except ProfilingError as exc:  # attach worked a moment ago; still leave a dump behind
            text = python_thread_dump(f"py-spy dump failed: {exc}")
        await asyncio.to_thread(active.store.write_text, active.info.id, "threads", text)

    # -- finish --------------------------------------------------------------------------------

    async def _watch(self, active: _Active) -> None:
        await active.recording.wait()
        self._begin_finish(active, "py-spy exited")

    def _begin_finish(self, active: _Active, reason: str) -> asyncio.Task[CaptureInfo]:
        if active.finish is None:
            active.finish = asyncio.create_task(self._finish(active, reason), name=f"profiling-finish-{reason}")
            active.finish.add_done_callback(log_failure)
        return active.finish

    async def _finish(self, active: _Active, reason: str) -> CaptureInfo:
        try:
            return await self._finish_files(active, reason)
        finally:
            for handle in (active.timer, active.freeze):
                if handle is not None:
                    handle.cancel()
            if self._active is active:
                self._active = None
            self.metrics.in_progress.set(0)

    async def _finish_files(self, active: _Active, reason: str) -> CaptureInfo:
        settings, store, info = self.settings, active.store, active.info
        rc = await active.recording.stop()
        if active.dump is not None:
            with contextlib.suppress(Exception):
                await active.dump
        stopped = utcnow()
        status, error = "completed", None
        folded_path = store.path(info.id, "folded")
        title = f"{info.service} pid {info.pid}: {info.trigger} capture, {info.started_at:%Y-%m-%d %H:%M:%S} UTC"
        subtitle = f"{settings.rate_hz} Hz, {(stopped - info.started_at).total_seconds():.1f} s,"
        # Reading the stacks and laying out the SVG can take a while for a long capture: off the loop.
        folded, samples = await asyncio.to_thread(render_files, store, info.id, folded_path, title, subtitle)
        if folded is None:
            status = "failed"
            failure = classify_py_spy_failure(info.pid, active.recording.output)
            error = f"py-spy exited with status {rc} and wrote no stacks: {failure}"
            self.metrics.failures.labels(failure.reason).inc()
        if active.allocations is not None:
            report = await asyncio.to_thread(active.allocations.stop, settings.tracemalloc_top)
            store.write_text(info.id, "alloc", report)
        final = info.replace(
            status=status,
            stopped_at=stopped,
            stop_reason=reason,
            error=error,
            samples=samples,
            py_spy_summary=py_spy_summary(active.recording.output),
            allocation_sites=isinstance(active.allocations, AllocationTracker),
        )
        written = store.read(final.id)
        files = dict(written.files) if written else {}
        files["meta"] = store.path(final.id, "meta").name
        final = final.replace(files=files)
        store.write_meta(final)
        log_finished(final, store, reason)
        store.enforce_retention(settings.retention_max_files, settings.retention_max_bytes, keep={final.id})
        if settings.pyroscope.url and folded:
            self._spawn_upload(final, folded)
        return final

    def _spawn_upload(self, info: CaptureInfo, folded: bytes) -> None:
        upload_task = upload(self.settings, self.metrics, info, folded)
        task = asyncio.create_task(upload_task, name=f"profiling-upload-{info.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
