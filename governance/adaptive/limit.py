"""The `Limit`: estimates whether admitting more work makes things worse, and how much to admit.

A closed loop of N clients cannot overload a server: each answer releases one new request, so the
queue never grows past N however hot the CPU. So the estimate never looks at CPU or at a
Little's-law capacity (max_pass x min_rt under-counts a batching service, whose throughput grows
with concurrency); it looks at two things the caller cares about, per sampling window:

- growth: a standing queue that keeps growing. More calls arrive than complete in each half of
  `growth_interval` (by at least `growth_fraction` of the completions), the second half completes
  no more than `growth_fraction` more than the first (admitting more bought nothing: a ramp of new
  clients, or a batching service taking on more, completes more as it admits more), and in-flight
  passes every level of the last `memory` seconds (a closed loop's ebb and flow stays within the
  levels it has shown); or the queueing delay ahead of the middleware rises in every window, by
  `growth_fraction` s/s, past its own levels. Growth counts after `warmup` seconds with traffic and
  once admitted latency (or the age of the oldest call in flight) reaches `growth_floor` of the
  objective;
- latency: admitted latency (queueing + handler) over the route's objective, as a mean ratio.

Either one arms the limit at the in-flight count of that moment (admit no more than now: the
growth stops). While armed it is multiplied by the gradient growth_floor / latency ratio (clamped
to 0.5..0.9) per window while admitted latency is above `growth_floor` of the objective and the
queue is not draining (in flight did not fall over growth_interval: completions' latency lags a queue that is
already shrinking, and cutting on it would collapse the limit), and
grows by sqrt(limit) (headroom, as Gradient2's queue size and
Envoy's) while below it, so a mistaken arming costs a few refusals, not a collapse. It disarms
after `cooloff` with no shed and no signal; unarmed it is unbounded (reported as 0).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSettings:
    window: float = 0.1
    growth_interval: float = 0.8
    growth_min: int = 8
    growth_fraction: float = 0.25
    growth_floor: float = 0.1
    cooloff: float = 1.0
    min_limit: int = 2
    memory: float = 10.0
    warmup: float = 3.0


@dataclass(slots=True)
class WindowSample:
    arrivals: int = 0
    completions: int = 0
    ratio_sum: float = 0.0  # admitted latency / objective, summed over timed completions
    timed: int = 0
    delay_sum: float = 0.0  # queueing ahead of the middleware (sojourn), summed over arrivals
    delay_ratio_sum: float = 0.0
    objective_sum: float = 0.0  # of arrivals: what a call arriving now is promised, on average

    @property
    def net(self) -> int:
        return self.arrivals - self.completions

    def delay(self) -> float | None:
        return self.delay_sum / self.arrivals if self.arrivals else None


class QueueLimit:
    """Not thread-safe: one instance lives on one event loop (the limiter calls it)."""

    def __init__(self, settings: LimitSettings, now: float) -> None:
        self.s = settings
        self._window_end = now + settings.window
        self._cur = WindowSample()
        self._history: deque[WindowSample] = deque(maxlen=max(2, round(settings.growth_interval / settings.window)))
        # (in-flight, mean sojourn) at the end of each window of the last `memory` seconds.
        self._levels: deque[tuple[int, float]] = deque(maxlen=max(2, round(settings.memory / settings.window)))
        self.armed = False
        self.limit = math.inf
        self.reason = ""  # what armed it: "growth" or "latency"
        self.ratio = 0.0  # the last window's admitted latency / objective
        self.delay = 0.0  # the last window's mean sojourn, seconds
        self._last_shed = -math.inf
        self._last_signal = -math.inf
        self.pressing = False  # armed, slow, and the queue is not draining: shed more
        self.calm = True  # admitted latency is at or below growth_floor

    # -- what the listener reports -------------------------------------------------------------
    def on_arrival(self, now: float, sojourn: float, objective: float) -> None:
        cur = self._cur
        cur.arrivals += 1
        cur.delay_sum += sojourn
        cur.delay_ratio_sum += sojourn / objective
        cur.objective_sum += objective

    def on_completion(self, ratio: float | None) -> None:
        cur = self._cur
        cur.completions += 1
        if ratio is not None:
            cur.ratio_sum += ratio
            cur.timed += 1

    def on_shed(self, now: float) -> None:
        self._last_shed = now

    # -- the estimate ----------------------------------------------------------------------------
    def due(self, now: float) -> bool:
        return now >= self._window_end

    def roll(self, now: float, inflight: int, oldest: float = 0.0) -> None:
        """Close every window that has ended by `now` and re-estimate. `oldest`: the age of the
        oldest call still in flight over its objective (a growing queue shows there first)."""
        while now >= self._window_end:
            done, self._cur = self._cur, WindowSample()
            self._window_end += self.s.window
            self._history.append(done)
            self._estimate(self._window_end, done, inflight, oldest)
            if done.arrivals or inflight:  # levels (and the warm-up) count windows with traffic only
                self._levels.append((inflight, self.delay))
            if now - self._window_end > self.s.growth_interval:  # idle for long: skip empty windows
                self._history.clear()
                self._window_end = now + self.s.window

    def _estimate(self, now: float, done: WindowSample, inflight: int, oldest: float) -> None:
        if done.timed:
            self.ratio = done.ratio_sum / done.timed
        elif inflight == 0:
            self.ratio = 0.0
        delay = done.delay()
        if delay is not None:
            self.delay = delay
        queue_ratio = done.delay_ratio_sum / done.arrivals if done.arrivals else 0.0
        latency = max(self.ratio, queue_ratio)
        signal = self._signal(latency, oldest, inflight)
        if signal:
            self._last_signal = now
        levels, span = self._levels, len(self._history)
        draining = len(levels) >= span and inflight < levels[-span][0]
        self.pressing = self.armed and latency > self.s.growth_floor and not draining
        self.calm = latency <= self.s.growth_floor
        if not self.armed:
            if signal:
                self.armed, self.reason = True, signal
                self.limit = max(self.s.min_limit, inflight)  # admit no more than now: stop the growth
            return
        if signal:
            self.reason = signal
        floor = self.s.growth_floor
        if latency > floor:
            if not draining:  # still slow and the queue is not draining: back off by floor / latency
                gradient = min(0.9, max(0.5, floor / latency))
                self.limit = max(self.s.min_limit, math.floor(self.limit * gradient))
            # draining (fewer in flight than growth_interval ago): hold; the latency of completions lags a
            # queue that is already shrinking, and cutting on it would collapse the limit
        elif now - max(self._last_shed, self._last_signal) >= self.s.cooloff:
            self.armed, self.reason, self.limit = False, "", math.inf
        else:
            self.limit += max(1, math.floor(math.sqrt(self.limit)))

    def _signal(self, latency_ratio: float, oldest: float, inflight: int) -> str:
        if latency_ratio > 1.0:
            return "latency"
        if max(latency_ratio, oldest) >= self.s.growth_floor and self._growing(inflight):
            return "growth"
        return ""

    def _growing(self, inflight: int) -> bool:
        windows, s = self._history, self.s
        if len(windows) < (windows.maxlen or 0):
            return False
        # A queue that grows past anything of the last `memory` seconds: a closed loop's ebb and
        # flow (and its start-up ramp, once `warmup` has passed) stays within levels it has shown.
        before = list(self._levels)[:-len(windows)]
        if len(before) < s.warmup / s.window:
            return False
        peak_inflight = max(level for level, _ in before)
        peak_delay = max(delay for _, delay in before)
        # Arrivals outrun completions in each half of the interval, by a margin (a burst or the
        # ebb and flow of a batching service's in-flight grows in one half, an overload in both),
        # and the extra calls bought no throughput (Vegas/BBR's test: a ramp of new clients, or a
        # batching service taking on more, completes more as it admits more).
        half = len(windows) // 2
        parts = (list(windows)[:half], list(windows)[half:])
        done = [sum(w.completions for w in part) for part in parts]
        outrun = all(sum(w.net for w in part) >= max(s.growth_min / 2, s.growth_fraction * d)
                     for part, d in zip(parts, done, strict=True))
        arrivals_outrun = outrun and inflight > peak_inflight and done[1] <= (1 + s.growth_fraction) * done[0]
        if arrivals_outrun:
            return True
        delays = [d for d in (w.delay() for w in windows) if d is not None]
        if len(delays) < len(windows):
            return False
        rising = all(b > a for a, b in zip(delays, delays[1:], strict=False))
        span = s.window * (len(delays) - 1)
        return rising and delays[-1] > peak_delay and delays[-1] - delays[0] >= s.growth_fraction * span
