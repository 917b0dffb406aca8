"""Circuit breaker for outbound calls (Kafka produce, database): fail fast while a dependency is down.

Wraps aiobreaker's CircuitBreaker (consecutive-failure count, reset timeout, half-open trial) and adds
what a service needs around it: a typed `DependencyUnavailable` raised in microseconds while open,
an optional per-call timeout (a hung dependency is a failed dependency), and the state as a metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerState
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

from governance._prom import metric

T = TypeVar("T")

STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}


class DependencyUnavailable(Exception):  # noqa: N818 - domain name, read as "dependency unavailable"
    """The named dependency's breaker is open: do not call it, answer UNAVAILABLE/503 now."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"dependency {name!r} unavailable (circuit open), retry after {retry_after:.1f}s")
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
                 registry: CollectorRegistry | None = None,
                 exclude: Iterable[type[BaseException]] = ()) -> None:
        self.name = name
        self.settings = s = settings or OutboundSettings()
        self._cb = CircuitBreaker(fail_max=s.fail_max, timeout_duration=timedelta(seconds=s.reset_timeout),
                                  exclude=list(exclude), name=name)
        self._rejected: Any = None
        # Per-task timeout contexts: concurrent `async with` blocks on one breaker need their own timer.
        self._timers: dict[Any, list[Any]] = {}
        if registry is not None:
            metric(registry, Gauge, "governance_breaker_state",
                   "Outbound circuit breaker state: 0 closed, 1 open, 2 half-open.",
                   ("breaker",)).labels(name).set_function(lambda: STATE_VALUES[self.state])
            self._rejected = metric(registry, Counter, "governance_breaker_rejections",
                                    "Outbound calls refused fast because the breaker was open.",
                                    ("breaker",)).labels(name)

    # -- state ----------------------------------------------------------------------------------
    def _open_remaining(self) -> float:
        opened = self._cb._state_storage.opened_at  # aiobreaker stores naive UTC
        if opened is None:
            return 0.0
        until = opened + self._cb.timeout_duration - datetime.utcnow()
        return max(0.0, until.total_seconds())

    @property
    def state(self) -> str:
        cur = self._cb.current_state
        if cur is CircuitBreakerState.CLOSED:
            return "closed"
        if cur is CircuitBreakerState.HALF_OPEN or self._open_remaining() <= 0:
            return "half_open"  # open with the timeout elapsed: the next call is the trial
        return "open"

    @property
    def fail_counter(self) -> int:
        return self._cb.fail_counter

    def _unavailable(self, cause: BaseException | None = None, *, refused: bool = False) -> DependencyUnavailable:
        if refused and self._rejected is not None:
            self._rejected.inc()
        err = DependencyUnavailable(self.name, max(self._open_remaining(), 0.001))
        err.__cause__ = cause
        return err

    # -- use ------------------------------------------------------------------------------------
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> OutboundBreaker:
        cb = self._cb
        if cb.current_state is CircuitBreakerState.OPEN:
            try:
                cb.state.before_call(None)
            except CircuitBreakerError:
                raise self._unavailable(refused=True) from None
            cb.half_open()
        if self.settings.timeout is not None:
            timer = asyncio.timeout(self.settings.timeout)
            self._timers.setdefault(asyncio.current_task(), []).append(timer)
            await timer.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        timed_out = False
        if self.settings.timeout is not None:
            task = asyncio.current_task()
            stack = self._timers[task]
            timer = stack.pop()
            if not stack:
                del self._timers[task]
            try:
                await timer.__aexit__(exc_type, exc, tb)
            except TimeoutError as timeout_exc:  # the timer cancelled the body: a failed call
                exc, timed_out = timeout_exc, True
        state = self._cb.state
        if exc is None:
            state._handle_success()
            return False
        if not isinstance(exc, Exception):  # cancellation is not the dependency's fault
            return False
        try:
            state._handle_error(None, exc)  # type: ignore[arg-type]
        except CircuitBreakerError as tripped:
            raise self._unavailable(exc) from tripped.__cause__ or exc
        except Exception as same:
            if same is not exc or timed_out:
                raise  # the body's own exception propagates by returning False below
        return False
