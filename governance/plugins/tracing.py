"""One SERVER span per call (HTTP or gRPC), parented on the caller's W3C trace context.

The span is made current in `before` and ended/detached in `after`, which the adapters run in
the same task, so everything the handler does (DB, Kafka produce) nests under it. Unsampled
spans skip attribute work entirely.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from random import getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from pydantic import ConfigDict, Field

from governance._light_span import LightRecorder
from governance.core import FAILURE, Call, Outcome
from governance.plugins import PluginContext
from governance.tracing import PAIRS_GETTER, TracingSettings, setup_tracing

log = logging.getLogger(__name__)
SERVER_SCOPE = "governance.server"

# Header names (ASGI bytes, gRPC str) that may carry a remote context for the W3C propagators.
_CONTEXT_KEYS = frozenset({b"traceparent", b"tracestate", b"baggage", "traceparent", "tracestate", "baggage"})
_SPAN = "otel.span"
# The context key under which the API keeps the current span, learnt through the public API once.
_CURRENT_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))
_TOKEN = "otel.token"


def _runtime_context_var() -> ContextVar[Any] | None:
    """The ContextVar behind the API's default runtime context, or None.

    otel_context.attach/get_current/detach are two Python calls deep each, for what is one
    ContextVar operation with the default (contextvars) runtime context: ~0.3 us per call here.
    Only that exact runtime context is short-circuited; any other one (OTEL_PYTHON_CONTEXT set to
    something else) goes through the public API.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    return var if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar) else None


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


def _trace_id(low: int) -> int:
    """A random high half over an already drawn low half; never 0, which is the invalid id."""
    while True:
        trace_id = getrandbits(64) << 64 | low
        if trace_id:
            return trace_id


def _span_id() -> int:
    while True:
        span_id = getrandbits(64)
        if span_id:
            return span_id


class _UnsampledRoot(NonRecordingSpan):
    """A dropped root span whose ids are drawn only if someone asks for its context.

    Most dropped requests never propagate their context (nothing downstream reads it), so drawing
    the ids and building the SpanContext up front is wasted. The low 64 bits of the trace id were
    already drawn by the sampling decision (and are >= the ratio bound, i.e. "not sampled" under
    TraceIdRatioBased); only the high half and the span id are drawn here.
    """

    def __init__(self, low: int, flags: TraceFlags) -> None:  # no super(): _context is filled lazily
        self._low, self._flags = low, flags
        self._context: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        ctx = self._context
        if ctx is None:
            ctx = self._context = SpanContext(_trace_id(self._low), _span_id(), False, self._flags)
        return ctx

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


class _FastRoots:
    """Cheap unsampled root spans under ParentBased(TraceIdRatioBased(r)), the setup_tracing default.

    The SDK spends most of a dropped span's cost on sampler plumbing and ids nobody reads.
    TraceIdRatioBased samples a trace exactly when its id's low 64 bits are below `bound`, so the
    decision is made here on those 64 bits alone (same probability, same ids as the SDK would
    accept): a dropped call gets an `_UnsampledRoot`; a sampled one gets a trace id made of a random
    high half and the drawn low half, so any downstream TraceIdRatioBased sampler with the same
    ratio agrees with the decision. The sampled span is a `LightSpan` when the provider's processors
    allow it (governance/_light_span.py), else the SDK's own span, started with that trace id
    through the tracer's id generator.
    """

    __slots__ = ("bound", "ids", "flags", "sampled_flags", "light")

    def __init__(self, bound: int, ids: _PresetIds, light: LightRecorder | None) -> None:
        self.bound, self.ids, self.light = bound, ids, light
        self.flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT)
        self.sampled_flags = TraceFlags(self.flags | TraceFlags.SAMPLED)

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
        return cls(root.bound, preset, LightRecorder.for_tracer(tracer))

    def sampled_root(self, tracer: Any, low: int, name: str, attributes: dict[str, Any]) -> Any:
        """The span of a root call whose draw `low` fell below the bound (see `TracingPlugin.before_sync`)."""
        trace_id = _trace_id(low)
        light = self.light
        if light is not None and light.usable():  # processors that only look at ended spans
            return light.start(name, SpanContext(trace_id, _span_id(), False, self.sampled_flags), attributes)
        self.ids.preset = trace_id
        return tracer.start_span(name, kind=SpanKind.SERVER, attributes=attributes)


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
        self._shapes: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
        self._fast = _FastRoots.for_tracer(self._tracer)
        self._context_var = _runtime_context_var()

    @classmethod
    def from_config(cls, settings: dict[str, Any], ctx: PluginContext) -> TracingPlugin:
        return cls(ctx, TracingPluginSettings(**settings))

    def derive(self, overrides: dict[str, Any], label: str) -> TracingPlugin:
        raise ValueError("tracing has no per-route settings; use {'enabled': false} to skip a route")

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

    async def before(self, call: Call) -> None:
        self.before_sync(call)

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.after_sync(call, outcome)

    def before_sync(self, call: Call) -> None:
        attrs = call.attributes
        carrier = attrs.get("carrier")
        parent = None
        if carrier:
            # Most calls carry no context; skip the propagators' three header scans for them.
            for k, _ in carrier:
                if k in _CONTEXT_KEYS:
                    parent = propagate.extract(carrier, getter=PAIRS_GETTER)
                    break
        var, fast = self._context_var, self._fast
        current = var.get() if var is not None else otel_context.get_current()
        # An empty current context (the norm: each request runs in a fresh task) has no span in it.
        if fast is not None and parent is None and (
                not current or not trace.get_current_span(current).get_span_context().is_valid):
            low = getrandbits(64)  # the trace id's low half, which TraceIdRatioBased decides on
            if low >= fast.bound:  # dropped (most calls): no name, no attributes, ids drawn lazily
                span: Any = _UnsampledRoot(low, fast.flags)
            else:
                span = attrs[_SPAN] = fast.sampled_root(self._tracer, low, *self._span_shape(call))
        else:
            name, attributes = self._span_shape(call)
            span = attrs[_SPAN] = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                                          attributes=attributes)
        if parent is None and not current:  # the usual fresh task: a one-entry context, no copying
            ctx = otel_context.Context({_CURRENT_SPAN_KEY: span})
        else:
            ctx = trace.set_span_in_context(span, parent if parent is not None else current)
        # Only a span to record or end is kept on the call (under _SPAN, set above); a dropped root
        # lives on in the context alone.
        attrs[_TOKEN] = var.set(ctx) if var is not None else otel_context.attach(ctx)

    def after_sync(self, call: Call, outcome: Outcome) -> None:
        attrs = call.attributes
        token = attrs.pop(_TOKEN, None)
        span = attrs.pop(_SPAN, None)  # absent for a dropped root: nothing to record or end
        if span is not None:
            if span.is_recording():
                if call.transport == "http":
                    span.set_attribute("http.response.status_code", outcome.status)
                else:
                    span.set_attribute("rpc.grpc.status_code", _grpc_code_value(str(outcome.status)))
                if outcome.kind == FAILURE:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
        if token is None:
            return
        var = self._context_var
        if var is None:
            otel_context.detach(token)
            return
        try:
            var.reset(token)
        except Exception:  # noqa: BLE001 - what otel_context.detach does: log, never break the call
            log.exception("Failed to detach context")

    async def aclose(self) -> None:
        if self._own_provider is not None:
            self._own_provider.shutdown()
