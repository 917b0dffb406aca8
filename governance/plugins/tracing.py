"""One SERVER span per call (HTTP or gRPC), parented on the caller's W3C trace context.

The span is made current in `before` and ended/detached in `after`, which the adapters run in
the same task, so everything the handler does (DB, Kafka produce) nests under it. Unsampled
spans skip attribute work entirely.
"""

from __future__ import annotations

from random import getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from pydantic import ConfigDict, Field

from governance.core import FAILURE, Call, Outcome
from governance.plugins import PluginContext
from governance.tracing import PAIRS_GETTER, TracingSettings, setup_tracing

SERVER_SCOPE = "governance.server"

# Header names (ASGI bytes, gRPC str) that may carry a remote context for the W3C propagators.
_CONTEXT_KEYS = frozenset({b"traceparent", b"tracestate", b"baggage", "traceparent", "tracestate", "baggage"})
_SPAN = "otel.span"
_TOKEN = "otel.token"


class TracingPluginSettings(TracingSettings):
    model_config = ConfigDict(extra="forbid")
    setup: bool = Field(False, description="build a provider from these settings (else use the host's)")


class _PresetIds(IdGenerator):
    """Wraps the provider's RandomIdGenerator; hands out one pre-drawn trace id when preset."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self.preset: int | None = None

    def generate_span_id(self) -> int:
        return self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        preset, self.preset = self.preset, None
        return preset if preset is not None else self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return self.inner.is_trace_id_random()


class _FastRoots:
    """Cheap unsampled root spans under ParentBased(TraceIdRatioBased(r)), the setup_tracing default.

    The SDK spends most of a dropped span's cost on sampler plumbing. Here the trace id is drawn
    first and tested exactly as TraceIdRatioBased tests it: a dropped id becomes a NonRecordingSpan
    directly (same ids, flags and propagation as the SDK's); a sampled id is handed to the SDK through
    the tracer's id generator, so sampled spans are the SDK's own, at the configured ratio.
    """

    __slots__ = ("bound", "ids", "flags")

    def __init__(self, bound: int, ids: _PresetIds) -> None:
        self.bound, self.ids = bound, ids
        self.flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT)

    @classmethod
    def for_tracer(cls, tracer: Any) -> _FastRoots | None:
        sampler = getattr(tracer, "sampler", None)
        root = getattr(sampler, "_root", None)
        ids = getattr(tracer, "id_generator", None)
        if not (isinstance(tracer, SdkTracer) and isinstance(sampler, ParentBased)
                and type(root) is TraceIdRatioBased and type(ids) is RandomIdGenerator):
            return None
        preset = _PresetIds(ids)
        tracer.id_generator = preset
        return cls(root.bound, preset)

    def root_span(self, tracer: Any, name: str) -> Any:
        trace_id = getrandbits(128)
        while not trace_id:
            trace_id = getrandbits(128)
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self.bound:
            self.ids.preset = trace_id
            return tracer.start_span(name, kind=SpanKind.SERVER)
        span_id = getrandbits(64)
        while not span_id:
            span_id = getrandbits(64)
        return NonRecordingSpan(SpanContext(trace_id, span_id, False, self.flags))


def _grpc_code_value(name: str) -> int:
    import grpc

    try:
        return grpc.StatusCode[name].value[0]
    except KeyError:
        return 2  # UNKNOWN


class TracingPlugin:
    name = "tracing"

    def __init__(self, ctx: PluginContext, settings: TracingPluginSettings | None = None) -> None:
        self.settings = s = settings or TracingPluginSettings()
        self._own_provider = None
        provider = ctx.tracer_provider
        if s.setup:
            provider = self._own_provider = setup_tracing(s, service_name=ctx.service_name)
        self._tracer = trace.get_tracer(SERVER_SCOPE, tracer_provider=provider)
        self._names: dict[tuple[str, str, str], str] = {}
        self._fast = _FastRoots.for_tracer(self._tracer)

    @classmethod
    def from_config(cls, settings: dict[str, Any], ctx: PluginContext) -> TracingPlugin:
        return cls(ctx, TracingPluginSettings(**settings))

    def derive(self, overrides: dict[str, Any], label: str) -> TracingPlugin:
        raise ValueError("tracing has no per-route settings; use {'enabled': false} to skip a route")

    def _span_name(self, call: Call) -> str:
        key = (call.transport, call.method, call.route)
        name = self._names.get(key)
        if name is None:
            name = f"{call.method} {call.route}" if call.transport == "http" else call.route.lstrip("/")
            self._names[key] = name
        return name

    async def before(self, call: Call) -> None:
        self.before_sync(call)

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.after_sync(call, outcome)

    def before_sync(self, call: Call) -> None:
        carrier = call.attributes.get("carrier")
        parent = None
        if carrier:
            # Most calls carry no context; skip the propagators' three header scans for them.
            for k, _ in carrier:
                if k in _CONTEXT_KEYS:
                    parent = propagate.extract(carrier, getter=PAIRS_GETTER)
                    break
        fast = self._fast
        # An empty current context (the norm: each request runs in a fresh task) has no span in it.
        if fast is not None and parent is None and (
                not otel_context.get_current() or not trace.get_current_span().get_span_context().is_valid):
            span = fast.root_span(self._tracer, self._span_name(call))
        else:
            span = self._tracer.start_span(self._span_name(call), context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            if call.transport == "http":
                span.set_attribute("http.request.method", call.method)
                span.set_attribute("http.route", call.route)
            else:
                service, _, method = call.route.lstrip("/").partition("/")
                span.set_attribute("rpc.system", "grpc")
                span.set_attribute("rpc.service", service)
                span.set_attribute("rpc.method", method)
        attrs = call.attributes
        attrs[_SPAN] = span
        attrs[_TOKEN] = otel_context.attach(trace.set_span_in_context(span, parent))

    def after_sync(self, call: Call, outcome: Outcome) -> None:
        attrs = call.attributes
        span = attrs.pop(_SPAN, None)
        token = attrs.pop(_TOKEN, None)
        if span is None:
            return
        if span.is_recording():
            if call.transport == "http":
                span.set_attribute("http.response.status_code", outcome.status)
            else:
                span.set_attribute("rpc.grpc.status_code", _grpc_code_value(str(outcome.status)))
            if outcome.kind == FAILURE:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        if token is not None:
            otel_context.detach(token)

    async def aclose(self) -> None:
        if self._own_provider is not None:
            self._own_provider.shutdown()
