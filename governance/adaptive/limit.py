"""The `Limit`: estimates whether admitting more work makes things worse, and how much to admit.

A closed loop of N clients cannot overload a server: each answer releases one new request, so the
queue never grows past N however hot the CPU. So the estimate never looks at CPU or at a
Little's-law capacity (max_pass x min_rt under-counts a batching service, whose throughput grows
with concurrency); it looks at two things the caller cares about, per sampling window:

- growth: a standing queue that keeps growing. More calls arrive than complete in both halves
  of `growth_interval` (and by at least `growth_fraction` of the completions), or the queueing
  delay ahead of the middleware rises in every window by `growth_fraction` s/s; a burst (N clients
  starting at once) grows in one window and then stops, an open loop above capacity never stops.
  Growth counts only once admitted latency reaches `growth_floor` of the objective;
- latency: admitted latency (queueing + handler) over the route's objective, as a mean ratio.

Either one arms the limit. While armed, the limit is Little's law for the target latency
(completion rate x growth_floor x objective; at arming at most 0.9 x in-flight) while admitted
latency is above that target (never falling faster than halving per window), and grows by
sqrt(limit) (headroom, as Gradient2's queue size and Envoy's) while below it. It disarms after `cooloff` with no
shed and no signal; unarmed it is unbounded (reported as 0).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSettings:
    window: float = 0.1
    growth_interval: float = 0.5
    growth_min: int = 8
    growth_fraction: float = 0.25
    growth_floor: float = 0.25
    cooloff: float = 1.0
    min_limit: int = 2


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
        self.armed = False
        self.limit = math.inf
        self.reason = ""  # what armed it: "growth" or "latency"
        self.ratio = 0.0  # the last window's admitted latency / objective
        self.delay = 0.0  # the last window's mean sojourn, seconds
        self._last_shed = -math.inf
        self._last_signal = -math.inf

    # -- what the listener reports -------------------------------------------------------------
    def on_arrival(self, now: float, sojourn: float, objective: float) -> None:
        if now >= self._window_end:
            self.roll(now, 0)
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
    def roll(self, now: float, inflight: int) -> None:
        """Close every window that has ended by `now` and re-estimate."""
        while now >= self._window_end:
            done, self._cur = self._cur, WindowSample()
            self._window_end += self.s.window
            self._history.append(done)
            self._estimate(self._window_end, done, inflight)
            if now - self._window_end > self.s.growth_interval:  # idle for long: skip empty windows
                self._history.clear()
                self._window_end = now + self.s.window

    def _estimate(self, now: float, done: WindowSample, inflight: int) -> None:
        if done.timed:
            self.ratio = done.ratio_sum / done.timed
        elif inflight == 0:
            self.ratio = 0.0
        delay = done.delay()
        if delay is not None:
            self.delay = delay
        queue_ratio = done.delay_ratio_sum / done.arrivals if done.arrivals else 0.0
        latency = max(self.ratio, queue_ratio)
        signal = self._signal(latency, inflight)
        if signal:
            self._last_signal = now
        if not self.armed:
            if signal:
                self.armed, self.reason = True, signal
                self.limit = max(self.s.min_limit, math.floor(min(inflight * 0.9, self._target_concurrency())))
            return
        if signal:
            self.reason = signal
        floor = self.s.growth_floor
        if latency > floor:  # armed: head for Little's law at growth_floor x objective, halving at most
            target = max(self.limit * 0.5, min(self.limit, self._target_concurrency()))
            self.limit = max(self.s.min_limit, math.floor(target))
        elif now - max(self._last_shed, self._last_signal) >= self.s.cooloff:
            self.armed, self.reason, self.limit = False, "", math.inf
        else:
            self.limit += max(1, math.floor(math.sqrt(self.limit)))

    def _signal(self, latency_ratio: float, inflight: int) -> str:
        if latency_ratio > 1.0:
            return "latency"
        if self._growing() and max(latency_ratio, self._backlog_ratio(inflight)) >= self.s.growth_floor:
            return "growth"
        return ""

    def _target_concurrency(self) -> float:
        """Little's law at the armed target: completion rate x growth_floor x objective."""
        windows = self._history
        arrived = sum(w.arrivals for w in windows)
        if not arrived:
            return math.inf
        rate = sum(w.completions for w in windows) / (self.s.window * len(windows))
        return rate * self.s.growth_floor * sum(w.objective_sum for w in windows) / arrived

    def _backlog_ratio(self, inflight: int) -> float:
        """Little's law for a call arriving now: in-flight / completion rate, over the objective.
        Completions lag a growing queue; this does not (used for the growth floor only: a stall
        with no completions would make it infinite)."""
        windows = self._history
        done = sum(w.completions for w in windows)
        arrived = sum(w.arrivals for w in windows)
        if not arrived:
            return 0.0
        objective = sum(w.objective_sum for w in windows) / arrived
        if not done:
            return math.inf if inflight else 0.0
        return inflight * self.s.window * len(windows) / done / objective

    def _growing(self) -> bool:
        windows, s = self._history, self.s
        if len(windows) < (windows.maxlen or 0):
            return False
        # Arrivals outrun completions in both halves of the interval (a burst grows in one only),
        # by a margin: a batching service completes in bursts, so single windows say little.
        half = len(windows) // 2
        first, second = list(windows)[:half], list(windows)[half:]
        nets = (sum(w.net for w in first), sum(w.net for w in second))
        arrivals_outrun = min(nets) > 0 and sum(nets) >= max(
            s.growth_min, s.growth_fraction * sum(w.completions for w in windows))
        if arrivals_outrun:
            return True
        delays = [d for d in (w.delay() for w in windows) if d is not None]
        if len(delays) < len(windows):
            return False
        rising = all(b > a for a, b in zip(delays, delays[1:], strict=False))
        span = s.window * (len(delays) - 1)
        return rising and delays[-1] - delays[0] >= s.growth_fraction * span
