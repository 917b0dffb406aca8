"""The limiter that enforces, and the listener that reports (Netflix's Limiter / Listener).

`acquire(guard, priority, objective, nbytes)` answers a `Listener` (admitted: the listener is the
call's token and reports its end to the limit) or the reason for shedding:

- `inflight_cap` / `bytes_cap`: the route's static guard rails (any priority, any load);
- `priority`: the limit is armed and this call's whole priority is being shed (Google SRE's
  criticality: exports first, then reads, then writes; see `_set_level`);
- `concurrency`: the limit is armed, this priority is the one being held to it, and in-flight
  calls of this priority and more important ones are at its share of the limit;
- `queueing`: the limit is armed and this call already waited ahead of the middleware longer than
  the priority's share of `queue_target` (CoDel's idea: while overloaded, late work is shed first).

`critical` calls skip the adaptive part (never shed by load) and are not samples of the workload.
Pure logic with an injected clock; `tick()` closes sampling windows (the plugin's sampler calls it;
`acquire` also does when it is due, so a loop too busy to run the sampler still decides on fresh data).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from governance.adaptive.limit import LimitSettings, QueueLimit
from governance.adaptive.policy import (
    AT_LEAST,
    DEFAULT_OBJECTIVE,
    PRIORITIES,
    SHARE,
    SHED_ORDER,
    Priority,
    RouteGuard,
)
from governance.adaptive.queue import BatchQueue
from governance.core import SUCCESS, Outcome


class AdaptiveSettings(BaseModel):
    """The adaptive plugin's settings. Route fields (priority .. max_inflight_bytes, dry_run) may differ
    per route variant; the rest configure the one limiter all variants share (the first one wins)."""

    model_config = ConfigDict(extra="forbid")
    priority: Priority = Field("read", description="critical | write | read | export (shed first)")
    objective: float | None = Field(None, gt=0, description="admitted latency objective, s; None: by priority")
    max_inflight: int = Field(1024, ge=1, description="static cap on this route's in-flight calls")
    max_inflight_bytes: int = Field(256 << 20, ge=1, description="static cap on its in-flight request bytes")
    dry_run: bool = Field(False, description="decide and count, but never shed (rollout / benchmarks)")
    window: float = Field(0.1, gt=0, description="sampling window, seconds")
    growth_interval: float = Field(0.8, gt=0, description="a queue must grow this long to count as standing")
    growth_min: int = Field(8, ge=1, description="calls a growing queue must gain over growth_interval")
    growth_fraction: float = Field(0.25, gt=0, description="growth relative to completions (0.25: 1.25x load)")
    growth_floor: float = Field(0.1, gt=0, le=1, description="latency / objective below which growth is fine")
    cooloff: float = Field(1.0, ge=0, description="seconds without a shed or signal before disarming")
    min_limit: int = Field(2, ge=1, description="the armed limit never goes below this")
    queue_target: float = Field(0.05, gt=0, description="while armed, shed calls that waited longer, s")
    batch_gap: float = Field(0.0005, ge=0, description="an idle gap longer than this means a batch did not queue")
    tick: float = Field(0.05, gt=0, description="sampler period, seconds")
    cpu_tau: float = Field(0.3, gt=0, description="CPU gauge EMA time constant, seconds")
    lag_tau: float = Field(0.1, gt=0, description="loop-lag gauge EMA time constant, seconds")
    cpu_cores: float | None = Field(None, description="cores one process can use; default min(1, quota)")

    def route_objective(self) -> float:
        return self.objective if self.objective is not None else DEFAULT_OBJECTIVE[self.priority]

    def limit_settings(self) -> LimitSettings:
        return LimitSettings(self.window, self.growth_interval, self.growth_min, self.growth_fraction,
                             self.growth_floor, self.cooloff, self.min_limit)


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A read-only snapshot for gauges and dashboards: nothing outside the limiter writes its state."""

    limit: float  # 0 while unarmed (no limit)
    inflight: int
    armed: bool
    reason: str
    latency_ratio: float
    queue_delay: float
    cpu: float
    loop_lag: float
    sheds: int


class Listener:
    """The token of one admitted call: gives back its slot and reports its latency to the limit."""

    __slots__ = ("limiter", "guard", "priority", "nbytes", "sojourn", "objective", "sampled", "dry_run_reason",
                 "admitted", "ended")

    def __init__(self, limiter: AdaptiveLimiter, guard: RouteGuard, priority: Priority, nbytes: int,
                 sojourn: float, objective: float, sampled: bool) -> None:
        self.limiter, self.guard, self.priority, self.nbytes = limiter, guard, priority, nbytes
        self.sojourn, self.objective, self.sampled = sojourn, objective, sampled
        self.dry_run_reason: str | None = None  # what a dry-run limiter admitted instead of shedding
        self.admitted = 0.0
        self.ended = False

    def release(self, outcome: Outcome) -> None:
        self.ended = True
        self.guard.leave(self.nbytes)
        if not self.sampled:
            return
        lim = self.limiter
        lim.inflight -= 1
        lim.by_priority[self.priority] -= 1
        # Only successes time the service: a fast failure or a refusal further on is not capacity.
        ok = outcome.kind is SUCCESS
        lim.limit.on_completion((self.sojourn + outcome.duration) / self.objective if ok else None)


