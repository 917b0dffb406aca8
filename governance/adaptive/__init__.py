"""The adaptive limiter, split the way Netflix concurrency-limits splits one:

- `estimator`: what the service has shown it can do (BBR window: max_pass x min_rt) and whether
  latency is climbing over it (the gradient);
- `queue`: the queue policy (sojourn of each call in the event loop's batches, CoDel-style arming);
- `limiter`: the limiter that enforces, combining both with the CPU signal;
- the CPU/cgroup signal itself lives in `governance.signals`.
"""

from governance.adaptive.limiter import AdaptiveLimiter, AdaptiveSettings

__all__ = ["AdaptiveLimiter", "AdaptiveSettings"]
