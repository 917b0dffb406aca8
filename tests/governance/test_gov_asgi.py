"""The pure-ASGI middleware on a tiny Starlette app, driven through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from governance import Governance
from governance.asgi import GovernanceMiddleware
from governance.core import NOOP, Call, Chain, Token
from tests.governance.gov_helpers import AppState, client_for, header_key, make_starlette

DENY = "tests.governance.gov_plugins:DenyList"


def duration_count(reg: CollectorRegistry, method: str, route: str, status: str) -> float:
    value = reg.get_sample_value("http_server_request_duration_seconds_count",
                                 {"method": method, "route": route, "status_code": status})
    return value or 0.0


async def test_quota_429_problem_json_retry_after_and_ratelimit_fields(registry: CollectorRegistry) -> None:
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "quota", "limit": "2/minute"}]},
                                 registry=registry)
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        ok = [await http.get("/hello", headers={"x-api-key": "k1"}) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200]
        assert ok[0].headers["ratelimit-policy"] == '"2-per-minute";q=2;w=60'
        assert ok[0].headers["ratelimit"].startswith('"2-per-minute";r=1;t=')
        assert ok[1].headers["ratelimit"].startswith('"2-per-minute";r=0;t=')
        denied = await http.get("/hello", headers={"x-api-key": "k1"})
        other = await http.get("/hello", headers={"x-api-key": "k2"})
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    assert 1 <= int(denied.headers["retry-after"]) <= 60
    assert denied.headers["ratelimit"].startswith('"2-per-minute";r=0;t=')
    body = json.loads(denied.content)
    assert body["status"] == 429 and body["title"] == "Too Many Requests"
    assert body["type"] == "https://meterd.dev/problems/rate-limited"
    assert body["plugin"] == "quota" and body["reason"] == "limit_exceeded"
    assert other.status_code == 200
    assert duration_count(registry, "GET", "/hello", "429") == 1
    assert registry.get_sample_value("governance_rejections_total",
                                     {"plugin": "quota", "reason": "limit_exceeded", "transport": "http"}) == 1
    await gov.aclose()


async def test_repeated_rejections_reuse_the_reply_but_carry_only_their_own_headers(
        registry: CollectorRegistry) -> None:
    # Rejection replies are cached per (plugin, reason, status, retry); the per-call RateLimit
    # fields must be added to each reply, never to the cached headers.
    gov = Governance.from_config({"plugins": [{"type": "quota", "limit": "1/minute"}]}, registry=registry)
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        denied = []
        for key in ("k1", "k2", "k3"):
            assert (await http.get("/hello", headers={"x-api-key": key})).status_code == 200
            denied.append(await http.get("/hello", headers={"x-api-key": key}))
    for r in denied:
        assert r.status_code == 429
        for name in ("content-type", "content-length", "retry-after", "ratelimit", "ratelimit-policy"):
            assert len(r.headers.get_list(name)) == 1, (name, r.headers.get_list(name))
        assert int(r.headers["content-length"]) == len(r.content)
        assert r.headers["ratelimit"].startswith('"1-per-minute";r=0;t=')
    assert denied[0].content == denied[2].content
    assert registry.get_sample_value("governance_rejections_total",
                                     {"plugin": "quota", "reason": "limit_exceeded", "transport": "http"}) == 3
    await gov.aclose()


async def test_overloaded_and_unavailable_render_503(registry: CollectorRegistry) -> None:
    cfg = {"plugins": [{"type": DENY, "keys": ["x"], "status": "overloaded", "retry_after": 2.2}]}
    gov = Governance.from_config(cfg, registry=registry)
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        r = await http.get("/hello", headers={"x-api-key": "x"})
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert json.loads(r.content)["title"] == "Service Unavailable"


async def test_route_templates_not_raw_paths(registry: CollectorRegistry) -> None:
    gov = Governance.from_config({"plugins": [{"type": "metrics"}]}, registry=registry)
    async with client_for(gov.asgi(make_starlette())) as http:
        for i in range(3):
            assert (await http.get(f"/v1/accounts/acc-{i}/usage")).status_code == 200
        assert (await http.get("/api/items/7")).status_code == 200
        assert (await http.get("/no/such/path/123")).status_code == 404
        assert (await http.get("/v1/traffic")).status_code == 405
    assert duration_count(registry, "GET", "/v1/accounts/{id}/usage", "200") == 3
    assert duration_count(registry, "GET", "/api/items/{item_id:int}", "200") == 1
    assert duration_count(registry, "GET", "<unmatched>", "404") == 1
    assert duration_count(registry, "GET", "/v1/traffic", "405") == 1
    names = {s.labels.get("route") for m in registry.collect() for s in m.samples}
    assert not any(n and "acc-" in n for n in names)


async def test_handler_exception_never_leaks_inflight(registry: CollectorRegistry) -> None:
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive"}, {"type": "breaker"}]},
                                 registry=registry)
    adaptive = gov.plugin("adaptive")
    async with client_for(gov.asgi(make_starlette())) as http:
        for _ in range(5):
            r = await http.get("/boom")
            assert r.status_code == 500
    assert adaptive.limiter.inflight == 0
    assert registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/boom"}) == 0
    assert duration_count(registry, "GET", "/boom", "500") == 5
    assert gov.plugin("breaker").breaker.windows["/boom"].total_acc == 0  # failures, not accepts
    await gov.aclose()


async def test_rejection_later_in_chain_releases_earlier_plugins(registry: CollectorRegistry) -> None:
    cfg = {"plugins": [{"type": "metrics"}, {"type": "adaptive"}, {"type": DENY, "keys": ["bad"]}]}
    gov = Governance.from_config(cfg, registry=registry)
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        r = await http.get("/hello", headers={"x-api-key": "bad"})
    assert r.status_code == 429
    assert gov.plugin("adaptive").limiter.inflight == 0
    assert registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/hello"}) == 0
    await gov.aclose()


async def test_active_requests_gauge_while_in_flight(registry: CollectorRegistry) -> None:
    state = AppState(gate=asyncio.Event())
    gov = Governance.from_config({"plugins": [{"type": "metrics"}]}, registry=registry)
    async with client_for(gov.asgi(make_starlette(state))) as http:
        pending = asyncio.create_task(http.get("/slow"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/slow"}):
                break
        assert registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/slow"}) == 1
        state.gate.set()
        assert (await pending).status_code == 200
    assert registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/slow"}) == 0


async def test_per_route_overrides(registry: CollectorRegistry) -> None:
    cfg = {"plugins": [
        {"type": "metrics"},
        {"type": "adaptive", "routes": {"/metrics": {"enabled": False}}},
        {"type": "quota", "limit": "1/minute", "routes": {"POST /v1/traffic": {"limit": "3/minute"},
                                                          "/metrics": {"enabled": False}}},
    ]}
    gov = Governance.from_config(cfg, registry=registry)
    names = [type(p).__name__ for p in gov.chain.plan("http", "GET", "/metrics").plugins]
    assert names == ["MetricsPlugin"]
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        traffic = [(await http.post("/v1/traffic", headers={"x-api-key": "a"})).status_code for _ in range(4)]
        hello = [(await http.get("/hello", headers={"x-api-key": "a"})).status_code for _ in range(2)]
        metrics = [(await http.get("/metrics", headers={"x-api-key": "a"})).status_code for _ in range(3)]
    assert traffic == [202, 202, 202, 429]
    assert hello == [200, 429]
    assert metrics == [200, 200, 200]
    await gov.aclose()


async def test_non_http_scopes_pass_through_untouched(registry: CollectorRegistry) -> None:
    seen: list[str] = []

    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    gov = Governance.from_config({"plugins": [{"type": DENY, "keys": [None]}]}, registry=registry)
    mw = gov.asgi(raw_app, route_resolver=lambda scope: "/x")
    await mw({"type": "lifespan"}, None, None)
    await mw({"type": "websocket", "path": "/ws", "headers": []}, None, None)
    assert seen == ["lifespan", "websocket"]
    assert gov.plugin("denylist").seen == []


async def test_custom_route_resolver_for_non_starlette_apps(registry: CollectorRegistry) -> None:
    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    gov = Governance.from_config({"plugins": [{"type": "metrics"}]}, registry=registry)
    app = gov.asgi(raw_app, route_resolver=lambda scope: "/things/{id}")
    async with client_for(app) as http:
        assert (await http.get("/things/9")).status_code == 204
    assert duration_count(registry, "GET", "/things/{id}", "204") == 1


async def test_dependency_unavailable_from_handler_becomes_503(registry: CollectorRegistry) -> None:
    from governance import DependencyUnavailable

    async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise DependencyUnavailable("kafka", 4.2)

    gov = Governance.from_config({"plugins": [{"type": "metrics"}]}, registry=registry)
    async with client_for(gov.asgi(raw_app, route_resolver=lambda s: "/w")) as http:
        r = await http.post("/w")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert json.loads(r.content)["dependency"] == "kafka"


@pytest.mark.parametrize("path", ["/hello", "/v1/accounts/1/usage"])
async def test_breaker_opens_on_5xx_and_answers_503(registry: CollectorRegistry, path: str) -> None:
    cfg = {"plugins": [{"type": "breaker", "min_requests": 5}]}
    gov = Governance.from_config(cfg, registry=registry)
    async with client_for(gov.asgi(make_starlette())) as http:
        codes = [(await http.get("/fail")).status_code for _ in range(60)]
        healthy = (await http.get(path)).status_code
    assert codes[:5] == [503] * 5
    rejected = [c for c in codes if c == 503]
    assert len(rejected) == 60  # handler 503s and breaker 503s
    assert registry.get_sample_value("governance_rejections_total",
                                     {"plugin": "breaker", "reason": "failure_ratio", "transport": "http"}) > 0
    assert healthy == 200  # other routes are unaffected


async def test_plugin_response_headers_reach_the_reply() -> None:
    """A plugin's str header goes through Call.add_response_header and arrives encoded, after the app's own."""

    class Stamp:
        name = "stamp"

        async def admit(self, call: Call) -> Token:
            call.add_response_header("X-Governed-By", "Stamp")
            return NOOP

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with client_for(GovernanceMiddleware(raw_app, Chain([Stamp()]), route_resolver=lambda s: "/s")) as http:
        r = await http.get("/s")
    assert r.status_code == 200
    assert r.headers["x-app"] == "1"
    assert r.headers["x-governed-by"] == "Stamp"
    assert [k for k, _ in r.headers.raw][-1].lower() == b"x-governed-by"


async def test_adaptive_refusals_are_one_shared_decision_rendered_fresh_each_time(
        registry: CollectorRegistry) -> None:
    # The adaptive limiter hands back one Rejection per distinct refusal instead of raising a new
    # one per call; every reply must still be a whole 503 problem, counted once and released.
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive"}]}, registry=registry)
    adaptive = gov.plugin("adaptive")
    adaptive.limiter.acquire = lambda *a: "queueing"  # type: ignore[method-assign]  # shed everything
    refusals = {id(adaptive.admit(Call("http", "/hello", "GET", None, 0.0))) for _ in range(3)}
    assert len(refusals) == 1
    async with client_for(gov.asgi(make_starlette())) as http:
        replies = [await http.get("/hello") for _ in range(3)]
    for r in replies:
        assert r.status_code == 503
        for name in ("content-type", "content-length", "retry-after"):
            assert len(r.headers.get_list(name)) == 1, (name, r.headers.get_list(name))
        doc = json.loads(r.content)
        retry = int(r.headers["retry-after"])
        assert (doc["plugin"], doc["reason"], doc["retry_after"]) == ("adaptive", "queueing", retry)
    assert registry.get_sample_value("governance_rejections_total",
                                     {"plugin": "adaptive", "reason": "queueing", "transport": "http"}) == 3
    assert duration_count(registry, "GET", "/hello", "503") == 3  # metrics ran before and was unwound
    assert registry.get_sample_value("http_server_active_requests", {"method": "GET", "route": "/hello"}) == 0
    await gov.aclose()
