"""The pressure watchdog: a pure decision policy and the asyncio loop that feeds it samples."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import CaptureAlreadyRunning, ProfilingError
from .info import CaptureInfo
from .metrics import ProfilingMetrics
from .sampler import Sample, Sampler
from .settings import WatchdogSettings

log = logging.getLogger("profiling")

# The previous samples a jump needs before "recent average" means anything.
_MIN_HISTORY_FOR_JUMP = 3


@dataclass(frozen=True)
class Decision:
    trigger: str  # "cpu" or "memory"
    reason: str


class WatchdogPolicy:
    """Decides from samples alone; time is passed in, so tests drive it with fake samples."""

    def __init__(self, settings: WatchdogSettings) -> None:
        self.settings = settings
        size = max(settings.consecutive, settings.jump_window + 1)
        self._history: dict[str, deque[float]] = {"cpu": deque(maxlen=size), "memory": deque(maxlen=size)}
        self._last_trigger: float | None = None
        self.owned_capture_id: str | None = None

    def observe(self, sample: Sample, now: float, capture_running: bool) -> Decision | None:
        """Record the sample; return a Decision when a capture should start now."""
        readings = {"cpu": sample.cpu_ratio, "memory": sample.memory_ratio}
        thresholds = {"cpu": self.settings.cpu_threshold, "memory": self.settings.memory_threshold}
        found: Decision | None = None
        for kind, value in readings.items():
            history = self._history[kind]
            previous = list(history)[-self.settings.jump_window :]
            history.append(value)
            if found is None:
                found = self._check(kind, value, thresholds[kind], list(history), previous)
        if found is None or capture_running or self.in_cooldown(now):
            return None  # never start a second capture; stay quiet while cooling down
        return found

    def _check(
        self, kind: str, value: float, threshold: float, history: list[float], previous: list[float]
    ) -> Decision | None:
        n = self.settings.consecutive
        recent = history[-n:]
        if len(recent) == n and all(v >= threshold for v in recent):
            return Decision(kind, f"{n} samples in a row at or over {threshold:.0%} (last {value:.0%})")
        if len(previous) >= _MIN_HISTORY_FOR_JUMP and value >= self.settings.jump_min_ratio:
            average = sum(previous) / len(previous)
            if value >= self.settings.jump_factor * average:
                return Decision(kind, f"sudden jump to {value:.0%} from a recent average of {average:.0%}")
        return None

    def in_cooldown(self, now: float) -> bool:
        return self._last_trigger is not None and now - self._last_trigger < self.settings.cooldown_s

    def started(self, capture_id: str | None, now: float) -> None:
        """A trigger happened (even if the capture failed to start): begin the cooldown."""
        self._last_trigger = now
        self.owned_capture_id = capture_id

    def may_stop(self, capture: CaptureInfo | None) -> bool:
        """Only a capture this watchdog started may be stopped by it."""
        return capture is not None and capture.id == self.owned_capture_id


class CaptureController(Protocol):
    @property
    def current(self) -> CaptureInfo | None: ...

    async def start(
        self, trigger: str, duration_s: float | None = None, *, detail: str | None = None
    ) -> CaptureInfo: ...

    async def stop(self, reason: str = "requested") -> CaptureInfo: ...


class Watchdog:
    def __init__(
        self,
        settings: WatchdogSettings,
        controller: CaptureController,
        metrics: ProfilingMetrics,
        *,
        sampler: Callable[[], Sample] | None = None,
        include_children: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.policy = WatchdogPolicy(settings)
        self._controller = controller
        self._metrics = metrics
        self._sample = sampler
        self._include_children = include_children
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.last_sample: Sample | None = None

    async def start(self) -> None:
        if self._task is None:
            if self._sample is None:
                sampler = await asyncio.to_thread(
                    Sampler,
                    include_children=self._include_children,
                    memory_limit_bytes=self.settings.memory_limit_bytes,
                )
                self._sample = sampler.sample
            self._task = asyncio.create_task(self._run(), name="profiling-watchdog")

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad reading must not end the watchdog
                log.exception("profiling watchdog sample failed")
            await asyncio.sleep(self.settings.interval_s)

    async def run_once(self) -> Decision | None:
        assert self._sample is not None
        sample = await asyncio.to_thread(self._sample)  # psutil and /sys reads block
        self.last_sample = sample
        m = self._metrics
        m.cpu_ratio.set(sample.cpu_ratio)
        m.memory_ratio.set(sample.memory_ratio)
        m.host_cpu_ratio.set(sample.host_cpu_ratio)
        m.host_memory_ratio.set(sample.host_memory_ratio)
        now = self._clock()
        decision = self.policy.observe(sample, now, self._controller.current is not None)
        if decision is None:
            return None
        log.warning("profiling watchdog: %s pressure, %s: starting a capture", decision.trigger, decision.reason)
        try:
            info = await self._controller.start(
                decision.trigger, self.settings.capture_duration_s, detail=decision.reason
            )
        except CaptureAlreadyRunning:
            return None  # somebody else started one a moment ago: theirs covers it
        except ProfilingError:
            self.policy.started(None, now)  # already logged; cool down instead of retrying each sample
            return decision
        self.policy.started(info.id, now)
        return decision

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        current = self._controller.current
        if self.policy.may_stop(current):
            with contextlib.suppress(ProfilingError):
                await self._controller.stop("watchdog closed")
