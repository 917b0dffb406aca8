"""Request metrics: OTel-style HTTP histogram and the go-grpc-prometheus gRPC family.

Names follow the design so off-the-shelf dashboards work: the HTTP histogram uses OTel's default
bucket boundaries, and the gRPC family uses go-grpc-prometheus names, labels and code spellings
("OK", "InvalidArgument", ...). Children are cached per route and the families are the lock-free
ones from `governance._fastmetrics`, so the hot path is two dict lookups and plain arithmetic.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from governance._fastmetrics import FastCounter, FastGauge, FastHistogram
from governance._prom import metric
from governance.core import Call, Outcome
from governance.plugins import PluginContext

# OTel semantic-conventions default for http.server.request.duration, in seconds.
OTEL_HTTP_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# prometheus DefBuckets, which go-grpc-prometheus uses for grpc_server_handling_seconds.
GRPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Python's grpc.StatusCode names -> Go's codes.Code.String(), which go-grpc-prometheus exports.
GO_GRPC_CODES = {
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    http_buckets: tuple[float, ...] = OTEL_HTTP_BUCKETS
    grpc_buckets: tuple[float, ...] = GRPC_BUCKETS


class _HttpRoute:
    """Cached children for one (route, method): the in-flight gauge and a histogram per status."""

    __slots__ = ("active", "by_status", "family", "method", "route")

    def __init__(self, plugin: MetricsPlugin, method: str, route: str) -> None:
        self.active = plugin._http_active.labels(method, route)
        self.family, self.method, self.route = plugin._http_duration, method, route
        self.by_status: dict[int | str, Any] = {}

    def duration(self, status: int | str) -> Any:
        child = self.by_status.get(status)
        if child is None:
            child = self.by_status[status] = self.family.labels(self.method, self.route, str(status))
        return child


class _GrpcMethod:
    __slots__ = ("started", "seconds", "rx", "tx", "handled", "family", "labels")

    def __init__(self, plugin: MetricsPlugin, rpc_type: str, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.labels = labels = (rpc_type, service or "unknown", method or "unknown")
        self.started = plugin._grpc_started.labels(*labels)
        self.seconds = plugin._grpc_seconds.labels(*labels)
        self.rx = plugin._grpc_rx.labels(*labels)
        self.tx = plugin._grpc_tx.labels(*labels)
        self.family = plugin._grpc_handled
        self.handled: dict[str, Any] = {}

    def handled_child(self, code: str) -> Any:
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self.family.labels(*self.labels, GO_GRPC_CODES.get(code, code))
        return child


class MetricsPlugin:
    """Records every call, including ones a later plugin rejected (they show as 429/503 etc.)."""

    name = "metrics"

    def __init__(self, ctx: PluginContext, settings: MetricsSettings | None = None) -> None:
        s = settings or MetricsSettings()
        reg = ctx.registry
        self._ctx, self._settings = ctx, s
        self._http_duration = metric(
            reg, FastHistogram, "http_server_request_duration_seconds", "Duration of HTTP server requests.",
            ("method", "route", "status_code"), buckets=s.http_buckets)
        self._http_active = metric(
            reg, FastGauge, "http_server_active_requests", "Number of active HTTP server requests.",
            ("method", "route"))
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self._grpc_started = metric(
            reg, FastCounter, "grpc_server_started", "Total number of RPCs started on the server.", grpc_labels)
        self._grpc_handled = metric(
            reg, FastCounter, "grpc_server_handled", "Total number of RPCs completed on the server, regardless "
            "of success or failure.", (*grpc_labels, "grpc_code"))
        self._grpc_seconds = metric(
            reg, FastHistogram, "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
            "that had been application-level handled by the server.", grpc_labels, buckets=s.grpc_buckets)
        self._grpc_rx = metric(
            reg, FastCounter, "grpc_server_msg_received", "Total number of RPC stream messages received on the "
            "server.", grpc_labels)
        self._grpc_tx = metric(
            reg, FastCounter, "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
            grpc_labels)
        # route -> method -> cached children; nested so a lookup allocates no key tuple.
        self._http: dict[str, dict[str, _HttpRoute]] = {}
        self._grpc: dict[str, dict[str, _GrpcMethod]] = {}

    @classmethod
    def from_config(cls, settings: dict[str, Any], ctx: PluginContext) -> MetricsPlugin:
        return cls(ctx, MetricsSettings(**settings))

    def derive(self, overrides: dict[str, Any], label: str) -> MetricsPlugin:
        # Collectors are per registry, so a variant only differs in nothing that matters per route.
        return self

    def _http_route(self, method: str, route: str) -> _HttpRoute:
        by_method = self._http.get(route)
        if by_method is None:
            by_method = self._http[route] = {}
        rec = by_method.get(method)
        if rec is None:
            rec = by_method[method] = _HttpRoute(self, method, route)
        return rec

    def bind_sync(self, transport: str, method: str, route: str) -> tuple[Any, Any] | None:
        """HTTP hooks with the route's children captured, so a call looks nothing up but its status."""
        if transport != "http" or not route:
            return None
        rec = self._http_route(method, route)
        active, by_status, duration = rec.active, rec.by_status, rec.duration

        def before(call: Call) -> None:
            active.value += 1

        def after(call: Call, outcome: Outcome) -> None:
            active.value -= 1
            child = by_status.get(outcome.status)
            (child if child is not None else duration(outcome.status)).observe(outcome.duration)

        return before, after

    def _grpc_method(self, call: Call) -> _GrpcMethod:
        by_type = self._grpc.get(call.route)
        if by_type is None:
            by_type = self._grpc[call.route] = {}
        rec = by_type.get(call.method)
        if rec is None:
            rec = by_type[call.method] = _GrpcMethod(self, call.method, call.route)
        return rec

    # -- plugin protocol (sync fast path + the async protocol) -----------------------------------
    def before_sync(self, call: Call) -> None:
        if call.transport == "http":
            self._http_route(call.method, call.route).active.value += 1
        else:
            self._grpc_method(call).started.value += 1

    def after_sync(self, call: Call, outcome: Outcome) -> None:
        if call.transport == "http":
            rec = self._http_route(call.method, call.route)
            rec.active.value -= 1
            rec.duration(outcome.status).observe(outcome.duration)
            return
        g = self._grpc_method(call)
        g.handled_child(str(outcome.status)).value += 1
        g.seconds.observe(outcome.duration)
        if call.msgs_in:
            g.rx.value += call.msgs_in
        if call.msgs_out:
            g.tx.value += call.msgs_out

    async def before(self, call: Call) -> None:
        self.before_sync(call)

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.after_sync(call, outcome)


class DecisionMetrics:
    """Governance decisions as metrics; owned by the facade so they exist whatever plugins run."""

    def __init__(self, ctx: PluginContext) -> None:
        # Lock-free like the request metrics: under overload this counts hundreds of calls a second.
        self._rejections = metric(
            ctx.registry, FastCounter, "governance_rejections",
            "Calls refused by a governance plugin, by plugin and reason.", ("plugin", "reason", "transport"))
        self._children: dict[tuple[str, str, str], Any] = {}

    def on_reject(self, call: Call, rej: Any) -> None:
        key = (rej.plugin, rej.reason, call.transport)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._rejections.labels(*key)
        child.value += 1
