"""One SERVER span per call (HTTP or gRPC), parented on the caller's W3C trace context.

The span is made current on admission and ended (and the context detached) on release, which the
adapters run in the same task, so everything the handler does (DB, Kafka produce) nests under it.
Only the SDK's own spans and the API's context functions are used; with a provider from
`setup_tracing` an unsampled call gets its NonRecordingSpan without the SDK's span machinery
(governance.spans). A sampled call's trace id is left on the call for the metrics plugin's exemplars.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, format_trace_id
from pydantic import ConfigDict, Field

from governance.core import FAILURE, Call, Outcome, Token
from governance.plugins import PluginContext
from governance.spans import SpanStarter
from governance.tracing import PAIRS_GETTER, TracingSettings, setup_tracing

SERVER_SCOPE = "governance.server"

# Header names (ASGI bytes, gRPC str) that may carry a remote context for the W3C propagators.
_CONTEXT_KEYS = frozenset({b"traceparent", b"tracestate", b"baggage", "traceparent", "tracestate", "baggage"})


class TracingPluginSettings(TracingSettings):
    model_config = ConfigDict(extra="forbid")
    setup: bool = Field(False, description="build a provider from these settings (else use the host's)")


def _grpc_code_value(name: str) -> int:
    import grpc

    try:
        return int(grpc.StatusCode[name].value[0])
    except KeyError:
        return 2  # UNKNOWN


class _SpanToken:
    __slots__ = ("span", "attached")

    def __init__(self, span: trace.Span, attached: object) -> None:
        self.span, self.attached = span, attached

    def release(self, outcome: Outcome) -> None:
        span = self.span
        if span.is_recording():
            if outcome.call.transport == "http":
                span.set_attribute("http.response.status_code", outcome.status)
            else:
                span.set_attribute("rpc.grpc.status_code", _grpc_code_value(str(outcome.status)))
            if outcome.kind is FAILURE:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(self.attached)  # type: ignore[arg-type]


class _ContextToken:
    """An unsampled call's token: its span records nothing, so ending it is only leaving its context."""

    __slots__ = ("attached",)

    def __init__(self, attached: object) -> None:
        self.attached = attached

    def release(self, outcome: Outcome) -> None:
        otel_context.detach(self.attached)  # type: ignore[arg-type]


class TracingPlugin:
    name = "tracing"

    def __init__(self, ctx: PluginContext, settings: TracingPluginSettings | None = None) -> None:
        self.settings = s = settings or TracingPluginSettings()
        provider = ctx.tracer_provider
        if s.setup:
            own = provider = setup_tracing(s, service_name=ctx.service_name)

            async def shutdown() -> None:
                own.shutdown()

            ctx.closers.append(shutdown)
        self._tracer = trace.get_tracer(SERVER_SCOPE, tracer_provider=provider)
        self._starter = SpanStarter.for_provider(provider or trace.get_tracer_provider(), self._tracer)
        self._shapes: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}

    def _span_shape(self, call: Call) -> tuple[str, dict[str, Any]]:
        """Span name and start attributes of a (transport, method, route), built once. The SDK copies
        the attributes into each span, so the cached dict is never shared with one."""
        key = (call.transport, call.method, call.route)
        shape = self._shapes.get(key)
        if shape is None:
            if call.transport == "http":
                shape = (f"{call.method} {call.route}",
                         {"http.request.method": call.method, "http.route": call.route})
            else:
                service, _, method = call.route.lstrip("/").partition("/")
                shape = (call.route.lstrip("/"), {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})
            self._shapes[key] = shape
        return shape

    def admit(self, call: Call) -> Token:
        # The current context, read once and passed explicitly (the sampler and the span would each
        # look it up again); most calls carry no remote context: skip the propagators' header scans.
        parent = otel_context.get_current()
        for k, _ in call.carrier:
            if k in _CONTEXT_KEYS:
                parent = propagate.extract(call.carrier, getter=PAIRS_GETTER, context=parent)
                break
        name, attributes = self._span_shape(call)
        if self._starter is not None:
            span = self._starter.start(name, parent, attributes)
        else:
            span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        attached = otel_context.attach(trace.set_span_in_context(span, parent))
        if not span.is_recording():
            return _ContextToken(attached)
        span_context = span.get_span_context()
        if span_context.trace_flags.sampled:
            call.trace_id = format_trace_id(span_context.trace_id)
        return _SpanToken(span, attached)


def create(settings: dict[str, Any], ctx: PluginContext, label: str) -> TracingPlugin:
    if label != "default":
        raise ValueError("tracing has no per-route settings; use {'enabled': false} to skip a route")
    return TracingPlugin(ctx, TracingPluginSettings(**settings))
