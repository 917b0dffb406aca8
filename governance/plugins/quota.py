"""Quota limits with the `limits` library's async API, per client key and/or per route.

Storage is `memory://` by default; `redis://host:port` (or `async+redis://...`) shares counters
across replicas. Only the async storages are used, so a slow Redis never blocks the event loop.
Allowed and rejected HTTP replies carry the IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers,
-08 and later): `RateLimit-Policy: "100-per-second";q=100;w=1` and `RateLimit: "100-per-second";r=42;t=1`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from typing import Any, Literal

from limits import RateLimitItem, parse_many
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from pydantic import BaseModel, ConfigDict, Field, field_validator

from governance.core import NOOP, Call, Rejection, Token
from governance.outbound import OutboundSettings
from governance.plugins import PluginContext
from governance.plugins.quota_storage import StorageGuard, with_timeouts

log = logging.getLogger(__name__)

STRATEGIES: dict[str, type[RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


class QuotaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: str = Field(..., description='limits string, e.g. "100/second;5000/minute"')
    per: Literal["client", "route", "client_route", "global"] = "client"
    # fixed-window by default: one atomic counter per limit (exact across replicas, one Redis round
    # trip per limit) and its reset time is what the RateLimit `t` parameter means.
    strategy: Literal["moving-window", "sliding-window", "fixed-window"] = "fixed-window"
    storage: str = "memory://"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    headers: bool = Field(True, description="send RateLimit-Policy/RateLimit on every reply")
    fail_open: bool = Field(True, description="admit when the storage fails (else 503); counted, logged")
    storage_timeout: float = Field(0.1, gt=0, description="seconds: a network storage's connect and read timeouts")
    storage_breaker: OutboundSettings = Field(
        default_factory=lambda: OutboundSettings(fail_max=5, reset_timeout=5.0, timeout=0.5),
        description="the outbound breaker around storage calls; `timeout` bounds one quota check")
    anonymous_key: str = Field("anonymous", description="bucket for calls without a client key")

    @field_validator("limit")
    @classmethod
    def _parse(cls, v: str) -> str:
        return limits_string(v)


def limits_string(v: str) -> str:
    """Validates a `limits` library string such as '100/second;5000/minute' (for settings models)."""
    try:
        if not parse_many(v):
            raise ValueError("empty")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a limits string like '100/second;5000/minute': {v!r}") from exc
    return v


class LocalFixedWindows:
    """In-process fixed windows with the `limits` fixed-window semantics (a window opens at its first
    hit and lasts the limit's expiry). Used for `memory://` + fixed-window because limits' async
    MemoryStorage starts an asyncio Task on every hit to expire keys, which cost more than the whole
    rest of the quota check. Shared storages (Redis, ...) always go through `limits`.

    Expired windows are evicted as new ones open, oldest first: windows of one length open in time
    order, so one insertion-ordered dict per length keeps them sorted by expiry and each window is
    evicted once (O(1) amortised per window, whatever the number of live windows)."""

    def __init__(self) -> None:
        self.windows: dict[str, list[Any]] = {}  # key -> [count (int), reset_at (float)]
        self._by_length: dict[float, OrderedDict[str, None]] = {}  # window length -> keys, oldest first

    def incr(self, key: str, expiry: float, now: float) -> tuple[int, float]:
        w = self.windows.get(key)
        if w is None or w[1] <= now:
            order = self._by_length.get(expiry)
            if order is None:
                order = self._by_length[expiry] = OrderedDict()
            windows = self.windows
            while order:  # evict the expired windows at the front, stop at the first live one
                oldest = next(iter(order))
                if windows[oldest][1] > now:
                    break
                del order[oldest], windows[oldest]
            w = windows[key] = [0, now + expiry]  # count stays an int: it goes into headers
            order[key] = None
            order.move_to_end(key)  # a renewed window is the newest (the clock went back: keep order)
        w[0] += 1
        return w[0], w[1]


def async_storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


def _policy_name(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return f"{item.amount}-per-{unit}" if item.multiples == 1 else f"{item.amount}-per-{item.multiples}-{unit}"


class _Quota:
    """What both quota plugins share: the parsed limits, bucket keys and the RateLimit fields."""

    name = "quota"

    def __init__(self, settings: QuotaSettings, namespace: str) -> None:
        self.settings = s = settings
        self.namespace = namespace
        self.items: list[RateLimitItem] = parse_many(s.limit)
        self._specs = [(item.get_expiry(), item.amount) for item in self.items]
        self._names = [_policy_name(i) for i in self.items]
        self._policy = ", ".join(f'"{_policy_name(i)}";q={i.amount};w={i.get_expiry()}' for i in self.items)
        self._policy_header = (b"ratelimit-policy", self._policy.encode())
        self._ratelimit_prefix = [f'"{name}";r='.encode() for name in self._names]
        self._keys: dict[Any, list[str]] = {}  # bucket -> storage key per limit
        self._last_storage_warning = 0.0
        self._per, self._anonymous, self._headers = s.per, s.anonymous_key, s.headers  # read on every call

    def identifiers(self, call: Call) -> tuple[str, ...]:
        per, key = self._per, call.client_key or self._anonymous
        if per == "client":
            return (self.namespace, key)
        if per == "route":
            return (self.namespace, call.route)
        if per == "client_route":
            return (self.namespace, key, call.route)
        return (self.namespace,)

    def storage_keys(self, call: Call) -> list[str]:
        """The storage key of each limit for this call, cached by the call's bucket (for the default
        per-client counting, the client key itself: no tuple built per call)."""
        bucket: Any = (call.client_key or self._anonymous) if self._per == "client" else self.identifiers(call)
        keys = self._keys.get(bucket)
        if keys is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            keys = self._keys[bucket] = [item.key_for(*self.identifiers(call)) for item in self.items]
        return keys

    def decide(self, call: Call, counts: list[tuple[int, float]]) -> Token | Rejection:
        """From (count, seconds to reset) per limit: refuse on the first exceeded limit, else attach
        the RateLimit fields of the most constrained one (the fewest calls left)."""
        best_i, best_rem, best_reset = 0, math.inf, 0.0
        for i, (count, reset_in) in enumerate(counts):
            remaining = self._specs[i][1] - count
            if remaining < 0:
                return self.refusal(i, reset_in)
            if remaining < best_rem:
                best_i, best_rem, best_reset = i, remaining, reset_in
        if self._headers:
            self._attach(call, best_i, int(best_rem), best_reset)
        return NOOP

    def refusal(self, i: int, reset_in: float) -> Rejection:
        headers = (("RateLimit-Policy", self._policy),
                   ("RateLimit", f'"{self._names[i]}";r=0;t={max(0, math.ceil(reset_in))}')) \
            if self.settings.headers else ()
        return Rejection("quota", "limit_exceeded", "rate_limited", max(1.0, math.ceil(reset_in)), headers)

    def _attach(self, call: Call, i: int, remaining: int, reset_in: float) -> None:
        value = b"%s%d;t=%d" % (self._ratelimit_prefix[i], remaining, math.ceil(reset_in) if reset_in > 0 else 0)
        headers = [self._policy_header, (b"ratelimit", value)]
        if call.response_headers is None:
            call.response_headers = headers
        else:
            call.response_headers.extend(headers)

    def storage_failed(self, exc: Exception) -> Token | Rejection:
        now = time.monotonic()
        if now - self._last_storage_warning > 10.0:
            self._last_storage_warning = now
            log.warning("quota storage %s failed (%s); %s", self.settings.storage, exc,
                        "admitting calls" if self.settings.fail_open else "rejecting calls")
        return NOOP if self.settings.fail_open else Rejection("quota", "storage_unavailable", "unavailable", 1.0)


class QuotaPlugin(_Quota):
    """Fixed windows on in-process counters (`memory://`): never waits, so a sync plugin."""

    def __init__(self, settings: QuotaSettings, namespace: str = "default",
                 storage: LocalFixedWindows | None = None) -> None:
        super().__init__(settings, namespace)
        self.storage = storage or LocalFixedWindows()

    def admit(self, call: Call) -> Token | Rejection:
        now, incr = time.time(), self.storage.incr
        keys = self.storage_keys(call)
        counts = []
        for key, (expiry, amount) in zip(keys, self._specs, strict=True):
            count, reset = incr(key, expiry, now)
            counts.append((count, reset - now))
            if count > amount:
                break  # refused: later limits are not charged
        return self.decide(call, counts)


class SharedQuotaPlugin(_Quota):
    """The async variant: counters in a `limits` async storage (Redis shared by replicas, or memory
    with the moving/sliding strategies). Never blocks the loop on a sync client."""

    def __init__(self, settings: QuotaSettings, namespace: str = "default", storage: Any = None,
                 guard: StorageGuard | None = None) -> None:
        super().__init__(settings, namespace)
        self.storage_options = with_timeouts(settings.storage, settings.storage_options, settings.storage_timeout)
        if storage is None:
            try:
                storage = storage_from_string(async_storage_uri(settings.storage), **self.storage_options)
            except ConfigurationError as exc:
                raise ValueError(f"quota.storage: {exc}") from exc
        self.storage = storage
        self.limiter: RateLimiter = STRATEGIES[settings.strategy](storage)
        self._resets: dict[str, float] = {}  # key -> window reset (epoch s), read once per window
        self.guard = guard

    async def admit(self, call: Call) -> Token | Rejection:
        count = self._fixed_window if self.settings.strategy == "fixed-window" else self._windows
        try:
            if self.guard is None:
                return self.decide(call, await count(call))
            async with self.guard.breaker:  # a deadline per check; fails fast while the storage is down
                counts = await count(call)
            return self.decide(call, counts)
        except Exception as exc:  # noqa: BLE001 - any storage error (connection, timeout, script)
            if self.guard is not None:
                self.guard.count(exc)
            return self.storage_failed(exc)

    async def _fixed_window(self, call: Call) -> list[tuple[int, float]]:
        """One INCR per limit gives both the decision and the remaining count."""
        storage, resets, now, counts = self.storage, self._resets, time.time(), []
        for key, (expiry, _) in zip(self.storage_keys(call), self._specs, strict=True):
            count = await storage.incr(key, expiry)
            reset = resets.get(key)
            if count == 1 or reset is None or reset <= now:
                reset = now + expiry if count == 1 else await storage.get_expiry(key)
                if len(resets) > 10_000:
                    resets.clear()
                resets[key] = reset
            counts.append((count, reset - now))
            if count > self._specs[len(counts) - 1][1]:
                break  # refused: later limits are not charged
        return counts

    async def _windows(self, call: Call) -> list[tuple[int, float]]:
        ids, now, counts = self.identifiers(call), time.time(), []
        for i, item in enumerate(self.items):
            admitted = await self.limiter.hit(item, *ids)
            stats = await self.limiter.get_window_stats(item, *ids)
            amount = self._specs[i][1]
            counts.append((amount + 1 if not admitted else amount - stats.remaining, stats.reset_time - now))
            if not admitted:
                break
        return counts


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> QuotaPlugin | SharedQuotaPlugin:
    """Route variants (label = the route glob) count in their own namespace."""
    parsed = QuotaSettings(**settings)
    local = parsed.strategy == "fixed-window" and async_storage_uri(parsed.storage).startswith("async+memory://")
    key = f"quota.local:{parsed.storage}"
    if local:
        return QuotaPlugin(parsed, label, ctx.shared.setdefault(key, LocalFixedWindows()))
    return SharedQuotaPlugin(parsed, label, guard=StorageGuard.shared(parsed.storage, parsed.storage_breaker, ctx))
