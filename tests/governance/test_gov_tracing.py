"""Tracing plugin and Kafka-header helpers with an in-memory exporter (no global provider touched)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from governance import Governance
from governance.spans import PresetIdGenerator
from governance.tracing import extract_context, inject_headers, producer_span, start_consumer_span
from tests.governance.gov_helpers import SERVICE, client_for, make_starlette, start_grpc, stop_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(params=["sdk-ids", "preset-ids"])
def ids(request: pytest.FixtureRequest) -> PresetIdGenerator | None:
    """Every provider twice: with the SDK's id generator the plugin leaves every span to the SDK;
    with setup_tracing's PresetIdGenerator it builds unsampled spans itself (governance.spans)."""
    return PresetIdGenerator() if request.param == "preset-ids" else None


@pytest.fixture
def spans(ids: PresetIdGenerator | None) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def gov_with(provider: TracerProvider) -> Governance:
    return Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "tracing"}]},
                                  registry=CollectorRegistry(), tracer_provider=provider)


async def test_one_server_span_per_http_request_parented_by_traceparent(spans) -> None:  # type: ignore[no-untyped-def]
    provider, exporter = spans
    gov = gov_with(provider)
    async with client_for(gov.asgi(make_starlette())) as http:
        await http.get("/v1/accounts/7/usage", headers={"traceparent": TRACEPARENT})
        await http.get("/boom")
    finished = exporter.get_finished_spans()
    assert len(finished) == 2  # no per-ASGI-message spans
    usage, boom = finished
    assert usage.name == "GET /v1/accounts/{id}/usage" and usage.kind == SpanKind.SERVER
    assert format(usage.context.trace_id, "032x") == TRACE_ID
    assert usage.parent is not None and format(usage.parent.span_id, "016x") == PARENT_ID
    assert usage.attributes["http.route"] == "/v1/accounts/{id}/usage"
    assert usage.attributes["http.response.status_code"] == 200
    assert boom.parent is None and boom.status.status_code == StatusCode.ERROR
    assert boom.attributes["http.response.status_code"] == 500


async def test_handler_work_nests_under_the_server_span(spans) -> None:  # type: ignore[no-untyped-def]
    provider, exporter = spans
    tracer = provider.get_tracer("app")

    async def work(request):  # type: ignore[no-untyped-def]
        with tracer.start_as_current_span("db.query"):
            pass
        return JSONResponse({})

    gov = gov_with(provider)
    async with client_for(gov.asgi(Starlette(routes=[Route("/w", work)]))) as http:
        await http.get("/w")
    db, server = exporter.get_finished_spans()
    assert db.parent is not None and db.parent.span_id == server.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached after the request


async def test_grpc_server_span_from_metadata(spans) -> None:  # type: ignore[no-untyped-def]
    provider, exporter = spans
    gov = gov_with(provider)
    env = await start_grpc(gov.grpc_interceptor())
    try:
        await env.unary()(b"x", metadata=(("traceparent", TRACEPARENT),))
        [m async for m in env.server_stream()(b"s")]
    finally:
        await stop_grpc(env)
    unary, stream = exporter.get_finished_spans()
    assert unary.name == f"{SERVICE}/Unary" and unary.kind == SpanKind.SERVER
    assert format(unary.context.trace_id, "032x") == TRACE_ID
    assert unary.attributes["rpc.system"] == "grpc" and unary.attributes["rpc.grpc.status_code"] == 0
    assert stream.parent is None and stream.attributes["rpc.method"] == "ServerStream"


async def test_trace_crosses_kafka_headers_into_consumer_span(spans) -> None:  # type: ignore[no-untyped-def]
    provider, exporter = spans
    captured: list[list[tuple[str, bytes]]] = []

    async def produce(request):  # type: ignore[no-untyped-def]
        headers: list[tuple[str, bytes]] = [("content-type", b"application/x-protobuf")]
        with producer_span("meterd.traffic.v1", headers, tracer_provider=provider):
            captured.append(headers)
        return JSONResponse({}, status_code=202)

    gov = gov_with(provider)
    async with client_for(gov.asgi(Starlette(routes=[Route("/v1/traffic", produce, methods=["POST"])]))) as http:
        await http.post("/v1/traffic", headers={"traceparent": TRACEPARENT})
    headers = captured[0]
    assert [k for k, _ in headers].count("traceparent") == 1 and headers[0][0] == "content-type"

    tracer = provider.get_tracer("consumer")
    with start_consumer_span("process meterd.traffic.v1", headers, tracer_provider=provider) as consumer:
        with tracer.start_as_current_span("db.upsert"):
            pass
        assert trace.get_current_span() is consumer
    with start_consumer_span("process batch", headers, link=True, tracer_provider=provider):
        pass

    by_name = {s.name: s for s in exporter.get_finished_spans()}
    server = by_name["POST /v1/traffic"]
    send = by_name["send meterd.traffic.v1"]
    process = by_name["process meterd.traffic.v1"]
    upsert = by_name["db.upsert"]
    linked = by_name["process batch"]
    assert {format(s.context.trace_id, "032x") for s in (server, send, process, upsert)} == {TRACE_ID}
    assert send.kind == SpanKind.PRODUCER and send.parent.span_id == server.context.span_id
    assert process.kind == SpanKind.CONSUMER and process.parent.span_id == send.context.span_id
    assert upsert.parent.span_id == process.context.span_id
    assert linked.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in linked.links] == [send.context.span_id]


