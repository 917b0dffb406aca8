"""The `principal` governance plugin: authenticate before quota, so quota counts principals.

It runs ahead of the adaptive limiter and the quota in meterd's chain and sets `call.client_key` to
the authenticated principal (an account id, or "admin"), never to header bytes. Calls without valid
credentials are keyed `ip:<peer>` and share a small per-peer budget of failed checks
(service/credential_gate.py, through Authenticator.check: the same budget the WriteStream and
/debug/profiles paths charge). Once a peer is over it, a credential is looked up only when it may be
a valid key (valid lately, or in the valid-key filter), so a flood of random tokens costs no query
while a valid key behind the same shared address still passes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from governance import NOOP, Call, DependencyUnavailable, Rejection, Token
from governance.plugins.quota import limits_string
from service.auth import Authenticator, Principal
from service.credential_gate import DEFAULT_BUDGET, PeerBudget


class PrincipalKeySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    unauthenticated_limit: str = Field(
        DEFAULT_BUDGET, description="per peer address, for calls without valid credentials")

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
        self.budget = PeerBudget(s.unauthenticated_limit, self.name)

    def bind(self, auth: Authenticator) -> None:
        """Late binding: the chain is built before the database (and so the Authenticator) exists."""
        self._auth = auth

    async def admit(self, call: Call) -> Token | Rejection:
        auth = self._auth
        if auth is None:
            return NOOP
        try:
            result = await auth.check(authorization_of(call.carrier), call.peer, self.budget)
        except DependencyUnavailable:
            result = None  # the handler answers UNAVAILABLE/503 for the database
        if isinstance(result, Principal):
            call.client_key = result.name
            return NOOP
        call.client_key = f"ip:{call.peer or 'unknown'}"
        return NOOP if result is None else result
