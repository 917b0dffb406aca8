"""OpenTelemetry setup and context propagation helpers (HTTP/gRPC carriers and Kafka headers).

`setup_tracing(settings)` is called once by a service: W3C tracecontext (+ baggage) propagation,
ParentBased(TraceIdRatioBased(ratio)) sampling, OTLP export (gRPC or HTTP/protobuf) through a
BatchSpanProcessor. Kafka headers travel as `list[tuple[str, bytes]]`; `inject_headers`,
`extract_context`, `producer_span` and `start_consumer_span` carry a trace across a topic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ConfigDict, Field

from governance.spans import PresetIdGenerator

INSTRUMENTATION = "governance"

__all__ = [
    "TracingSettings", "setup_tracing", "inject_headers", "extract_context", "producer_span",
    "start_consumer_span", "PAIRS_GETTER",
]


class TracingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratio: float = Field(1.0, ge=0.0, le=1.0, description="root sampling ratio; children follow the parent")
    exporter: Literal["otlp-grpc", "otlp-http", "none"] = "otlp-grpc"
    endpoint: str | None = Field(None, description="collector address; default from OTEL_EXPORTER_OTLP_* env")
    headers: dict[str, str] = Field(default_factory=dict)
    insecure: bool = True
    timeout: float = Field(10.0, gt=0)
    service_name: str | None = None
    set_global: bool = Field(True, description="install as the process-wide tracer provider")
    max_queue_size: int = 2048
    schedule_delay_millis: float = 5000
    max_export_batch_size: int = 512


def _exporter(s: TracingSettings) -> SpanExporter | None:
    if s.exporter == "none":
        return None
    if s.exporter == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        return GrpcExporter(endpoint=s.endpoint, insecure=s.insecure, headers=s.headers or None,
                            timeout=s.timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    endpoint = s.endpoint
    if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint, headers=s.headers or None, timeout=s.timeout)


def setup_tracing(settings: TracingSettings | dict[str, Any] | None = None, *, service_name: str = "meterd",
                  exporter: SpanExporter | None = None) -> TracerProvider:
    """Build (and by default install) the tracer provider. `exporter` overrides the OTLP one."""
    s = settings if isinstance(settings, TracingSettings) else TracingSettings(**(settings or {}))
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(s.ratio)),
        resource=Resource.create({SERVICE_NAME: s.service_name or service_name}),
        id_generator=PresetIdGenerator(),  # lets the tracing plugin skip the SDK for unsampled calls
    )
    exp = exporter if exporter is not None else _exporter(s)
    if exp is not None:
        provider.add_span_processor(BatchSpanProcessor(
            exp, max_queue_size=s.max_queue_size, schedule_delay_millis=s.schedule_delay_millis,
            max_export_batch_size=s.max_export_batch_size))
    # W3C trace context is the contract across HTTP, gRPC and Kafka; baggage rides along.
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    if s.set_global:
        trace.set_tracer_provider(provider)
    return provider


class _PairsGetter(Getter[Any]):
    """Reads (key, value) pairs: ASGI headers (bytes, bytes), gRPC metadata (str, str|bytes),
    Kafka headers (str, bytes). Keys compare case-insensitively."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        found = None
        for k, v in carrier:
            if isinstance(k, bytes):
                k = k.decode("latin-1")
            if k.lower() == key:
                if isinstance(v, bytes):
                    v = v.decode("latin-1")
                found = [v] if found is None else [*found, v]
        return found

    def keys(self, carrier: Any) -> list[str]:
        return [k.decode("latin-1") if isinstance(k, bytes) else k for k, _ in carrier]


PAIRS_GETTER = _PairsGetter()


def extract_context(headers: Iterable[tuple[Any, Any]] | None) -> Context:
    """The remote context in `headers` (Kafka/ASGI/gRPC pairs); an empty context if none."""
    if not headers:
        return Context()
    return propagate.extract(list(headers) if not isinstance(headers, Sequence) else headers,
                             getter=PAIRS_GETTER, context=Context())


def inject_headers(headers: MutableSequence[tuple[str, bytes]], context: Context | None = None) -> None:
    """Write the current (or given) trace context into Kafka-style headers, replacing stale entries."""
    fields: dict[str, str] = {}
    propagate.inject(fields, context=context)
    if not fields:
        return
    lowered = {k.lower() for k in fields}
    headers[:] = [(k, v) for k, v in headers if k.lower() not in lowered]
    headers.extend((k, v.encode()) for k, v in fields.items())


def _tracer(tracer_provider: Any = None) -> trace.Tracer:
    return trace.get_tracer(INSTRUMENTATION, tracer_provider=tracer_provider)


@contextlib.contextmanager
def producer_span(topic: str, headers: MutableSequence[tuple[str, bytes]], *, tracer_provider: Any = None,
                  attributes: dict[str, Any] | None = None) -> Iterator[trace.Span]:
    """A PRODUCER span (child of the current span) whose context is injected into `headers`."""
    attrs = {"messaging.system": "kafka", "messaging.operation.type": "send",
             "messaging.destination.name": topic, **(attributes or {})}
    with _tracer(tracer_provider).start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER,
                                                        attributes=attrs) as span:
        inject_headers(headers)
        yield span


@contextlib.contextmanager
def start_consumer_span(name: str, headers: Iterable[tuple[Any, Any]] | None, *, link: bool = False,
                        tracer_provider: Any = None, attributes: dict[str, Any] | None = None,
                        links: Sequence[Context] = ()) -> Iterator[trace.Span]:
    """A CONSUMER span, current while the block runs.

    By default it is a child of the producer's context found in `headers`. With `link=True` (batch
    processing of many messages) it starts a new trace and links to the producer context instead;
    `links` adds further producer contexts (e.g. every message of a batch).
    """
    parent = extract_context(headers)
    span_links = []
    for ctx in ([parent] if link else []) + list(links):
        sc = trace.get_current_span(ctx).get_span_context()
        if sc.is_valid:
            span_links.append(Link(sc))
    attrs = {"messaging.system": "kafka", "messaging.operation.type": "process", **(attributes or {})}
    with _tracer(tracer_provider).start_as_current_span(
            name, context=Context() if link else parent, kind=SpanKind.CONSUMER,
            links=span_links, attributes=attrs) as span:
        yield span
