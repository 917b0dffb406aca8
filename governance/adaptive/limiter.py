"""The limiter that enforces: admits or sheds each call from the estimator, the queue policy and
the CPU signal. Pure logic with an injected clock; `tick(cpu, lag)` feeds it signals (the plugin's
sampler task does in production).

Decisions (see the estimator and queue modules for the signals):
- queueing: the call's sojourn exceeds the target (the service's own min_rt) while the queue rule
  is armed; arming needs load (hot CPU), so a GC pause or a noisy neighbour never sheds;
- concurrency: in-flight exceeds max_pass x min_rt while some overload signal is up (hot CPU, loop
  lag, latency gradient) or within the cool-off after the last drop, or exceeds it by
  `latency_tolerance` x (Little's law says that is a queue already).
Retry-After is the cool-off plus the measured queueing delay.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from governance.adaptive.estimator import BbrEstimator
from governance.adaptive.queue import BatchQueue


class AdaptiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: float = Field(10.0, gt=0, description="seconds of history for max_pass/min_rt")
    buckets: int = Field(100, ge=2)
    cpu_threshold: float = Field(0.8, gt=0, description="utilisation (0..1) that counts as hot")
    cooloff: float = Field(1.0, ge=0, description="seconds shedding stays armed after the last drop")
    latency_tolerance: float = Field(2.0, gt=1, description="short-window latency / min_rt that means queueing")
    lag_floor: float = Field(0.005, ge=0, description="queueing below this is timer/GC noise, never overload")
    queue_interval: float = Field(0.5, gt=0, description="sojourn must stay above target this long to start shedding")
    batch_gap: float = Field(0.0005, ge=0, description="an idle gap longer than this means a batch did not queue")
    tick: float = Field(0.05, gt=0, description="signal sampling period, seconds")
    cpu_tau: float = Field(0.3, gt=0, description="CPU EMA time constant, seconds")
    lag_tau: float = Field(0.1, gt=0, description="loop-lag EMA time constant, seconds")
    cpu_cores: float | None = Field(None, description="cores one process can use; default min(1, quota)")
    dry_run: bool = Field(False, description="decide and count, but never shed (rollout / benchmarks)")


class AdaptiveLimiter:
    """Not thread-safe by design: one instance lives on one event loop."""

    def __init__(self, settings: AdaptiveSettings | None = None, clock: Callable[[], float] = time.monotonic,
                 cpu_now: Callable[[], float] | None = None) -> None:
        """cpu_now: the process's CPU utilisation since the last tick, read on demand (the plugin
        wires CpuSignal.peek), for decisions taken while the loop is too busy to tick."""
        self.settings = s = settings or AdaptiveSettings()
        self._clock = clock
        self.cpu_now = cpu_now
        self.estimator = BbrEstimator(s.window, s.buckets, clock())
        self.queue = BatchQueue(s.batch_gap)
        self.inflight = 0
        self.cpu = 0.0  # EMA of the CPU signal
        self.cpu_sample = 0.0  # the latest raw sample, which leads the EMA by its time constant
        self.lag = 0.0
        self._last_tick: float | None = None
        self.conc_armed = False  # some overload signal says: cap concurrency
        self.last_drop = -math.inf
        self.drops = 0
        self.queue_target = s.lag_floor

    def now(self) -> float:
        return self._clock()

    def tick(self, cpu: float, lag: float) -> None:
        """Feed one sample of CPU utilisation and event-loop lag (seconds); re-evaluate arming."""
        s = self.settings
        now = self._clock()
        dt = s.tick if self._last_tick is None else max(1e-6, now - self._last_tick)
        self._last_tick = now
        self.cpu_sample = cpu
        self.cpu += (cpu - self.cpu) * (1.0 - math.exp(-dt / s.cpu_tau))
        self.lag += (lag - self.lag) * (1.0 - math.exp(-dt / s.lag_tau))
        self.estimator.advance(now)
        self.queue_target = max(self.estimator.min_rt, s.lag_floor)
        self.conc_armed = (self.lag > self.queue_target or self.estimator.latency_up(s.latency_tolerance)
                           or self.cpu >= s.cpu_threshold)
        if self.queue.armed and now - self.last_drop >= s.cooloff:
            self.queue.armed = False

    def on_mark(self, now: float) -> None:
        self.queue.on_mark(now)

    def sojourn(self, now: float) -> float:
        return self.queue.sojourn(now)

    def acquire(self) -> str | None:
        """None to admit (and count in-flight), else the reason for shedding."""
        now = self._clock()
        s = self.settings
        sojourn = self.queue.sojourn(now)
        # A call that has itself waited queue_interval is a standing queue already: it arms the
        # queue rule at once, on the latest CPU sample rather than the EMA (which lags a load step).
        standing = sojourn >= s.queue_interval and self._hot_now()
        pressure = sojourn > self.queue_target and (self.cpu >= s.cpu_threshold or self._hot_while_unsampled(now))
        if self.queue.should_shed(now, sojourn, self.queue_target, pressure, standing, s.queue_interval):
            return self._drop(now, "queueing")
        if self._over_concurrency(now):
            return self._drop(now, "concurrency")
        self.inflight += 1
        return None

    def _over_concurrency(self, now: float) -> bool:
        limit, s = self.estimator.max_inflight, self.settings
        return bool(limit and self.inflight > 1 and self.inflight > limit and (
            self.conc_armed or now - self.last_drop < s.cooloff or self.inflight > s.latency_tolerance * limit))

    def _drop(self, now: float, reason: str) -> str:
        self.last_drop = now
        self.drops += 1
        return reason

    def _hot_while_unsampled(self, now: float) -> bool:
        """The sampler is overdue (one batch has held the loop for more than two ticks, so the EMA
        cannot move) and the CPU used since its last sample is hot."""
        s, last = self.settings, self._last_tick
        return (self.cpu_now is not None and last is not None and now - last > 2 * s.tick
                and self.cpu_now() >= s.cpu_threshold)

    def _hot_now(self) -> bool:
        """The latest CPU sample is hot, or the CPU used since that sample is."""
        threshold = self.settings.cpu_threshold
        if self.cpu_sample >= threshold:
            return True
        return self.cpu_now is not None and self.cpu_now() >= threshold

    def release(self, duration: float, success: bool) -> None:
        self.inflight -= 1
        if success:
            self.estimator.record(self._clock(), duration)

    def retry_after(self) -> float:
        est = self.estimator
        queue_delay = max(self.lag, est.short_rt - est.min_rt, 0.0)
        return max(1.0, math.ceil(self.settings.cooloff + queue_delay))
