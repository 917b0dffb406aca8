"""LightSpan must export what the SDK's own span exports for the same calls, and step aside
whenever a span processor could observe a span before it ends."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry

from governance._light_span import LightRecorder, LightSpan
from governance.core import SUCCESS, Call, Outcome
from governance.plugins import PluginContext
from governance.plugins.tracing import TracingPlugin

START = {"http.request.method": "GET", "http.route": "/r"}
LINKED = SpanContext(0xABC, 0xDEF, True, TraceFlags(1))


def _provider(limits: SpanLimits | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits) if limits else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _exercise(span: Any, error: Exception) -> None:
    span.set_attribute("http.response.status_code", 503)
    span.set_attribute("http.route", "/r2")  # rewritten key
    span.set_attributes({"tags": ["a", "b"], "ratio": 0.5, "flag": True})  # a list is cleaned to a tuple
    span.add_event("retry", {"attempt": 2})
    span.add_link(LINKED, {"kind": "batch"})
    span.record_exception(error)
    span.update_name("GET /r renamed")
    span.set_status(Status(StatusCode.ERROR, "boom"))
    span.set_status(StatusCode.UNSET)  # ignored
    span.end()
    span.set_attribute("late", 1)  # ignored after end
    span.end()  # second end ignored


def _shape(span: Any) -> dict[str, Any]:
    return {
        "name": span.name, "kind": span.kind, "parent": span.parent, "attributes": dict(span.attributes),
        "dropped_attributes": span.dropped_attributes, "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "events": [(e.name, {k: v for k, v in e.attributes.items() if k != "exception.stacktrace"})
                   for e in span.events],
        "links": [(link.context, dict(link.attributes)) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "sampled": span.context.trace_flags.sampled, "ordered": span.start_time <= span.end_time,
    }


@pytest.mark.parametrize("limits", [None, SpanLimits(max_span_attributes=4, max_attribute_length=3, max_events=1)])
def test_light_span_exports_what_the_sdk_span_exports(limits: SpanLimits | None,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = _provider(limits)
    tracer = provider.get_tracer("governance.server")
    error = ValueError("no such account")
    _exercise(tracer.start_span("GET /r", kind=SpanKind.SERVER, attributes=START), error)
    recorder = LightRecorder.for_tracer(tracer)
    assert recorder is not None and recorder.usable()
    light = recorder.start("GET /r", SpanContext(0x1234, 0x5678, False, TraceFlags(TraceFlags.SAMPLED)), START)
    with caplog.at_level(logging.WARNING):
        _exercise(light, error)
    sdk_span, light_span = exporter.get_finished_spans()
    assert _shape(light_span) == _shape(sdk_span)
    assert light_span.context.trace_id == 0x1234 and light_span.context.span_id == 0x5678
    assert "ended span" in caplog.text  # the late calls were refused, as the SDK refuses them


def test_light_span_reads_like_the_current_span() -> None:
    provider, _ = _provider()
    recorder = LightRecorder.for_tracer(provider.get_tracer("x"))
    assert recorder is not None
    span = recorder.start("GET /r", SpanContext(1, 2, False, TraceFlags(1)), START)
    span.set_attribute("n", 1)
    assert span.is_recording() and span.name == "GET /r" and span.attributes["n"] == 1
    assert START == {"http.request.method": "GET", "http.route": "/r"}  # the shared dict is not written
    span.end()
    assert not span.is_recording() and span.end_time is not None


class _StartWatcher(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span.name)


def test_a_processor_that_watches_starts_gets_sdk_spans_even_when_added_later() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugin = TracingPlugin(PluginContext(CollectorRegistry(), "t", tracer_provider=provider))
    outcome = Outcome(SUCCESS, 200, 0.001)

    def one_call() -> Any:
        call = Call("http", "/r", "GET", None, 0.0)
        call.attributes["carrier"] = []
        plugin.before_sync(call)
        span = call.attributes["otel.span"]
        plugin.after_sync(call, outcome)
        return span

    assert isinstance(one_call(), LightSpan)
    watcher = _StartWatcher()
    provider.add_span_processor(watcher)
    assert not isinstance(one_call(), LightSpan)
    assert watcher.started == ["GET /r"]
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /r", "GET /r"]
    assert all(s.attributes["http.response.status_code"] == 200 for s in exporter.get_finished_spans())


def test_work_in_the_handler_nests_under_a_light_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plugin = TracingPlugin(PluginContext(CollectorRegistry(), "t", tracer_provider=provider))
    call = Call("http", "/r", "GET", None, 0.0)
    call.attributes["carrier"] = []
    plugin.before_sync(call)
    assert isinstance(call.attributes["otel.span"], LightSpan)
    with provider.get_tracer("app").start_as_current_span("db.query"):
        pass
    plugin.after_sync(call, Outcome(SUCCESS, 200, 0.001))
    child, server = exporter.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id and child.context.trace_flags.sampled
