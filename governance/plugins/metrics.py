"""Request metrics: OTel-style HTTP histogram and the go-grpc-prometheus gRPC family.

Names follow the design so off-the-shelf dashboards work: the HTTP histogram uses OTel's default
bucket boundaries, and the gRPC family uses go-grpc-prometheus names, labels and code spellings
("OK", "InvalidArgument", ...). Children are cached per route and the families are the lock-free
ones from `governance._fastmetrics`, so the hot path is a dict lookup and plain arithmetic. Latency
observations of sampled calls carry the trace id as an OpenMetrics exemplar.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from governance._fastmetrics import FastCounter, FastGauge, FastHistogram
from governance._prom import metric
from governance.core import Call, Outcome, Rejection, Token
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


class _HttpToken:
    """The token of every call to one (method, route): its in-flight gauge and duration children."""

    __slots__ = ("active", "by_status", "family", "method", "route")

    def __init__(self, plugin: MetricsPlugin, method: str, route: str) -> None:
        self.active = plugin.http_active.labels(method, route)
        self.family, self.method, self.route = plugin.http_duration, method, route
        self.by_status: dict[int | str, Any] = {}

    def release(self, outcome: Outcome) -> None:
        self.active.value -= 1
        child = self.by_status.get(outcome.status)
        if child is None:
            child = self.by_status[outcome.status] = self.family.labels(self.method, self.route, str(outcome.status))
        child.observe(outcome.duration, outcome.call.trace_id)


class _GrpcToken:
    __slots__ = ("started", "seconds", "rx", "tx", "handled", "family", "labels")

    def __init__(self, plugin: MetricsPlugin, rpc_type: str, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").partition("/")
        self.labels = labels = (rpc_type, service or "unknown", method or "unknown")
        self.started = plugin.grpc_started.labels(*labels)
        self.seconds = plugin.grpc_seconds.labels(*labels)
        self.rx = plugin.grpc_rx.labels(*labels)
        self.tx = plugin.grpc_tx.labels(*labels)
        self.family = plugin.grpc_handled
        self.handled: dict[str, Any] = {}

    def release(self, outcome: Outcome) -> None:
        code = str(outcome.status)
        child = self.handled.get(code)
        if child is None:
            child = self.handled[code] = self.family.labels(*self.labels, GO_GRPC_CODES.get(code, code))
        child.value += 1
        call = outcome.call
        self.seconds.observe(outcome.duration, call.trace_id)
        self.rx.value += call.msgs_in
        self.tx.value += call.msgs_out


class MetricsPlugin:
    """Records every call, including ones a later plugin rejected (they show as 429/503 etc.)."""

    name = "metrics"

    def __init__(self, ctx: PluginContext, settings: MetricsSettings | None = None) -> None:
        s = settings or MetricsSettings()
        reg = ctx.registry
        self.http_duration = metric(
            reg, FastHistogram, "http_server_request_duration_seconds", "Duration of HTTP server requests.",
            ("method", "route", "status_code"), buckets=s.http_buckets)
        self.http_active = metric(
            reg, FastGauge, "http_server_active_requests", "Number of active HTTP server requests.",
            ("method", "route"))
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = metric(
            reg, FastCounter, "grpc_server_started", "Total number of RPCs started on the server.", grpc_labels)
        self.grpc_handled = metric(
            reg, FastCounter, "grpc_server_handled", "Total number of RPCs completed on the server, regardless "
            "of success or failure.", (*grpc_labels, "grpc_code"))
        self.grpc_seconds = metric(
            reg, FastHistogram, "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
            "that had been application-level handled by the server.", grpc_labels, buckets=s.grpc_buckets)
        self.grpc_rx = metric(
            reg, FastCounter, "grpc_server_msg_received", "Total number of RPC stream messages received on the "
            "server.", grpc_labels)
        self.grpc_tx = metric(
            reg, FastCounter, "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
            grpc_labels)
        # (transport, method, route) -> the token for its calls; route labels are bounded.
        self._tokens: dict[tuple[str, str, str], _HttpToken | _GrpcToken] = {}

    def _token(self, call: Call) -> _HttpToken | _GrpcToken:
        key = (call.transport, call.method, call.route)
        token = self._tokens.get(key)
        if token is None:
            token = self._tokens[key] = _HttpToken(self, call.method, call.route) if call.transport == "http" \
                else _GrpcToken(self, call.method, call.route)
        return token

    def admit(self, call: Call) -> Token:
        token = self._token(call)
        if isinstance(token, _HttpToken):
            token.active.value += 1
        else:
            token.started.value += 1
        return token


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> MetricsPlugin:
    return MetricsPlugin(ctx, MetricsSettings(**settings))


class DecisionMetrics:
    """Governance decisions as metrics; owned by the facade so they exist whatever plugins run."""

    def __init__(self, ctx: PluginContext) -> None:
        # Lock-free like the request metrics: under overload this counts hundreds of calls a second.
        self._rejections = metric(
            ctx.registry, FastCounter, "governance_rejections",
            "Calls refused by a governance plugin, by plugin and reason.", ("plugin", "reason", "transport"))
        self._children: dict[tuple[str, str, str], Any] = {}

    def on_reject(self, call: Call, rej: Rejection) -> None:
        key = (rej.plugin, rej.reason, call.transport)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._rejections.labels(*key)
        child.value += 1
