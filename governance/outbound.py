"""Circuit breaker for outbound calls (Kafka produce, database): fail fast while a dependency is down.

A small breaker of our own: `fail_max` consecutive failures open it; while open every call raises
`DependencyUnavailable` at once; after `reset_timeout` one trial call goes through (half-open) and
its result closes or re-opens the breaker. An optional per-call timeout makes a hung dependency a
failed one. State is exported as a metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

from governance._prom import metric

T = TypeVar("T")

STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


class DependencyUnavailable(Exception):  # noqa: N818 - domain name, read as "dependency unavailable"
    """The named dependency is down (its breaker is open, or it just failed): answer UNAVAILABLE/503."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"dependency {name!r} unavailable, retry after {retry_after:.1f}s")
        self.name = name
        self.retry_after = retry_after


class OutboundSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_max: int = Field(5, ge=1, description="consecutive failures that open the breaker")
    reset_timeout: float = Field(30.0, gt=0, description="seconds open before a trial call is let through")
    timeout: float | None = Field(None, gt=0, description="per-call timeout; expiry counts as a failure")


class OutboundBreaker:
    """`async with breaker: ...` or `await breaker.call(fn, *args)`."""

    def __init__(self, name: str, settings: OutboundSettings | None = None, *,
                 registry: CollectorRegistry | None = None, exclude: Iterable[type[BaseException]] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.settings = settings or OutboundSettings()
        self.fail_counter = 0
        self._exclude = tuple(exclude)
        self._clock = clock
        self._opened_at: float | None = None  # None while closed
        self._trial = False  # a half-open trial call is running
        # Per-task timeout contexts: concurrent `async with` blocks on one breaker need their own timer.
        self._timers: dict[asyncio.Task[Any] | None, list[asyncio.Timeout]] = {}
        self._rejected: Any = None
        if registry is not None:
            metric(registry, Gauge, "governance_breaker_state",
                   "Outbound circuit breaker state: 0 closed, 1 open, 2 half-open.",
                   ("breaker",)).labels(name).set_function(lambda: STATE_VALUES[self.state])
            self._rejected = metric(registry, Counter, "governance_breaker_rejections",
                                    "Outbound calls refused fast because the breaker was open.",
                                    ("breaker",)).labels(name)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._open_remaining() > 0 else "half_open"

    def _open_remaining(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.settings.reset_timeout - self._clock())

    def _unavailable(self) -> DependencyUnavailable:
        return DependencyUnavailable(self.name, max(self._open_remaining(), 0.001))

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> OutboundBreaker:
        if self._opened_at is not None:
            if self._open_remaining() > 0 or self._trial:
                if self._rejected is not None:
                    self._rejected.inc()
                raise self._unavailable()
            self._trial = True  # half-open: this call is the trial
        if self.settings.timeout is not None:
            timer = asyncio.timeout(self.settings.timeout)
            self._timers.setdefault(asyncio.current_task(), []).append(timer)
            await timer.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.settings.timeout is not None:
            exc = await self._exit_timer(exc_type, exc, tb)
        trial, self._trial = self._trial, False
        if exc is None or isinstance(exc, self._exclude):
            self.fail_counter, self._opened_at = 0, None
            return None
        if not isinstance(exc, Exception):  # cancellation is not the dependency's fault
            return None
        self.fail_counter += 1
        if trial or self.fail_counter >= self.settings.fail_max:
            self._opened_at = self._clock()
            raise self._unavailable() from exc
        if isinstance(exc, TimeoutError) and exc_type is not TimeoutError:
            raise exc  # the timer cancelled the body: surface the timeout, not the cancellation
        return None

    async def _exit_timer(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                          tb: TracebackType | None) -> BaseException | None:
        """Leave this task's innermost timer; a timeout it caused becomes the call's exception."""
        task = asyncio.current_task()
        stack = self._timers[task]
        timer = stack.pop()
        if not stack:
            del self._timers[task]
        try:
            await timer.__aexit__(exc_type, exc, tb)
        except TimeoutError as timed_out:
            return timed_out
        return exc
