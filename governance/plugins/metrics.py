"""Request metrics: OTel-style HTTP histogram and the go-grpc-prometheus gRPC family.

Names follow the design so off-the-shelf dashboards work: the HTTP histogram uses OTel's default
bucket boundaries, and the gRPC family uses go-grpc-prometheus names, labels and code spellings
("OK", "InvalidArgument", ...). Labelled children are cached so the hot path is two dict lookups
and the observe itself.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict

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


class MetricsPlugin:
    """Records every call, including ones a later plugin rejected (they show as 429/503 etc.)."""

    name = "metrics"

    def __init__(self, ctx: PluginContext, settings: MetricsSettings | None = None) -> None:
        s = settings or MetricsSettings()
        reg = ctx.registry
        self._ctx, self._settings = ctx, s
        self._http_duration = metric(
            reg, Histogram, "http_server_request_duration_seconds", "Duration of HTTP server requests.",
            ("method", "route", "status_code"), buckets=s.http_buckets)
        self._http_active = metric(
            reg, Gauge, "http_server_active_requests", "Number of active HTTP server requests.",
            ("method", "route"))
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self._grpc_started = metric(
            reg, Counter, "grpc_server_started", "Total number of RPCs started on the server.", grpc_labels)
        self._grpc_handled = metric(
            reg, Counter, "grpc_server_handled", "Total number of RPCs completed on the server, regardless "
            "of success or failure.", (*grpc_labels, "grpc_code"))
        self._grpc_seconds = metric(
            reg, Histogram, "grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
            "that had been application-level handled by the server.", grpc_labels, buckets=s.grpc_buckets)
        self._grpc_rx = metric(
            reg, Counter, "grpc_server_msg_received", "Total number of RPC stream messages received on the "
            "server.", grpc_labels)
        self._grpc_tx = metric(
            reg, Counter, "grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
            grpc_labels)
        self._children: dict[Any, Any] = {}
        self._grpc_names: dict[tuple[str, str], tuple[str, str, str]] = {}

    @classmethod
    def from_config(cls, settings: dict[str, Any], ctx: PluginContext) -> MetricsPlugin:
        return cls(ctx, MetricsSettings(**settings))

    def derive(self, overrides: dict[str, Any], label: str) -> MetricsPlugin:
        # Collectors are per registry, so a variant only differs in nothing that matters per route.
        return self

    # -- label plumbing -------------------------------------------------------------------------
    def _grpc_labels(self, call: Call) -> tuple[str, str, str]:
        key = (call.method, call.route)
        labels = self._grpc_names.get(key)
        if labels is None:
            service, _, method = call.route.lstrip("/").partition("/")
            labels = (call.method, service or "unknown", method or "unknown")
            self._grpc_names[key] = labels
        return labels

    def _child(self, key: Any, family: Any, *labels: str) -> Any:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    # -- plugin protocol ------------------------------------------------------------------------
    async def before(self, call: Call) -> None:
        if call.transport == "http":
            self._child(("a", call.method, call.route), self._http_active, call.method, call.route).inc()
        else:
            labels = self._grpc_labels(call)
            self._child(("s", labels), self._grpc_started, *labels).inc()

    async def after(self, call: Call, outcome: Outcome) -> None:
        if call.transport == "http":
            method, route, status = call.method, call.route, outcome.status
            self._child(("a", method, route), self._http_active, method, route).dec()
            self._child(("h", method, route, status), self._http_duration, method, route,
                        str(status)).observe(outcome.duration)
            return
        labels = self._grpc_labels(call)
        code = GO_GRPC_CODES.get(str(outcome.status), str(outcome.status))
        self._child(("c", labels, code), self._grpc_handled, *labels, code).inc()
        self._child(("t", labels), self._grpc_seconds, *labels).observe(outcome.duration)
        if call.msgs_in:
            self._child(("r", labels), self._grpc_rx, *labels).inc(call.msgs_in)
        if call.msgs_out:
            self._child(("w", labels), self._grpc_tx, *labels).inc(call.msgs_out)


class DecisionMetrics:
    """Governance decisions as metrics; owned by the facade so they exist whatever plugins run."""

    def __init__(self, ctx: PluginContext) -> None:
        self._rejections = metric(
            ctx.registry, Counter, "governance_rejections",
            "Calls refused by a governance plugin, by plugin and reason.", ("plugin", "reason", "transport"))
        self._children: dict[tuple[str, str, str], Any] = {}

    def on_reject(self, call: Call, rej: Any) -> None:
        key = (rej.plugin, rej.reason, call.transport)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._rejections.labels(*key)
        child.inc()
