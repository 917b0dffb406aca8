"""The grpc.aio interceptor on a real server on 127.0.0.1:0 (generic handlers, bytes messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from governance import NOOP, Call, Governance, Rejection, Token
from tests.governance.gov_helpers import (
    SERVICE,
    client_for,
    header_key,
    make_starlette,
    metadata_key,
    start_grpc,
    stop_grpc,
)

DENY = "tests.governance.gov_plugins:DenyList"


def labels(method: str, rpc_type: str, **extra: str) -> dict[str, str]:
    return {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": rpc_type, **extra}


async def _requests(*msgs: bytes) -> AsyncIterator[bytes]:
    for m in msgs:
        yield m


async def test_all_four_rpc_types_are_governed_and_counted(registry: CollectorRegistry) -> None:
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive"}, {"type": "breaker"}]},
                                 registry=registry)
    env = await start_grpc(gov.grpc_interceptor())
    try:
        assert await env.unary()(b"hi") == b"echo:hi"
        assert [m async for m in env.server_stream()(b"s")] == [b"s0", b"s1", b"s2"]
        assert await env.client_stream()(_requests(b"a", b"b")) == b"a+b"
        assert [m async for m in env.bidi()(_requests(b"x", b"y"))] == [b"X", b"Y"]
    finally:
        await stop_grpc(env)
    get = registry.get_sample_value
    for method, rpc_type, rx, tx in [("Unary", "unary", 1, 1), ("ServerStream", "server_stream", 1, 3),
                                     ("ClientStream", "client_stream", 2, 1), ("Bidi", "bidi_stream", 2, 2)]:
        assert get("grpc_server_started_total", labels(method, rpc_type)) == 1
        assert get("grpc_server_handled_total", labels(method, rpc_type, grpc_code="OK")) == 1
        assert get("grpc_server_handling_seconds_count", labels(method, rpc_type)) == 1
        assert get("grpc_server_msg_received_total", labels(method, rpc_type)) == rx
        assert get("grpc_server_msg_sent_total", labels(method, rpc_type)) == tx
    assert gov.plugin("adaptive").limiter.inflight == 0
    await gov.aclose()


async def test_status_codes_and_failure_classification(registry: CollectorRegistry) -> None:
    gov = Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive"}, {"type": "breaker"}]},
                                 registry=registry)
    env = await start_grpc(gov.grpc_interceptor())
    try:
        for payload, code in [(b"abort", grpc.StatusCode.INVALID_ARGUMENT), (b"internal", grpc.StatusCode.INTERNAL),
                              (b"raise", grpc.StatusCode.UNKNOWN)]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await env.unary()(payload)
            assert info.value.code() == code
    finally:
        await stop_grpc(env)
    get = registry.get_sample_value
    for code in ("InvalidArgument", "Internal", "Unknown"):
        assert get("grpc_server_handled_total", labels("Unary", "unary", grpc_code=code)) == 1
    window = gov.plugin("breaker").breaker.windows[f"/{SERVICE}/Unary"]
    # INVALID_ARGUMENT is the server working (an accept); INTERNAL and UNKNOWN are failures.
    assert (window.total_req, window.total_acc) == (3, 1)
    assert gov.plugin("adaptive").limiter.inflight == 0
    await gov.aclose()


async def test_rejections_map_to_grpc_codes_with_retry_after(registry: CollectorRegistry) -> None:
    cfg = {"plugins": [{"type": "metrics"}, {"type": "quota", "limit": "1/minute"}]}
    gov = Governance.from_config(cfg, registry=registry)
    env = await start_grpc(gov.grpc_interceptor(client_key=metadata_key))
    try:
        md = (("x-api-key", "k"),)
        assert await env.unary()(b"1", metadata=md) == b"echo:1"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.unary()(b"2", metadata=md)
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota" in (err.details() or "")
        trailing = dict(err.trailing_metadata() or ())
        assert 1 <= int(trailing["retry-after"]) <= 60
        assert trailing["ratelimit"].startswith('"1-per-minute";r=0')
        # Streaming RPCs are rejected the same way, before the handler runs.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [m async for m in env.bidi()(_requests(b"a"), metadata=md)]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await stop_grpc(env)
    assert registry.get_sample_value("grpc_server_handled_total",
                                     labels("Unary", "unary", grpc_code="ResourceExhausted")) == 1
    assert registry.get_sample_value("governance_rejections_total",
                                     {"plugin": "quota", "reason": "limit_exceeded", "transport": "grpc"}) == 2


async def test_custom_plugin_from_config_rejects_on_both_transports_same_instance(
        registry: CollectorRegistry) -> None:
    cfg = {"plugins": [{"type": "metrics"},
                       {"type": DENY, "settings": {"keys": ["blocked"], "status": "overloaded"}}]}
    gov = Governance.from_config(cfg, registry=registry)
    deny = gov.plugin("denylist")
    env = await start_grpc(gov.grpc_interceptor(client_key=metadata_key))
    try:
        async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
            assert (await http.get("/hello", headers={"x-api-key": "ok"})).status_code == 200
            http_denied = await http.get("/hello", headers={"x-api-key": "blocked"})
        assert await env.unary()(b"x", metadata=(("x-api-key", "ok"),)) == b"echo:x"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.unary()(b"x", metadata=(("x-api-key", "blocked"),))
    finally:
        await stop_grpc(env)
    assert http_denied.status_code == 503 and http_denied.headers["retry-after"] == "7"
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(info.value.trailing_metadata())["retry-after"] == "7"
    # One instance saw both transports.
    assert [t for t, _ in deny.seen] == ["http", "http", "grpc", "grpc"]
    assert sorted(deny.outcomes) == [("grpc", "success"), ("http", "success")]
    for transport in ("http", "grpc"):
        assert registry.get_sample_value("governance_rejections_total", {
            "plugin": "denylist", "reason": "denied_key", "transport": transport}) == 1


async def test_dependency_unavailable_becomes_unavailable(registry: CollectorRegistry) -> None:
    from grpc import aio

    from governance import DependencyUnavailable

    async def handler(request: bytes, context: aio.ServicerContext) -> bytes:
        raise DependencyUnavailable("kafka", 3.0)

    gov = Governance.from_config({"plugins": [{"type": "metrics"}]}, registry=registry)
    server = aio.server(interceptors=[gov.grpc_interceptor()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {
        "W": grpc.unary_unary_rpc_method_handler(handler, request_deserializer=bytes,
                                                 response_serializer=bytes)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(aio.AioRpcError) as info:
                await ch.unary_unary("/t.S/W")(b"")
    finally:
        await server.stop(None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(info.value.trailing_metadata())["retry-after"] == "3"
    assert registry.get_sample_value("grpc_server_handled_total", {
        "grpc_service": "t.S", "grpc_method": "W", "grpc_type": "unary", "grpc_code": "Unavailable"}) == 1


def test_peer_host_parses_grpc_peer_strings() -> None:
    from governance.grpc_aio import peer_host
    assert peer_host("ipv4:127.0.0.1:50051") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:50051") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"
    assert peer_host("") is None and peer_host(None) is None


class RefuseBig:
    """Refuses requests over 10 bytes, by the size the adapter knows before decoding."""

    name = "refusebig"

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def admit(self, call: Call) -> Token | Rejection:
        self.sizes.append(call.request_bytes)
        return Rejection(self.name, "too_big", "overloaded") if call.request_bytes > 10 else NOOP


async def test_a_refused_unary_request_is_never_deserialised(registry: CollectorRegistry) -> None:
    decoded: list[bytes] = []

    def decode(raw: bytes) -> bytes:
        decoded.append(raw)
        return raw

    async def echo(request: bytes, context: object) -> bytes:
        return b"ok:" + request

    gov = Governance.from_config({"plugins": [{"type": "metrics"},
                                              {"type": "tests.governance.test_gov_grpc:RefuseBig"}]},
                                 registry=registry)
    server = grpc.aio.server(interceptors=[gov.grpc_interceptor()])
    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=decode)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", {"M": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.S/M")
            assert await call(b"small") == b"ok:small"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"x" * 1000)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
        await gov.aclose()
    assert gov.plugin("refusebig").sizes == [5, 1000]  # admission knew each request's size...
    assert decoded == [b"small"]  # ...and only the admitted one was decoded
