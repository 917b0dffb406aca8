"""The `principal` governance plugin: authenticate before quota, so quota counts principals.

It runs ahead of the adaptive limiter and the quota in meterd's chain and sets `call.client_key` to
the authenticated principal (an account id, or "admin"), never to header bytes. Calls without valid
credentials are keyed `ip:<peer>` and share a small per-peer budget, which is checked before the
credential lookup (a database query on a cache miss), so a flood of random tokens costs a counter
increment each once its peer is over budget. Lookups are cached by the Authenticator (~1 s); a
key that was valid in the last 10 minutes is looked up again even when its peer is over budget, so
a flood from a shared address does not lock out the keys already in use there.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import parse_many
from pydantic import BaseModel, ConfigDict, Field, field_validator

from governance import NOOP, Call, DependencyUnavailable, Rejection, Token
from governance.plugins.quota import LocalFixedWindows, limits_string
from service.auth import MISSING, STALE, Authenticator, Principal


class PrincipalKeySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unauthenticated_limit: str = Field(
        "20/second;600/minute", description="per peer address, for calls without valid credentials")

    @field_validator("unauthenticated_limit")
    @classmethod
    def _parse(cls, v: str) -> str:
        return limits_string(v)


def authorization_of(carrier: Any) -> str | None:
    """The Authorization header (HTTP, bytes pairs) or metadata entry (gRPC, str pairs)."""
    for name, value in carrier:
        if name == b"authorization" or name == "authorization":
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


class PrincipalKey:
    name = "auth"

    def __init__(self, **settings: Any) -> None:
        s = PrincipalKeySettings(**settings)
        self._auth: Authenticator | None = None
        self._limits = [(float(i.get_expiry()), i.amount) for i in parse_many(s.unauthenticated_limit)]
        self._windows = LocalFixedWindows()  # O(1) eviction: random peers cannot grow it unbounded
        self._refusals: dict[int, Rejection] = {}

    def bind(self, auth: Authenticator) -> None:
        """Late binding: the chain is built before the database (and so the Authenticator) exists."""
        self._auth = auth

    def _over_budget(self, peer: str, now: float) -> Rejection | None:
        windows = self._windows.windows
        for expiry, amount in self._limits:
            w = windows.get(f"{peer}/{expiry}")
            if w is not None and w[1] > now and w[0] >= amount:
                wait = max(1, math.ceil(w[1] - now))
                refusal = self._refusals.get(wait)
                if refusal is None:  # one immutable instance per Retry-After value (bounded by expiry)
                    refusal = self._refusals[wait] = Rejection(self.name, "unauthenticated_budget",
                                                               "rate_limited", float(wait))
                return refusal
        return None

    def _charge(self, peer: str, now: float) -> None:
        for expiry, _ in self._limits:
            self._windows.incr(f"{peer}/{expiry}", expiry, now)

    async def admit(self, call: Call) -> Token | Rejection:
        auth = self._auth
        if auth is None:
            return NOOP
        header = authorization_of(call.carrier)
        known = auth.peek(header)
        if isinstance(known, Principal):
            call.client_key = known.name
            return NOOP
        peer = f"ip:{call.peer or 'unknown'}"
        call.client_key = peer
        now = time.time()
        if known is not STALE:  # a key valid lately is looked up whatever its peer's neighbours do
            refused = self._over_budget(peer, now)
            if refused is not None:
                return refused
        if known is MISSING or known is STALE:
            try:
                principal = await auth.authenticate(header)
            except DependencyUnavailable:
                return NOOP  # the handler answers UNAVAILABLE/503 for the database
            if principal is not None:
                call.client_key = principal.name
                return NOOP
        self._charge(peer, now)
        return NOOP
