"""Self-profiling for asyncio services: py-spy captures toggled by SIGTRAP, an API or a pressure
watchdog, with an index people can open. Independent of any particular application.

    profiler = Profiler(ProfilingSettings(service_name="meterd"))
    await profiler.start()                      # SIGTRAP toggle + watchdog on the running loop
    app.mount("/debug/profiles", Mount(..., routes=profiler.starlette_routes(is_admin)))
    ...
    await profiler.aclose()
"""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from .capture import CaptureManager
from .errors import (
    CaptureAlreadyRunning,
    CaptureWriteFailed,
    NoCaptureRunning,
    ProfilingDisabled,
    ProfilingError,
    PySpyFailed,
    PySpyNotFound,
    PySpyPermissionDenied,
    PySpyUnavailable,
    UnsafeDirectory,
)
from .info import CaptureInfo
from .metrics import ProfilingMetrics
from .settings import ProfilingSettings, PyroscopeSettings, WatchdogSettings
from .store import CaptureStore
from .trap import SignalToggle
from .watchdog import Watchdog
from .web import Authorize

__all__ = [
    "CaptureAlreadyRunning",
    "CaptureInfo",
    "CaptureStore",
    "CaptureWriteFailed",
    "NoCaptureRunning",
    "Profiler",
    "ProfilingDisabled",
    "ProfilingError",
    "ProfilingSettings",
    "PyroscopeSettings",
    "PySpyFailed",
    "PySpyNotFound",
    "PySpyPermissionDenied",
    "PySpyUnavailable",
    "UnsafeDirectory",
    "WatchdogSettings",
]

log = logging.getLogger("profiling")


class Profiler:
    def __init__(self, settings: ProfilingSettings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.metrics = ProfilingMetrics(registry)
        self._captures = CaptureManager(settings, self.metrics)
        self._toggle: SignalToggle | None = None
        self._watchdog: Watchdog | None = None

    @property
    def directory(self) -> Path:
        return self.settings.resolve_directory()

    @property
    def watchdog(self) -> Watchdog | None:
        return self._watchdog

    async def start(self) -> None:
        """Install the SIGTRAP toggle on the running loop and start the watchdog (as configured)."""
        if not self.settings.enabled:
            log.info("profiling disabled")
            return
        if self.settings.signal_toggle and self._toggle is None:
            toggle = SignalToggle(self._captures.toggle)
            if toggle.install():
                self._toggle = toggle
        if self.settings.watchdog.enabled and self._watchdog is None:
            self._watchdog = Watchdog(
                self.settings.watchdog,
                self._captures,
                self.metrics,
                include_children=self.settings.include_subprocesses,
            )
            await self._watchdog.start()

    async def start_capture(
        self, trigger: str = "api", duration_s: float | None = None, *, tracemalloc: bool | None = None
    ) -> CaptureInfo:
        """Start a capture; raises a ProfilingError subclass whose str() says how to fix it.

        tracemalloc: trace allocation sites during this capture; None follows
        settings.tracemalloc_triggers (by default only memory-pressure captures).
        """
        return await self._captures.start(trigger, duration_s, tracemalloc=tracemalloc)

    async def stop_capture(self) -> CaptureInfo:
        """Stop the running capture and return it once every file is written."""
        return await self._captures.stop()

    async def toggle_capture(self, trigger: str = "signal") -> CaptureInfo:
        return await self._captures.toggle(trigger)

    def current_capture(self) -> CaptureInfo | None:
        return self._captures.current

    def list_captures(self) -> list[CaptureInfo]:
        """Captures in the directory, newest first (also those of earlier runs)."""
        return self._captures.store().list()

    def resolve_file(self, name: str) -> Path | None:
        return self._captures.store().resolve_file(name)

    def starlette_routes(self, authorize: Authorize) -> list[BaseRoute]:
        from .web import routes

        return routes(self, authorize)

    async def aclose(self) -> None:
        """Remove the signal handler, stop the watchdog and any running capture."""
        if self._toggle is not None:
            self._toggle.remove()
            self._toggle = None
        if self._watchdog is not None:
            await self._watchdog.aclose()
            self._watchdog = None
        await self._captures.aclose()
