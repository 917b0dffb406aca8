"""What keeps a shared quota storage (Redis) from hanging or silently skewing governed calls.

A hung Redis (SIGSTOP, a blackholed route: TCP still accepts) made every governed call wait for
ever, and an unreachable one admitted everything with only a log line. Now: short client timeouts by
default (`storage_timeout`, connect and read), every check inside an outbound breaker with a total
deadline (after `fail_max` failures it answers at once without touching the storage until its
`reset_timeout` passes), and `governance_quota_storage_errors_total{reason}` counts each failure
(reason: timeout, breaker_open, error). What a failure means for the call is the plugin's
`fail_open`: admit (the default: a quota is a guard, not billing) or refuse as unavailable (503).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from governance._prom import metric
from governance.outbound import DependencyUnavailable, OutboundBreaker, OutboundSettings
from governance.plugins import PluginContext

# Client option names per `limits` Redis implementation (coredis is limits' default).
_TIMEOUT_OPTIONS = {"coredis": ("connect_timeout", "stream_timeout"),
                    "redispy": ("socket_connect_timeout", "socket_timeout"),
                    "valkey": ("socket_connect_timeout", "socket_timeout")}
_NETWORK_SCHEMES = ("redis", "rediss", "valkey", "async+redis", "async+rediss", "async+valkey")


def with_timeouts(uri: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`options` plus connect/read timeouts of `timeout` seconds for a Redis-like storage, unless the
    config already sets one of them (then it is kept as it is)."""
    scheme = uri.split(":", 1)[0].removesuffix("+unix")
    if scheme not in _NETWORK_SCHEMES:
        return dict(options)
    implementation = "valkey" if "valkey" in scheme else options.get("implementation", "coredis")
    names = _TIMEOUT_OPTIONS.get(implementation, ())
    already_set = {name for pair in _TIMEOUT_OPTIONS.values() for name in pair} & options.keys()
    if not names or already_set:
        return dict(options)
    return {**options, **dict.fromkeys(names, timeout)}


class StorageGuard:
    """The breaker and error counter of one quota storage (shared by the plugin's route variants)."""

    def __init__(self, storage: str, breaker: OutboundSettings, ctx: PluginContext) -> None:
        self.breaker = OutboundBreaker("quota_storage", breaker, registry=ctx.registry)
        errors: Counter = metric(ctx.registry, Counter, "governance_quota_storage_errors",
                                 "Quota checks whose storage failed (the call admitted or refused by fail_open).",
                                 ("reason",))
        self._errors = {reason: errors.labels(reason) for reason in ("timeout", "breaker_open", "error")}

    def count(self, exc: BaseException) -> None:
        cause = exc.__cause__ if isinstance(exc, DependencyUnavailable) else exc
        if cause is None:
            reason = "breaker_open"
        elif isinstance(cause, TimeoutError) or "timeout" in type(cause).__name__.lower():
            reason = "timeout"
        else:
            reason = "error"
        self._errors[reason].inc()

    @classmethod
    def shared(cls, storage: str, breaker: OutboundSettings, ctx: PluginContext) -> StorageGuard:
        key = f"quota.guard:{storage}"
        guard = ctx.shared.get(key)
        if guard is None:
            guard = ctx.shared[key] = cls(storage, breaker, ctx)
        return guard
