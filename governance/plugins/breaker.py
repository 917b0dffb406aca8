"""Inbound circuit breaking by Google SRE adaptive throttling, per route.

Reject with probability max(0, (requests - K*accepts) / (requests + 1)) over a sliding window.
`requests` counts every attempt, including the ones this breaker refused; `accepts` counts calls
that ended in success. Both successes and failures are recorded (recording only failures, as
sponge's gRPC interceptor does, latches the breaker open). Calls a later plugin rejected are not
evidence about the handler and are not counted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field

from governance._prom import metric
from governance.core import FAILURE, SUCCESS, Call, Outcome, Rejection, Token
from governance.plugins import PluginContext


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: float = Field(2.0, ge=1.0, description="accepts multiplier; lower sheds earlier")
    window: float = Field(5.0, gt=0, description="seconds of history")
    buckets: int = Field(10, ge=1)
    min_requests: int = Field(20, ge=0, description="no throttling below this many requests in the window")


class RouteWindow:
    """requests/accepts in a ring of buckets, with running totals so a decision is O(1)."""

    __slots__ = ("req", "acc", "total_req", "total_acc", "idx", "bstart", "blen", "n")

    def __init__(self, buckets: int, window: float, now: float) -> None:
        self.n, self.blen = buckets, window / buckets
        self.req, self.acc = [0] * buckets, [0] * buckets
        self.total_req = self.total_acc = 0
        self.idx, self.bstart = 0, now

    def advance(self, now: float) -> None:
        if now - self.bstart < self.blen:  # the common case: still in the current bucket
            return
        steps = int((now - self.bstart) / self.blen)
        if steps <= 0:
            return
        for _ in range(min(steps, self.n)):
            self.idx = (self.idx + 1) % self.n
            self.total_req -= self.req[self.idx]
            self.total_acc -= self.acc[self.idx]
            self.req[self.idx] = self.acc[self.idx] = 0
        self.bstart += steps * self.blen

    def record(self, accepted: bool) -> None:
        self.req[self.idx] += 1
        self.total_req += 1
        if accepted:
            self.acc[self.idx] += 1
            self.total_acc += 1


class SreBreaker:
    """The SRE adaptive-throttling decision per route, with injectable clock and RNG (tests make it
    deterministic). This is what the plugin runs: `allow` on admission, `record` on release."""

    def __init__(self, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        self.settings = settings or BreakerSettings()
        self._clock, self._rng = clock, rng
        self.windows: dict[str, RouteWindow] = {}

    def _window(self, route: str) -> RouteWindow:
        w = self.windows.get(route)
        if w is None:
            s = self.settings
            w = self.windows[route] = RouteWindow(s.buckets, s.window, self._clock())
        return w

    def drop_probability(self, route: str) -> float:
        w = self._window(route)
        w.advance(self._clock())
        if w.total_req < self.settings.min_requests:
            return 0.0
        return max(0.0, (w.total_req - self.settings.k * w.total_acc) / (w.total_req + 1))

    def allow(self, route: str) -> tuple[bool, float]:
        """(admitted, drop probability). A refused attempt still counts as a request."""
        p = self.drop_probability(route)
        if p > 0.0 and self._rng() < p:
            self.windows[route].record(False)
            return False, p
        return True, p

    def record(self, route: str, success: bool) -> None:
        w = self._window(route)
        w.advance(self._clock())
        w.record(success)


class _RouteToken:
    """Ends every admitted call to one route: successes and failures are evidence, the rest not."""

    __slots__ = ("sre", "route")

    def __init__(self, sre: SreBreaker, route: str) -> None:
        self.sre, self.route = sre, route

    def release(self, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind is SUCCESS or kind is FAILURE:
            self.sre.record(self.route, kind is SUCCESS)


class BreakerPlugin:
    name = "breaker"

    def __init__(self, ctx: PluginContext, settings: BreakerSettings | None = None,
                 breaker: SreBreaker | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self.breaker = breaker or SreBreaker(self.settings)
        self._ratio = metric(ctx.registry, Gauge, "governance_breaker_drop_ratio",
                             "Probability the inbound SRE breaker rejects a call, per route.", ("route",))
        self._routes: dict[str, tuple[_RouteToken, Any]] = {}  # route -> (token, drop-ratio gauge)
        self._published: dict[str, float] = {}  # route -> drop ratio last set (the gauge takes a lock)
        self._refusal = Rejection("breaker", "failure_ratio", "unavailable", max(1.0, self.settings.window / 2))

    def admit(self, call: Call) -> Token | Rejection:
        found = self._routes.get(call.route)
        if found is None:
            found = self._routes[call.route] = (_RouteToken(self.breaker, call.route),
                                                self._ratio.labels(call.route))
        token, gauge = found
        admitted, p = self.breaker.allow(call.route)
        if self._published.get(call.route) != p:
            self._published[call.route] = p
            gauge.set(p)
        return token if admitted else self._refusal


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> BreakerPlugin:
    return BreakerPlugin(ctx, BreakerSettings(**settings))
