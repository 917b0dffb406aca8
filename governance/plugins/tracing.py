"""One SERVER span per call (HTTP or gRPC), parented on the caller's W3C trace context.

The span is made current in `before` and ended/detached in `after`, which the adapters run in
the same task, so everything the handler does (DB, Kafka produce) nests under it. Unsampled
spans skip attribute work entirely.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ConfigDict, Field

from governance.core import FAILURE, Call, Outcome
from governance.plugins import PluginContext
from governance.tracing import INSTRUMENTATION, PAIRS_GETTER, TracingSettings, setup_tracing

_SPAN = "otel.span"
_TOKEN = "otel.token"


class TracingPluginSettings(TracingSettings):
    model_config = ConfigDict(extra="forbid")
    setup: bool = Field(False, description="build a provider from these settings (else use the host's)")


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
        self._tracer = trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)
        self._names: dict[tuple[str, str, str], str] = {}

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
        carrier = call.attributes.get("carrier")
        parent = propagate.extract(carrier, getter=PAIRS_GETTER) if carrier else None
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

    async def after(self, call: Call, outcome: Outcome) -> None:
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
