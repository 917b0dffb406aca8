"""Framework-neutral governance core: the `Call`, the plugin protocol, typed rejections, the chain.

The adapters (ASGI, grpc.aio) turn a request into a `Call`, ask the `Chain` to admit it, run the
handler, and report an `Outcome`. Everything here is transport-agnostic and allocation-light: the
hot path allocates the `Call`, one `Outcome`, and nothing else of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Transport = Literal["http", "grpc"]
RejectStatus = Literal["overloaded", "rate_limited", "unavailable"]

# Outcome kinds. Plain module-level strings so comparisons stay cheap and the set stays closed.
SUCCESS = "success"
FAILURE = "failure"  # the server or a dependency failed (5xx, UNAVAILABLE, INTERNAL, ...)
REJECTED = "rejected"  # a plugin later in the chain refused the call; the handler never ran
CANCELLED = "cancelled"  # the client went away; evidence about neither health nor capacity

# gRPC codes that mean "the server is unhealthy"; everything else (OK, INVALID_ARGUMENT, NOT_FOUND,
# PERMISSION_DENIED, ...) is the server working correctly and must count as success for breakers.
GRPC_FAILURE_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})


@dataclass(slots=True)
class Call:
    """One inbound request as the plugins see it.

    `route` is a bounded label: an HTTP route template ("/v1/accounts/{id}") or a gRPC full method
    ("/pkg.Service/Method"), never a raw path. For gRPC, `method` is the RPC type
    ("unary", "client_stream", "server_stream", "bidi_stream"); for HTTP it is the HTTP method.
    """

    transport: Transport
    route: str
    method: str
    client_key: str | None
    start: float  # time.perf_counter() when the adapter first saw the request
    attributes: dict[str, Any] = field(default_factory=dict)
    # Extra response headers a plugin wants on the reply (e.g. quota's RateLimit fields), as ASGI
    # sends them: (lowercase bytes, bytes) pairs, so the adapter appends them with no per-reply
    # encoding (`add_response_header` encodes str pairs). None until someone sets it, so the common
    # case allocates nothing.
    response_headers: list[tuple[bytes, bytes]] | None = None
    # Message counts for streaming RPCs, maintained by the gRPC adapter.
    msgs_in: int = 0
    msgs_out: int = 0

    def add_response_header(self, name: str, value: str) -> None:
        pair = (name.lower().encode("latin-1"), value.encode("latin-1"))
        if self.response_headers is None:
            self.response_headers = [pair]
        else:
            self.response_headers.append(pair)


@dataclass(slots=True)
class Outcome:
    """How a call ended. `status` is the HTTP status code (int) or the gRPC code name (str)."""

    kind: str  # SUCCESS | FAILURE | REJECTED
    status: int | str
    duration: float  # seconds, perf_counter based

    @property
    def ok(self) -> bool:
        return self.kind == SUCCESS


class Rejection(Exception):  # noqa: N818 - it is a decision, not an error condition
    """A plugin's typed refusal. Adapters render it (HTTP 429/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE)."""

    __slots__ = ("plugin", "reason", "status", "retry_after", "headers")

    def __init__(
        self,
        plugin: str,
        reason: str,
        status: RejectStatus,
        retry_after: float = 1.0,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{plugin}: {reason}")
        self.plugin = plugin
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.headers = headers

    def copy(self) -> Rejection:
        """A fresh instance to raise: raising a shared one would grow its traceback on every raise."""
        return Rejection(self.plugin, self.reason, self.status, self.retry_after, self.headers)


@runtime_checkable
class Plugin(Protocol):
    """What the chain needs from a plugin.

    `before` admits the call (return) or refuses it (raise `Rejection`). `after` runs exactly once
    for every call whose `before` returned, whatever happened next: a later plugin's rejection
    (outcome.kind == REJECTED), a handler exception (FAILURE), or a normal reply. A plugin that
    rejects in its own `before` does its own bookkeeping there; its `after` is not called.
    """

    name: str

    async def before(self, call: Call) -> None: ...

    async def after(self, call: Call, outcome: Outcome) -> None: ...


def http_outcome_kind(status: int) -> str:
    return FAILURE if status >= 500 else SUCCESS


def grpc_outcome_kind(code_name: str) -> str:
    return FAILURE if code_name in GRPC_FAILURE_CODES else SUCCESS


def rejection_status(transport: str, rej: Rejection) -> int | str:
    """The reply a rejection becomes: HTTP 429/503 or gRPC RESOURCE_EXHAUSTED/UNAVAILABLE."""
    if transport == "http":
        return 429 if rej.status == "rate_limited" else 503
    return "RESOURCE_EXHAUSTED" if rej.status == "rate_limited" else "UNAVAILABLE"


RejectListener = Any  # Callable[[Call, Rejection], None]; kept loose to avoid a typing import cycle


class Plan:
    """The plugins governing one (transport, method, route), with their hooks resolved once.

    A plugin may offer `before_sync(call)` / `after_sync(call, outcome)` next to the async hooks;
    the chain then calls those directly, saving a coroutine per hook per call (the built-ins that
    never wait on I/O do this). When every plugin of a plan has both, `sync` is true and adapters
    may run the whole plan without awaiting (`Chain.admit_sync` / `Chain.release_sync`): measured
    inside uvicorn, each avoided coroutine is worth ~0.5 us per request. A plugin may also offer
    `bind_sync(transport, method, route)`, returning that pair already specialised to the plan's
    route (per-route state looked up once, here, not on every call), or None for the plain pair.
    A `before_sync` may refuse by returning a `Rejection` instead of raising one: no exception
    machinery, and a plugin may hand back the same instance for the same decision (never raise a
    returned instance; the chain raises copies where a raise is needed). Under overload most calls
    are refused, so that is the path to keep cheap. The async hooks remain the protocol.

    A plugin may also offer `refuse_early()` -> Rejection | None: a decision a server can ask for
    before it has started the request's handling (no task, no ASGI cycle), so that a refusal under
    overload costs a fraction of one made in `before`. `early` is (index, hook) of the first plugin
    offering it, when every plugin ahead of it has sync hooks (they are run and unwound for the
    refused call by `Chain.refuse_early`, as if that plugin's `before` had refused); else None.
    """

    __slots__ = ("plugins", "befores", "afters", "sync", "sync_befores", "sync_afters", "early", "early_afters")

    def __init__(self, plugins: tuple[Plugin, ...], transport: str = "", method: str = "", route: str = "") -> None:
        self.plugins = plugins
        hooks = [_hooks(p, transport, method, route) for p in plugins]
        self.befores = tuple(before for before, _ in hooks)
        self.afters = tuple(after for _, after in reversed(hooks))
        self.sync = not any(is_async for _, is_async in self.befores + self.afters)
        self.sync_befores = tuple(fn for fn, _ in self.befores) if self.sync else ()
        self.sync_afters = tuple(fn for fn, _ in self.afters) if self.sync else ()
        self.early: tuple[int, Any] | None = None
        self.early_afters: tuple[Any, ...] = ()
        for i, plugin in enumerate(plugins):
            hook = getattr(plugin, "refuse_early", None)
            if hook is None:
                continue
            ahead = self.befores[:i] + self.afters[len(self.afters) - i:]
            if not any(is_async for _, is_async in ahead):
                self.early = (i, hook)
                self.early_afters = tuple(fn for fn, _ in self.afters[len(self.afters) - i:])
            break

    def __len__(self) -> int:
        return len(self.plugins)


def _hooks(plugin: Plugin, transport: str, method: str, route: str) -> tuple[tuple[Any, bool], tuple[Any, bool]]:
    """(before, is_async), (after, is_async) of one plugin for one plan."""
    bind = getattr(plugin, "bind_sync", None)
    bound = bind(transport, method, route) if bind is not None else None
    if bound is not None:
        return (bound[0], False), (bound[1], False)
    return _hook(plugin, "before"), _hook(plugin, "after")


def _hook(plugin: Plugin, name: str) -> tuple[Any, bool]:
    fast = getattr(plugin, f"{name}_sync", None)
    return (fast, False) if fast is not None else (getattr(plugin, name), True)


class Chain:
    """An ordered set of plugins plus per-route plans.

    A plan is the set of plugin instances that governs one (transport, method, route); it is
    computed once by `resolver` (config decides overrides and disabled plugins) and cached. Route
    labels are bounded by construction, so the cache is too.
    """

    __slots__ = ("plugins", "_resolver", "_plans", "_on_reject")

    def __init__(self, plugins: list[Plugin], resolver: Any = None, on_reject: RejectListener = None) -> None:
        self.plugins: tuple[Plugin, ...] = tuple(plugins)
        # resolver(transport, method, route) -> tuple[Plugin, ...]; default: every plugin everywhere.
        self._resolver = resolver
        # (transport, route) -> method -> plan; nested so the per-call lookup builds no key tuple.
        self._plans: dict[str, dict[str, dict[str, Plan]]] = {"http": {}, "grpc": {}}
        self._on_reject = on_reject

    def plan(self, transport: str, method: str, route: str) -> Plan:
        by_route = self._plans.get(transport)
        by_method = by_route.get(route) if by_route is not None else None
        plan = by_method.get(method) if by_method is not None else None
        if plan is None:
            plugins = self.plugins if self._resolver is None else tuple(self._resolver(transport, method, route))
            plan = Plan(plugins, transport, method, route)
            self._plans.setdefault(transport, {}).setdefault(route, {})[method] = plan
        return plan

    def _unwind_outcome(self, call: Call, exc: BaseException) -> Outcome:
        """How a call refused (or broken) in `before` ends for the plugins already admitted."""
        if isinstance(exc, Rejection):
            if self._on_reject is not None:
                self._on_reject(call, exc)
            return Outcome(REJECTED, rejection_status(call.transport, exc), time.perf_counter() - call.start)
        return Outcome(FAILURE, "UNKNOWN", time.perf_counter() - call.start)

    async def admit(self, call: Call, plan: Plan) -> None:
        """Run every `before`; on a rejection, unwind the plugins already admitted, then re-raise.

        Any exception from a `before` (a bug in a plugin included) unwinds the same way, so no
        plugin is left holding an in-flight slot.
        """
        done = 0
        try:
            for fn, is_async in plan.befores:
                if is_async:
                    await fn(call)
                else:
                    refused = fn(call)
                    if refused is not None and isinstance(refused, Rejection):  # other values: admitted
                        raise refused.copy()
                done += 1
        except BaseException as exc:
            await self.release(call, plan, self._unwind_outcome(call, exc), done)
            raise

    async def release(self, call: Call, plan: Plan, outcome: Outcome, admitted: int | None = None) -> None:
        """Run the `after` hooks of the first `admitted` plugins (default all), last plugin first.
        One failing `after` must not skip the others."""
        afters = plan.afters if admitted is None else plan.afters[len(plan.afters) - admitted:]
        error: BaseException | None = None
        for fn, is_async in afters:
            try:
                if is_async:
                    await fn(call, outcome)
                else:
                    fn(call, outcome)
            except Exception as exc:  # noqa: BLE001 - keep releasing; re-raise the first at the end
                if error is None:
                    error = exc
        if error is not None:
            raise error

    # -- the same two steps without a coroutine, for plans where `plan.sync` is true -------------
    def admit_sync(self, call: Call, plan: Plan) -> None:
        """`admit` for an all-sync plan; same unwinding on rejection or error."""
        refused = self.try_admit_sync(call, plan)
        if refused is not None:
            raise refused.copy()

    def try_admit_sync(self, call: Call, plan: Plan) -> Rejection | None:
        """`admit_sync` that hands a refusal back instead of raising it (what adapters use: with
        plugins that return their refusals, a refused call raises nothing at all). The plugins
        admitted before the refusal are unwound as in `admit`; other exceptions still propagate."""
        done = 0
        try:
            for fn in plan.sync_befores:
                refused = fn(call)
                if refused is not None and isinstance(refused, Rejection):  # other values: admitted
                    self._refused(call, plan, refused, done)
                    return refused
                done += 1
        except Rejection as refused:
            self._refused(call, plan, refused, done)
            return refused
        except BaseException as exc:
            self.release_sync(call, plan, self._unwind_outcome(call, exc), done)
            raise
        return None

    def _refused(self, call: Call, plan: Plan, refused: Rejection, admitted: int) -> None:
        if self._on_reject is not None:
            self._on_reject(call, refused)
        if admitted:
            self.release_sync(call, plan, Outcome(REJECTED, rejection_status(call.transport, refused),
                                                  time.perf_counter() - call.start), admitted)

    def refuse_early(self, call: Call, plan: Plan, refusal: Rejection) -> Rejection:
        """Account for `refusal`, which `plan.early`'s plugin gave before the call was started: the
        plugins ahead of it see the call admitted, then REJECTED, as when that plugin's `before`
        refuses (one of them refusing first wins, as it would have). Returns the refusal to reply with."""
        index = plan.early[0] if plan.early is not None else 0
        befores, done = plan.befores, 0
        try:
            while done < index:
                refused = befores[done][0](call)
                if refused is not None and isinstance(refused, Rejection):
                    refusal = refused
                    break
                done += 1
        except Rejection as exc:
            refusal = exc
        except BaseException as exc:
            self.release_sync(call, plan, self._unwind_outcome(call, exc), done, plan.early_afters)
            raise
        if self._on_reject is not None:
            self._on_reject(call, refusal)
        if done:
            self.release_sync(call, plan, Outcome(REJECTED, rejection_status(call.transport, refusal),
                                                  time.perf_counter() - call.start), done, plan.early_afters)
        return refusal

    def release_sync(self, call: Call, plan: Plan, outcome: Outcome, admitted: int | None = None,
                     hooks: tuple[Any, ...] | None = None) -> None:
        """`release` for an all-sync plan (or, given `hooks`, for those sync after hooks: a plan's
        early_afters); one failing hook does not skip the others."""
        afters = plan.sync_afters if hooks is None else hooks
        if admitted is not None:
            afters = afters[len(afters) - admitted:]
        error: BaseException | None = None
        for fn in afters:
            try:  # free in CPython >= 3.11 unless something raises
                fn(call, outcome)
            except Exception as exc:  # noqa: BLE001 - keep releasing; re-raise the first at the end
                if error is None:
                    error = exc
        if error is not None:
            raise error
