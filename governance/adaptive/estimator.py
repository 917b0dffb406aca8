"""Capacity estimate in the BBR style (Kratos/sponge), plus a short-window latency gradient.

Over a window of buckets keep the largest per-bucket completion count (max_pass) and the smallest
per-bucket mean latency (min_rt): their product is the concurrency the service has *shown* it can
sustain (Little's law). The last second's mean latency against min_rt is the gradient: a service
whose latency climbs with an idle CPU is queueing on something else (I/O-bound overload).
Only successes are fed in: a fast failure is not capacity.
"""

from __future__ import annotations

import math


class BbrEstimator:
    def __init__(self, window: float, buckets: int, now: float) -> None:
        self._n = buckets
        self._blen = window / buckets
        self._short = max(1, round(1.0 / self._blen))  # buckets in the 1 s "current latency" window
        self._pass = [0] * buckets
        self._rt = [0.0] * buckets
        self._idx = 0
        self._bstart = now
        self.max_pass = 0
        self.min_rt = 0.0
        self.max_inflight = 0
        self.short_rt = 0.0

    def advance(self, now: float) -> None:
        steps = int((now - self._bstart) / self._blen)
        if steps <= 0:
            return
        n = self._n
        for _ in range(min(steps, n)):
            self._idx = (self._idx + 1) % n
            self._pass[self._idx] = 0
            self._rt[self._idx] = 0.0
        self._bstart += steps * self._blen
        self._recompute()

    def record(self, now: float, duration: float) -> None:
        """One successful call of `duration` seconds ended at `now`."""
        if now - self._bstart >= self._blen:
            self.advance(now)
        self._pass[self._idx] += 1
        self._rt[self._idx] += duration

    def latency_up(self, tolerance: float) -> bool:
        """The gradient: the last second's latency exceeds `tolerance` x the best seen."""
        return self.min_rt > 0 and self.short_rt > tolerance * self.min_rt

    def _recompute(self) -> None:
        """max_pass / min_rt over completed buckets (the current one is still filling)."""
        max_pass, min_rt = 0, math.inf
        cur, n = self._idx, self._n
        short_cnt, short_sum = 0, 0.0
        for back in range(1, n):
            i = (cur - back) % n
            p = self._pass[i]
            if not p:
                continue
            max_pass = max(max_pass, p)
            min_rt = min(min_rt, self._rt[i] / p)
            if back <= self._short:
                short_cnt += p
                short_sum += self._rt[i]
        self.max_pass = max_pass
        self.min_rt = 0.0 if min_rt is math.inf else min_rt
        self.max_inflight = math.ceil(max_pass * self.min_rt / self._blen) if max_pass else 0
        self.short_rt = short_sum / short_cnt if short_cnt else 0.0