class AdaptiveLimiter:
    """Not thread-safe by design: one instance lives on one event loop."""

    def __init__(self, settings: AdaptiveSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = s = settings or AdaptiveSettings()
        self._clock = clock
        self.limit = QueueLimit(s.limit_settings(), clock())
        self.queue = BatchQueue(s.batch_gap)
        self.inflight = 0  # sheddable calls admitted and still running
        self.by_priority: dict[str, int] = dict.fromkeys(PRIORITIES, 0)
        self._asked: dict[str, float] = dict.fromkeys(PRIORITIES, -math.inf)  # last call, by priority
        self.level = 0  # how many priorities of SHED_ORDER are being shed (see _set_level)
        self._level_at = -math.inf
        self.sheds = 0
        self._admitted: deque[Listener] = deque()
        self.cpu = 0.0  # gauges only: the decisions never look at CPU
        self.lag = 0.0
        self._last_tick: float | None = None

    def now(self) -> float:
        return self._clock()

    def tick(self, cpu: float = 0.0, lag: float = 0.0) -> None:
        """Close due sampling windows; update the CPU and loop-lag gauges."""
        s, now = self.settings, self._clock()
        dt = s.tick if self._last_tick is None else max(1e-6, now - self._last_tick)
        self._last_tick = now
        self.cpu += (cpu - self.cpu) * (1.0 - math.exp(-dt / s.cpu_tau))
        self.lag += (lag - self.lag) * (1.0 - math.exp(-dt / s.lag_tau))
        self._roll(now)

    def _roll(self, now: float) -> None:
        if not self.limit.due(now):
            return
        admitted = self._admitted  # oldest first; ended calls are dropped from the front lazily
        while admitted and admitted[0].ended:
            admitted.popleft()
        oldest = admitted[0] if admitted else None
        age = (now - oldest.admitted + oldest.sojourn) / oldest.objective if oldest is not None else 0.0
        self.limit.roll(now, self.inflight, age)
        self._set_level(now)

    def on_mark(self, now: float) -> None:
        self.queue.on_mark(now)

    def acquire(self, guard: RouteGuard, priority: Priority, objective: float, nbytes: int = 0,
                dry_run: bool = False) -> Listener | str:
        """A listener (admitted), or the reason this call is shed. `dry_run`: decide, count, admit."""
        now = self._clock()
        sojourn = self.queue.sojourn(now)
        reason = guard.refuse(nbytes)
        sampled = priority != "critical"
        if reason is None and sampled:
            self._asked[priority] = now
            self._roll(now)
            reason = self._shed_reason(self.limit, priority, sojourn)
        if reason is not None:
            self.sheds += 1
            self.limit.on_shed(now)
            if not dry_run:
                return reason
        guard.enter(nbytes)
        if sampled:
            self.inflight += 1
            self.by_priority[priority] += 1
            self.limit.on_arrival(now, sojourn, objective)
        listener = Listener(self, guard, priority, nbytes, sojourn, objective, sampled)
        listener.dry_run_reason = reason
        if sampled:
            listener.admitted = now
            self._admitted.append(listener)
        return listener

    def _shed_reason(self, limit: QueueLimit, priority: Priority, sojourn: float) -> str | None:
        if not limit.armed:
            return None
        rank = SHED_ORDER.index(priority) + 1
        if rank > self.level:
            return None  # not this priority's turn: less important ones are shed first
        if rank < self.level:
            return "priority"  # its whole class is shed: the overload survived shedding it partly
        share = SHARE[priority]
        if sojourn > self.settings.queue_target * share:
            return "queueing"
        if sum(self.by_priority[p] for p in AT_LEAST[priority]) >= max(1.0, limit.limit * share):
            return "concurrency"
        return None

    def _set_level(self, now: float) -> None:
        """Escalate through SHED_ORDER while the limit is pressing, one step per growth_interval,
        skipping priorities nobody asked for; step back once admitted latency is calm again."""
        lim, s = self.limit, self.settings
        if not lim.armed:
            self.level = 0
            return
        settled = now - self._level_at >= s.growth_interval
        if self.level == 0 or (lim.pressing and settled and self.level < len(SHED_ORDER)):
            self.level, self._level_at = self.level + 1, now
        elif lim.calm and settled and self.level > 1:
            self.level, self._level_at = self.level - 1, now
        while self.level < len(SHED_ORDER) and now - self._asked[SHED_ORDER[self.level - 1]] > s.cooloff:
            self.level += 1  # nothing of that priority to shed

    def retry_after(self) -> float:
        """Whole seconds: the cool-off plus the queueing delay callers are seeing now."""
        return float(max(1, math.ceil(self.settings.cooloff + self.limit.delay)))

    def snapshot(self) -> LimiterStats:
        lim = self.limit
        return LimiterStats(limit=lim.limit if lim.armed else 0.0, inflight=self.inflight, armed=lim.armed,
                            reason=lim.reason, latency_ratio=lim.ratio, queue_delay=lim.delay, cpu=self.cpu,
                            loop_lag=self.lag, sheds=self.sheds)
