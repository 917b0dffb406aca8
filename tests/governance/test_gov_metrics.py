"""Scrape the exposition text after traffic on both transports: names, labels, buckets, counts."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from governance import Governance
from tests.governance.gov_helpers import client_for, make_starlette, start_grpc, stop_grpc


async def test_exposition_after_traffic(registry: CollectorRegistry) -> None:
    cfg = {"plugins": [{"type": "metrics"}, {"type": "adaptive", "tick": 0.01}, {"type": "breaker"},
                       {"type": "quota", "limit": "1000/minute"}]}
    gov = Governance.from_config(cfg, registry=registry)
    gov.outbound_breaker("kafka")
    env = await start_grpc(gov.grpc_interceptor())
    try:
        async with client_for(gov.asgi(make_starlette())) as http:
            for i in range(4):
                await http.get(f"/v1/accounts/{i}/usage")
            await http.get("/boom")
        for _ in range(2):
            await env.unary()(b"x")
        await asyncio.sleep(0.05)  # let the adaptive sampler publish its gauges
    finally:
        await stop_grpc(env)
        await gov.aclose()

    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "http_server_request_duration_seconds": "histogram", "http_server_active_requests": "gauge",
        "grpc_server_started": "counter", "grpc_server_handled": "counter",
        "grpc_server_handling_seconds": "histogram", "grpc_server_msg_received": "counter",
        "grpc_server_msg_sent": "counter", "governance_adaptive_limit": "gauge",
        "governance_adaptive_inflight": "gauge", "governance_breaker_state": "gauge",
        "governance_breaker_drop_ratio": "gauge", "governance_rejections": "counter",
    }
    for name, kind in expected.items():
        assert name in families and families[name].type == kind, name

    hist = families["http_server_request_duration_seconds"]
    buckets = sorted({float(s.labels["le"]) for s in hist.samples if s.name.endswith("_bucket")})
    assert buckets == [0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       float("inf")]
    counts = {(s.labels["method"], s.labels["route"], s.labels["status_code"]): s.value
              for s in hist.samples if s.name.endswith("_count")}
    assert counts == {("GET", "/v1/accounts/{id}/usage", "200"): 4, ("GET", "/boom", "500"): 1}

    handled = families["grpc_server_handled"].samples[0]
    assert handled.labels == {"grpc_service": "test.v1.Echo", "grpc_method": "Unary", "grpc_type": "unary",
                              "grpc_code": "OK"} and handled.value == 2
    assert {s.labels["limiter"] for s in families["governance_adaptive_limit"].samples} == {"default"}
    assert [s.value for s in families["governance_adaptive_inflight"].samples] == [0.0]
    assert families["governance_breaker_state"].samples[0].labels == {"breaker": "kafka"}


@pytest.mark.parametrize("ratio", [1.0, 0.0])
async def test_sampled_calls_leave_exemplars_on_both_latency_histograms(ratio: float) -> None:
    registry = CollectorRegistry()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "tracing"}]}, registry=registry,
                                 tracer_provider=provider)
    env = await start_grpc(gov.grpc_interceptor())
    try:
        async with client_for(gov.asgi(make_starlette())) as http:
            await http.get("/hello")
        await env.unary()(b"x")
    finally:
        await stop_grpc(env)
        await gov.aclose()
    exemplars = {s.name: s.exemplar for f in openmetrics_families(openmetrics_latest(registry).decode())
                 for s in f.samples if s.exemplar is not None}
    if ratio == 0.0:
        assert exemplars == {}  # unsampled calls have no trace to point at
        return
    assert set(exemplars) == {"http_server_request_duration_seconds_bucket", "grpc_server_handling_seconds_bucket"}
    for exemplar in exemplars.values():
        assert len(exemplar.labels["trace_id"]) == 32 and int(exemplar.labels["trace_id"], 16)
