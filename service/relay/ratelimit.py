"""Sliding-window send budget for one robot (DingTalk allows 20 messages per 60 s per robot)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindow:
    """At most `limit` events in any `window_s` seconds.

    Callers record an event when a send *finishes*: DingTalk counts on arrival, which is after our
    start time, so timing from the finished send keeps its window from seeing limit + 1 requests.
    """

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.window_s:
            self._events.popleft()

    def remaining(self) -> int:
        self._prune(self._clock())
        return self.limit - len(self._events)

    def wait_time(self) -> float:
        """Seconds until one more event fits (0 when it fits now)."""
        now = self._clock()
        self._prune(now)
        if len(self._events) < self.limit:
            return 0.0
        return max(0.0, self._events[0] + self.window_s - now)

    def preload(self, ages: list[float]) -> None:
        """Events that happened `age` seconds ago (sends before a restart), oldest first."""
        now = self._clock()
        for age in sorted(ages, reverse=True):
            if 0 <= age < self.window_s:
                self._events.append(now - age)

    def record(self) -> None:
        now = self._clock()
        self._prune(now)
        self._events.append(now)
