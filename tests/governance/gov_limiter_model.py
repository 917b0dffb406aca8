"""A discrete-event model for the adaptive limiter's deterministic tests: an injected clock, a
batching service (group commit: every call waiting when a commit starts joins it, so throughput
grows with concurrency) and closed-loop or open-loop clients. Nothing here sleeps."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from governance.adaptive import AdaptiveLimiter, Listener, RouteGuard
from governance.core import SUCCESS, Call, Outcome
from tests.governance.gov_helpers import FakeClock


@dataclass
class Stats:
    admitted: int = 0
    completed: int = 0
    shed_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


class Model:
    """`fixed` + `per_call` x batch seconds per commit, at most `max_batch` calls per commit."""

    def __init__(self, limiter: AdaptiveLimiter, clock: FakeClock, *, fixed: float = 0.005,
                 per_call: float = 0.004, max_batch: int = 64) -> None:
        self.limiter, self.clock = limiter, clock
        self.fixed, self.per_call, self.max_batch = fixed, per_call, max_batch
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._waiting: list[tuple[Listener, float, Stats, Callable[[], None] | None]] = []
        self._busy = False
        self.guards: dict[str, RouteGuard] = {}
        self.at(clock.now, self._tick)

    @property
    def capacity(self) -> float:
        """Calls per second at full batches."""
        return self.max_batch / (self.fixed + self.per_call * self.max_batch)

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def run(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.clock.now = max(self.clock.now, when)
            action()
        self.clock.now = until

    def _tick(self) -> None:
        self.limiter.tick()
        self.at(self.clock.now + 0.05, self._tick)

    def submit(self, stats: Stats, *, priority: str = "write", objective: float = 5.0, route: str = "/w",
               then: Callable[[], None] | None = None, on_shed: Callable[[float], None] | None = None) -> None:
        """One call; `then` runs when it completes, `on_shed(retry_after)` when it is shed."""
        guard = self.guards.setdefault(route, RouteGuard(route, 10_000, 1 << 40))
        result = self.limiter.acquire(guard, priority, objective)  # type: ignore[arg-type]
        self.limiter.on_mark(self.clock.now)  # each call is a loop batch of its own: no queue ahead
        if isinstance(result, str):
            stats.shed_times.append(self.clock.now)
            if on_shed is not None:
                on_shed(self.limiter.retry_after())
            return
        stats.admitted += 1
        self._waiting.append((result, self.clock.now, stats, then))
        if not self._busy:
            self._commit()

    def _commit(self) -> None:
        batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
        if not batch:
            self._busy = False
            return
        self._busy = True
        self.at(self.clock.now + self.fixed + self.per_call * len(batch), lambda: self._done(batch))

    def _done(self, batch: list[tuple[Listener, float, Stats, Callable[[], None] | None]]) -> None:
        now = self.clock.now
        for listener, started, stats, then in batch:
            listener.release(Outcome(SUCCESS, "OK", now - started, Call("grpc", "/w", "unary", None, started)))
            stats.completed += 1
            stats.latencies.append(now - started)
            if then is not None:
                then()
        self._commit()

    def closed_loop(self, clients: int, stats: Stats, **kw: object) -> None:
        """`clients` writers, each sending its next call when the last one ends (or after retry-after)."""
        def send() -> None:
            self.submit(stats, then=send, on_shed=lambda retry: self.at(self.clock.now + retry, send), **kw)  # type: ignore[arg-type]
        for _ in range(clients):
            send()

    def open_loop(self, rate: float, start: float, stop: float, stats: Stats, **kw: object) -> None:
        """Arrivals every 1/rate seconds from `start` to `stop`, whatever happens to them."""
        n = int((stop - start) * rate)
        for i in range(n):
            self.at(start + i / rate, lambda: self.submit(stats, **kw))  # type: ignore[arg-type]