def test_inject_replaces_stale_context_and_extract_handles_bytes() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    headers: list[tuple[str, bytes]] = [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")]
    with tracer.start_as_current_span("fresh") as span:
        inject_headers(headers)
    assert len(headers) == 1
    ctx = extract_context(headers)
    assert trace.get_current_span(ctx).get_span_context().span_id == span.get_span_context().span_id
    assert not trace.get_current_span(extract_context([])).get_span_context().is_valid


async def test_ratio_sampler_children_follow_parent_decision(ids: PresetIdGenerator | None) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gov = gov_with(provider)
    async with client_for(gov.asgi(make_starlette())) as http:
        for _ in range(20):
            await http.get("/hello")  # roots: ratio 0 -> never sampled
        await http.get("/hello", headers={"traceparent": TRACEPARENT})  # sampled parent -> sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /hello"]


async def test_unsampled_roots_keep_ratio_and_propagate_valid_context(ids: PresetIdGenerator | None) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: list[tuple[int, bool, str]] = []

    async def handler(request):  # type: ignore[no-untyped-def]
        ctx = trace.get_current_span().get_span_context()
        headers: list[tuple[str, bytes]] = []
        inject_headers(headers)
        seen.append((ctx.trace_id, ctx.trace_flags.sampled, dict(headers)["traceparent"].decode()))
        return JSONResponse({})

    gov = gov_with(provider)
    async with client_for(gov.asgi(Starlette(routes=[Route("/r", handler)]))) as http:
        for _ in range(600):
            await http.get("/r")
    exported = {s.context.trace_id for s in exporter.get_finished_spans()}
    sampled = {tid for tid, is_sampled, _ in seen if is_sampled}
    assert exported == sampled  # every sampled root was exported by the SDK itself
    assert 0.40 < len(sampled) / len(seen) < 0.60  # ratio 0.5, 600 draws: ~5 sigma margin
    bound = TraceIdRatioBased(0.5).bound
    for tid, is_sampled, traceparent in seen:
        assert tid != 0 and traceparent.split("-")[1] == format(tid, "032x")
        # the decision is the SDK's: a TraceIdRatioBased(0.5) anywhere downstream agrees with it
        assert (tid & TraceIdRatioBased.TRACE_ID_LIMIT < bound) == is_sampled
        assert bool(int(traceparent.split("-")[3], 16) & 1) == is_sampled


async def test_a_dropped_root_is_current_in_the_handler_and_propagates_unsampled(
        ids: PresetIdGenerator | None) -> None:
    """Dropped roots (the common case at low ratios): the handler must still see a valid,
    non-recording current span whose trace id goes out with the sampled flag off, and the context
    must be detached afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    seen: list[tuple[int, bool, bytes]] = []

    async def work(request):  # type: ignore[no-untyped-def]
        current = trace.get_current_span()
        headers: list[tuple[str, bytes]] = []
        inject_headers(headers)
        with tracer.start_as_current_span("db.query") as child:
            assert not child.is_recording() and child.get_span_context().trace_id == current.get_span_context().trace_id
        seen.append((current.get_span_context().trace_id, current.is_recording(), dict(headers)["traceparent"]))
        return JSONResponse({})

    gov = gov_with(provider)
    async with client_for(gov.asgi(Starlette(routes=[Route("/w", work)]))) as http:
        for _ in range(3):
            assert (await http.get("/w")).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert len({trace_id for trace_id, _, _ in seen}) == 3 and all(trace_id for trace_id, _, _ in seen)
    for trace_id, recording, traceparent in seen:
        assert not recording
        assert traceparent.decode().split("-")[1] == format(trace_id, "032x")
        assert int(traceparent.decode().split("-")[3], 16) & 1 == 0  # not sampled: downstream drops it too
    assert trace.get_current_span() is trace.INVALID_SPAN
    provider.shutdown()


async def test_an_unsampled_parent_propagates_sampled_0_and_a_sampled_parent_records_its_children(
        ids: PresetIdGenerator | None) -> None:
    """Remote parents under ParentBased: sampled=0 stays 0 downstream (same trace id, a span id of
    our own), nothing is recorded; sampled=1 gives a recorded server span and a recorded child."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    seen: list[tuple[bool, str]] = []

    async def work(request):  # type: ignore[no-untyped-def]
        headers: list[tuple[str, bytes]] = []
        with tracer.start_as_current_span("db.query") as child:
            inject_headers(headers)
            seen.append((child.is_recording(), dict(headers)["traceparent"].decode()))
        return JSONResponse({})

    gov = gov_with(provider)
    async with client_for(gov.asgi(Starlette(routes=[Route("/w", work)]))) as http:
        await http.get("/w", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
        await http.get("/w", headers={"traceparent": TRACEPARENT})
    (dropped, dropped_tp), (kept, kept_tp) = seen
    assert not dropped and dropped_tp.split("-")[1] == TRACE_ID and dropped_tp.endswith("-00")
    assert dropped_tp.split("-")[2] != PARENT_ID
    assert kept and kept_tp.split("-")[1] == TRACE_ID and kept_tp.endswith("-01")
    child, server = exporter.get_finished_spans()
    assert server.kind == SpanKind.SERVER and format(server.parent.span_id, "016x") == PARENT_ID
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    provider.shutdown()


async def test_with_preset_ids_the_sdk_builds_only_the_recorded_spans(
        ids: PresetIdGenerator | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import Tracer

    started: list[str] = []
    sdk_start_span = Tracer.start_span

    def counting(self, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.append(name)
        return sdk_start_span(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", counting)
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)), id_generator=ids)
    gov = gov_with(provider)
    async with client_for(gov.asgi(make_starlette())) as http:
        for _ in range(20):
            await http.get("/hello")  # dropped roots
        await http.get("/hello", headers={"traceparent": TRACEPARENT})  # recorded
    assert len(started) == (1 if ids is not None else 21)
    provider.shutdown()
