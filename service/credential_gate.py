"""What stands between a flood of made-up credentials and the database (audit N9, N22).

PeerBudget: failed credential checks per peer address. Once a peer is over it, a credential that is
not known to be valid is refused without a lookup (429 / RESOURCE_EXHAUSTED).

KeyHashFilter: which tokens may be valid keys, answered from memory: an 8-byte prefix of the stored
SHA-256 of every active key. A peer over its budget (a shared NAT or load-balancer address under a
flood) still gets a key looked up when its prefix is present, so a valid key this process has never
seen passes while made-up tokens cost no query. The trade-off: a key created on another replica is
unknown here until the next refresh (`refresh_seconds`), so during a flood from its own address its
first calls in that window may be refused; and the filter costs ~60 bytes per key, capped at
`max_keys` (beyond it the filter is off and an over-budget peer's unknown keys are refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from limits import parse_many

from governance import DependencyUnavailable, Rejection
from governance.plugins.quota import LocalFixedWindows

log = logging.getLogger("meterd.auth")
DEFAULT_BUDGET = "20/second;600/minute"


class PeerBudget:
    """Failed credential checks per peer ("ip:<address>"), in fixed windows evicted in O(1)."""

    def __init__(self, limit: str = DEFAULT_BUDGET, plugin: str = "auth") -> None:
        self.limit = limit
        self._limits = [(float(i.get_expiry()), i.amount) for i in parse_many(limit)]
        self._windows = LocalFixedWindows()  # random peers cannot grow it without bound
        self._plugin = plugin
        self._refusals: dict[int, Rejection] = {}

    def refusal(self, peer: str, now: float | None = None) -> Rejection | None:
        """The refusal when `peer` is over budget, else None."""
        now = time.time() if now is None else now
        windows = self._windows.windows
        for expiry, amount in self._limits:
            w = windows.get(f"{peer}/{expiry}")
            if w is not None and w[1] > now and w[0] >= amount:
                wait = max(1, math.ceil(w[1] - now))
                refusal = self._refusals.get(wait)
                if refusal is None:  # one immutable instance per Retry-After value (bounded by expiry)
                    refusal = self._refusals[wait] = Rejection(self._plugin, "unauthenticated_budget",
                                                               "rate_limited", float(wait))
                return refusal
        return None

    def charge(self, peer: str, now: float | None = None) -> None:
        """Count one failed credential check against `peer`."""
        now = time.time() if now is None else now
        for expiry, _ in self._limits:
            self._windows.incr(f"{peer}/{expiry}", expiry, now)


KeyHashLoader = Callable[[int], Awaitable[list[tuple[str, int]]]]  # since_ms -> [(sha256 hex, created_at_ms)]


def _prefix(sha256_hex: str) -> int:
    return int(sha256_hex[:16], 16)


class KeyHashFilter:
    """Prefixes of the active keys' stored hashes: loaded at first use, topped up with the keys created
    since at most once per `refresh_seconds`, rebuilt (dropping revoked keys) every `rebuild_seconds`.
    A false positive (a revoked key, a prefix collision) costs one lookup, cached like any other."""

    def __init__(self, load: KeyHashLoader, *, refresh_seconds: float = 2.0, rebuild_seconds: float = 600.0,
                 max_keys: int = 1_000_000) -> None:
        self._load = load
        self._refresh_s, self._rebuild_s, self._max = refresh_seconds, rebuild_seconds, max_keys
        self._prefixes: set[int] = set()
        self._since_ms = 0
        self._checked = self._built = -math.inf
        self._lock = asyncio.Lock()
        self.enabled = True

    async def may_be_valid(self, token: str) -> bool:
        prefix = _prefix(hashlib.sha256(token.encode()).hexdigest())
        if prefix in self._prefixes:
            return True
        await self._refresh()
        return prefix in self._prefixes

    async def _refresh(self) -> None:
        if not self.enabled or time.monotonic() - self._checked < self._refresh_s:
            return
        async with self._lock:  # one query at a time, whatever the number of waiting refusals
            now = time.monotonic()
            if now - self._checked < self._refresh_s:
                return
            self._checked = now
            rebuild = now - self._built >= self._rebuild_s
            try:
                rows = await self._load(0 if rebuild else self._since_ms)
            except (DependencyUnavailable, OSError, TimeoutError):
                return  # the database is down: the flood is refused, nothing else changes
            prefixes = set() if rebuild else set(self._prefixes)
            prefixes.update(_prefix(h) for h, _ in rows)
            if len(prefixes) > self._max:
                log.warning("more than %d API keys: the valid-key filter is off", self._max)
                self.enabled, self._prefixes = False, set()
                return
            self._prefixes = prefixes
            self._since_ms = max([self._since_ms, *(created for _, created in rows)])
            if rebuild:
                self._built = now
