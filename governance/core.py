"""The governance core: a `Call`, the plugin protocol, refusals, and the chain that runs plugins.

A plugin has one method, `admit(call)`, which returns either a `Rejection` (the call is refused) or
a `Token`; the token's `release(outcome)` is called exactly once when the call ends, whatever ends
it. A plugin whose admission must await I/O (a shared quota on Redis) writes `async def admit`;
the chain sees that once, when it plans a route, and awaits it. Tokens always release synchronously.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

Transport = Literal["http", "grpc"]
RejectStatus = Literal["overloaded", "rate_limited", "unavailable"]

# gRPC codes that mean "the server is unhealthy"; everything else (OK, INVALID_ARGUMENT, NOT_FOUND,
# PERMISSION_DENIED, ...) is the server working correctly and counts as success for breakers.
GRPC_FAILURE_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})


class OutcomeKind(Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # the server or a dependency failed (5xx, UNAVAILABLE, INTERNAL, ...)
    REJECTED = "rejected"  # a plugin later in the chain refused the call; the handler never ran
    CANCELLED = "cancelled"  # the client went away: evidence about neither health nor capacity


SUCCESS, FAILURE = OutcomeKind.SUCCESS, OutcomeKind.FAILURE
REJECTED, CANCELLED = OutcomeKind.REJECTED, OutcomeKind.CANCELLED


@dataclass(slots=True)
class Call:
    """One inbound request (or stream message) as plugins see it.

    `route` is a bounded label: an HTTP route template ("/v1/accounts/{id}") or a gRPC full method
    ("/pkg.Service/Method"), never a raw path. `method` is the HTTP method, or for gRPC the RPC type
    ("unary", "client_stream", "server_stream", "bidi_stream").
    """

    transport: Transport
    route: str
    method: str
    client_key: str | None
    start: float  # time.perf_counter() when the adapter first saw the request
    carrier: Sequence[tuple[Any, Any]] = ()  # request headers / metadata, for context propagation
    # Extra reply headers a plugin wants (quota's RateLimit fields), as ASGI sends them.
    response_headers: list[tuple[bytes, bytes]] | None = None
    trace_id: str | None = None  # hex trace id of a sampled span, for exemplars
    msgs_in: int = 0  # stream message counts, kept by the gRPC adapter
    msgs_out: int = 0
    peer: str | None = None  # the caller's address (host only), for keying calls without credentials
    request_bytes: int = 0  # the request's size as far as known at admission (Content-Length, gRPC message)
    attributes: dict[str, Any] = field(default_factory=dict)

    def add_response_header(self, name: str, value: str) -> None:
        pair = (name.lower().encode("latin-1"), value.encode("latin-1"))
        if self.response_headers is None:
            self.response_headers = [pair]
        else:
            self.response_headers.append(pair)


@dataclass(slots=True)
class Outcome:
    """How a call ended. `status` is the HTTP status code (int) or the gRPC code name (str)."""

    kind: OutcomeKind
    status: int | str
    duration: float  # seconds, perf_counter based
    call: Call

    @property
    def ok(self) -> bool:
        return self.kind is SUCCESS


@dataclass(frozen=True, slots=True)
class Rejection:
    """A plugin's typed refusal. Adapters render it (HTTP 429/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE).
    Immutable, so a plugin may hand back the same instance for the same decision."""

    plugin: str
    reason: str
    status: RejectStatus
    retry_after: float = 1.0
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.plugin}: {self.reason}"


class Token(Protocol):
    def release(self, outcome: Outcome) -> None: ...


class Plugin(Protocol):
    """The protocol. `admit` returns a Rejection or a Token; see the module docstring."""

    name: str

    def admit(self, call: Call) -> Token | Rejection: ...


class AsyncPlugin(Protocol):
    """The one async variant: the same contract, awaited."""

    name: str

    async def admit(self, call: Call) -> Token | Rejection: ...


AnyPlugin = Plugin | AsyncPlugin


class _Noop:
    __slots__ = ()

    def release(self, outcome: Outcome) -> None:
        return None


NOOP: Token = _Noop()  # for plugins with nothing to do when a call ends


def outcome_kind(transport: str, status: int | str) -> OutcomeKind:
    if transport == "http":
        return FAILURE if isinstance(status, int) and (status >= 500 or status == 0) else SUCCESS
    return FAILURE if status in GRPC_FAILURE_CODES else SUCCESS


def rejection_status(transport: str, rej: Rejection) -> int | str:
    """The reply a rejection becomes: HTTP 429/503 or gRPC RESOURCE_EXHAUSTED/UNAVAILABLE."""
    if transport == "http":
        return 429 if rej.status == "rate_limited" else 503
    return "RESOURCE_EXHAUSTED" if rej.status == "rate_limited" else "UNAVAILABLE"


class Plan:
    """The plugins governing one (transport, method, route); `sync` when none of them awaits."""

    __slots__ = ("plugins", "admits", "sync")

    def __init__(self, plugins: Sequence[AnyPlugin]) -> None:
        self.plugins = tuple(plugins)
        self.admits: tuple[tuple[Callable[[Call], Any], bool], ...] = tuple(
            (p.admit, inspect.iscoroutinefunction(p.admit)) for p in self.plugins)
        self.sync = not any(is_async for _, is_async in self.admits)

    def __len__(self) -> int:
        return len(self.plugins)


Resolver = Callable[[str, str, str], Sequence[AnyPlugin]]
RejectListener = Callable[[Call, Rejection], None]


class Chain:
    """Ordered plugins plus a cached plan per (transport, method, route)."""

    __slots__ = ("plugins", "_resolver", "_plans", "_on_reject")

    def __init__(self, plugins: Sequence[AnyPlugin], resolver: Resolver | None = None,
                 on_reject: RejectListener | None = None) -> None:
        self.plugins = tuple(plugins)
        self._resolver = resolver
        self._plans: dict[tuple[str, str, str], Plan] = {}  # route labels are bounded: so is this
        self._on_reject = on_reject

    def plan(self, transport: str, method: str, route: str) -> Plan:
        key = (transport, method, route)
        plan = self._plans.get(key)
        if plan is None:
            chosen = self.plugins if self._resolver is None else self._resolver(transport, method, route)
            plan = self._plans[key] = Plan(chosen)
        return plan

    def admit(self, call: Call, plan: Plan) -> list[Token] | Rejection:
        """Admit through an all-sync plan: the tokens, or the refusal (already unwound)."""
        tokens: list[Token] = []
        try:
            for admit, _ in plan.admits:
                result = admit(call)
                if isinstance(result, Rejection):
                    return self._refuse(call, tokens, result)
                tokens.append(result)
        except BaseException:
            self._broken(call, tokens)
            raise
        return tokens

    async def admit_async(self, call: Call, plan: Plan) -> list[Token] | Rejection:
        """`admit` for a plan with async plugins (works for any plan)."""
        tokens: list[Token] = []
        try:
            for admit, is_async in plan.admits:
                result = (await admit(call)) if is_async else admit(call)
                if isinstance(result, Rejection):
                    return self._refuse(call, tokens, result)
                tokens.append(result)
        except BaseException:
            self._broken(call, tokens)
            raise
        return tokens

    def _refuse(self, call: Call, tokens: list[Token], result: Rejection) -> Rejection:
        """Unwind the tokens held so far (and forget them) for a refusal."""
        if self._on_reject is not None:
            self._on_reject(call, result)
        try:
            self.unwind(tokens, Outcome(REJECTED, rejection_status(call.transport, result),
                                        time.perf_counter() - call.start, call))
        finally:
            tokens.clear()  # released once, even if a release raised
        return result

    def _broken(self, call: Call, tokens: list[Token]) -> None:
        """A plugin raised (a bug): the plugins already admitted still see the call end."""
        self.unwind(tokens, Outcome(FAILURE, "UNKNOWN", time.perf_counter() - call.start, call))

    @staticmethod
    def unwind(tokens: list[Token], outcome: Outcome) -> None:
        """The one unwinding path: release every token, last admitted first. One failing release
        does not skip the others; the first error is raised at the end."""
        error: Exception | None = None
        for token in reversed(tokens):
            try:
                token.release(outcome)
            except Exception as exc:  # noqa: BLE001 - keep releasing
                error = error or exc
        if error is not None:
            raise error
