"""/readyz: one short status per dependency, checked at most once per `max_age_s` however often it
is asked. Probes and anonymous callers get "ok" / "failing" / "timeout"; what failed and why goes
to the log (exception text can carry hosts, SQL or driver internals)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger("meterd.api")
ReadinessCheck = Callable[[], Awaitable[str | None]]  # returns a problem description or None


def check_name(check: ReadinessCheck) -> str:
    """A dependency's public name: the check function's name without its `_ready` suffix."""
    name = getattr(check, "__name__", "check")
    return name.removesuffix("_ready") or name


class Readiness:
    def __init__(self, checks: Sequence[ReadinessCheck], *, max_age_s: float = 1.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._checks = list(checks)
        self._max_age = max_age_s
        self._timeout = timeout_s
        self._clock = clock
        self._result: dict[str, str] | None = None
        self._checked_at = 0.0
        self._running: asyncio.Task[dict[str, str]] | None = None

    async def status(self) -> dict[str, str]:
        """{dependency: "ok" | "failing" | "timeout"}, at most max_age_s old. Callers arriving while
        a check runs wait for that one instead of starting their own."""
        if self._result is not None and self._clock() - self._checked_at < self._max_age:
            return self._result
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._check_all())
        running = self._running
        try:
            # shield: one caller going away must not cancel the check the others wait for
            return await asyncio.shield(running)
        finally:
            if running.done() and self._running is running:
                self._running = None

    async def _check_all(self) -> dict[str, str]:
        results = await asyncio.gather(*(self._check(c) for c in self._checks))
        self._result = {check_name(c): r for c, r in zip(self._checks, results, strict=True)}
        self._checked_at = self._clock()
        return self._result

    async def _check(self, check: ReadinessCheck) -> str:
        name = check_name(check)
        try:
            async with asyncio.timeout(self._timeout):
                problem = await check()
        except TimeoutError:
            log.warning("readiness: %s did not answer within %g s", name, self._timeout)
            return "timeout"
        except Exception as exc:  # a readiness probe must answer, never raise
            log.warning("readiness: %s failed: %s: %s", name, type(exc).__name__, exc)
            return "failing"
        if problem:
            log.warning("readiness: %s not ready: %s", name, problem)
            return "failing"
        return "ok"
