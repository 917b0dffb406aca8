"""Helpers for the governance library's tests: a fake clock, a tiny Starlette app, a tiny grpc.aio
server with bytes (de)serialisers (no generated protobuf code needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from grpc import aio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

SERVICE = "test.v1.Echo"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- HTTP ---------------------------------------------------------------------------------------
@dataclass
class AppState:
    gate: asyncio.Event | None = None
    seen_inflight: list[int] = field(default_factory=list)


def make_starlette(state: AppState | None = None) -> Starlette:
    state = state or AppState()

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    async def usage(request: Any) -> JSONResponse:
        return JSONResponse({"id": request.path_params["id"]})

    async def boom(request: Any) -> JSONResponse:
        raise RuntimeError("handler exploded")

    async def fail(request: Any) -> JSONResponse:
        return JSONResponse({"error": "down"}, status_code=503)

    async def slow(request: Any) -> JSONResponse:
        assert state.gate is not None
        await state.gate.wait()
        return JSONResponse({"slow": True})

    async def post_traffic(request: Any) -> JSONResponse:
        return JSONResponse({"accepted": 1}, status_code=202)

    inner = [Route("/items/{item_id:int}", hello)]
    return Starlette(routes=[
        Route("/hello", hello),
        Route("/v1/accounts/{id}/usage", usage),
        Route("/v1/traffic", post_traffic, methods=["POST"]),
        Route("/boom", boom),
        Route("/fail", fail),
        Route("/slow", slow),
        Route("/metrics", hello),
        Mount("/api", routes=inner),
    ])


def client_for(app: Any) -> httpx.AsyncClient:
    # raise_app_exceptions=False: a handler exception becomes the 500 Starlette sent, like a server.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def header_key(scope: Any) -> str | None:
    for k, v in scope["headers"]:
        if k == b"x-api-key":
            return v.decode()
    return None


# -- gRPC ---------------------------------------------------------------------------------------
def _ident(b: bytes) -> bytes:
    return b


async def _unary(request: bytes, context: aio.ServicerContext) -> bytes:
    if request == b"abort":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    if request == b"internal":
        await context.abort(grpc.StatusCode.INTERNAL, "broken")
    if request == b"raise":
        raise RuntimeError("handler exploded")
    return b"echo:" + request


async def _server_stream(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield request + str(i).encode()


async def _client_stream(request_iterator: AsyncIterator[bytes], context: aio.ServicerContext) -> bytes:
    parts = [m async for m in request_iterator]
    return b"+".join(parts)


async def _bidi(request_iterator: AsyncIterator[bytes], context: aio.ServicerContext) -> AsyncIterator[bytes]:
    async for m in request_iterator:
        yield m.upper()


def echo_handler() -> grpc.GenericRpcHandler:
    kw = {"request_deserializer": _ident, "response_serializer": _ident}
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, **kw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, **kw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream, **kw),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **kw),
    })


@dataclass
class GrpcEnv:
    server: aio.Server
    channel: aio.Channel

    def unary(self) -> Callable[..., Any]:
        return self.channel.unary_unary(f"/{SERVICE}/Unary", request_serializer=_ident,
                                        response_deserializer=_ident)

    def server_stream(self) -> Callable[..., Any]:
        return self.channel.unary_stream(f"/{SERVICE}/ServerStream", request_serializer=_ident,
                                         response_deserializer=_ident)

    def client_stream(self) -> Callable[..., Any]:
        return self.channel.stream_unary(f"/{SERVICE}/ClientStream", request_serializer=_ident,
                                         response_deserializer=_ident)

    def bidi(self) -> Callable[..., Any]:
        return self.channel.stream_stream(f"/{SERVICE}/Bidi", request_serializer=_ident,
                                          response_deserializer=_ident)


async def start_grpc(interceptor: Any) -> GrpcEnv:
    server = aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    return GrpcEnv(server, channel)


async def stop_grpc(env: GrpcEnv) -> None:
    await env.channel.close()
    await env.server.stop(None)


def metadata_key(details: grpc.HandlerCallDetails) -> str | None:
    for k, v in details.invocation_metadata or ():
        if k == "x-api-key":
            return v if isinstance(v, str) else v.decode()
    return None
