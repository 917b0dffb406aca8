"""The adaptive limiter, split the way Netflix concurrency-limits splits one:

- `limit`: the estimate (is a standing queue growing, is admitted latency over the objective, and
  while so, how much to admit: a Gradient2-style limit);
- `limiter`: the limiter that enforces (priorities, static guard rails) and the `Listener` that
  reports each admitted call's end; `LimiterStats` is its read-only snapshot for gauges;
- `queue`: the measurement of queueing ahead of the middleware (sojourn per call);
- `policy`: route priorities, latency objectives and the static guard rails.
"""

from governance.adaptive.limiter import AdaptiveLimiter, AdaptiveSettings, LimiterStats, Listener
from governance.adaptive.policy import PRIORITIES, Priority, RouteGuard

__all__ = ["PRIORITIES", "AdaptiveLimiter", "AdaptiveSettings", "LimiterStats", "Listener", "Priority", "RouteGuard"]
