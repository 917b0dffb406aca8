"""grpc.aio server interceptor: the same chain for unary and streaming RPCs.

Rejections become RESOURCE_EXHAUSTED (rate limited) or UNAVAILABLE (overloaded/unavailable) with a
details message and `retry-after` trailing metadata (seconds). A handler raising
`DependencyUnavailable` (an open outbound breaker) is answered UNAVAILABLE the same way. Message
counts are kept for the go-grpc-prometheus msg_received/msg_sent counters when the handler
consumes/produces through iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from governance.core import CANCELLED, FAILURE, Call, Chain, Outcome, OutcomeKind, Rejection, outcome_kind
from governance.outbound import DependencyUnavailable
from governance.problem import retry_after_seconds

log = logging.getLogger(__name__)

ClientKey = Callable[[grpc.HandlerCallDetails], "str | None"]


def _code_name(code: Any) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    for sc in grpc.StatusCode:  # cygrpc may hand back the raw int
        if sc.value[0] == code:
            return str(sc.name)
    return "UNKNOWN"


def _error_code(exc: BaseException, context: Any) -> tuple[str, OutcomeKind]:
    """(code name, outcome kind) for a handler that raised."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED", CANCELLED
    if isinstance(exc, aio.AbortError):  # context.abort(): the code is on the context
        code = _code_name(context.code())
        return code, outcome_kind("grpc", code)
    if isinstance(exc, DependencyUnavailable):
        return "UNAVAILABLE", FAILURE
    return "UNKNOWN", FAILURE


def retry_metadata(retry_after: float) -> tuple[tuple[str, str], ...]:
    """The gRPC side of Retry-After: a `retry-after` trailer in whole seconds (hosts use it too)."""
    return (("retry-after", str(retry_after_seconds(retry_after))),)


async def _abort(context: Any, status: grpc.StatusCode, details: str, retry_after: float,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
    md = [*retry_metadata(retry_after), *((k.lower(), v) for k, v in headers)]
    await context.abort(status, details, trailing_metadata=tuple(md))


def _reject_code(rej: Rejection) -> grpc.StatusCode:
    return grpc.StatusCode.RESOURCE_EXHAUSTED if rej.status == "rate_limited" else grpc.StatusCode.UNAVAILABLE


async def _counted(it: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
    async for msg in it:
        call.msgs_in += 1
        yield msg


_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "server_stream": grpc.unary_stream_rpc_method_handler,
    "client_stream": grpc.stream_unary_rpc_method_handler,
    "bidi_stream": grpc.stream_stream_rpc_method_handler,
}


class GovernanceInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Governs each RPC as one call. `admit`/`end` take any `Call`, so a stream handler can govern
    each message the same way (a Call per message)."""

    def __init__(self, chain: Chain, client_key: ClientKey | None = None) -> None:
        self.chain = chain
        self.client_key = client_key
        self._warned: set[str] = set()

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        key = self.client_key(handler_call_details) if self.client_key else None
        return self._wrap(handler, handler_call_details.method, key,
                          handler_call_details.invocation_metadata or ())

    @contextlib.asynccontextmanager
    async def governed(self, call: Call, context: Any) -> AsyncIterator[Call]:
        """Admit `call` (or abort the RPC with the refusal), run the block, release with its outcome.
        Takes any Call, so a stream handler can govern each message as a call of its own."""
        plan = self.chain.plan("grpc", call.method, call.route)
        admitted = self.chain.admit(call, plan) if plan.sync else await self.chain.admit_async(call, plan)
        if isinstance(admitted, Rejection):
            await _abort(context, _reject_code(admitted), str(admitted), admitted.retry_after, admitted.headers)
            raise AssertionError("context.abort returned")  # it always raises
        error: BaseException | None = None
        try:
            yield call
        except BaseException as exc:
            error = exc
            raise
        finally:
            code, kind = _error_code(error, context) if error is not None else _ok_code(context)
            self.chain.unwind(admitted, Outcome(kind, code, time.perf_counter() - call.start, call))
            if isinstance(error, DependencyUnavailable):
                await _abort(context, grpc.StatusCode.UNAVAILABLE, str(error), error.retry_after)

    def _wrap(self, handler: Any, method: str, key: str | None, md: Any) -> Any:
        behavior, rpc_type = _behavior(handler)
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            if method not in self._warned:
                self._warned.add(method)
                log.warning("governance: %s has a synchronous handler; it is not governed", method)
            return handler
        streaming_in = rpc_type in ("client_stream", "bidi_stream")
        unary_out = rpc_type in ("unary", "client_stream")

        # A unary request arrives as raw bytes and is decoded only once admitted: a refusal never
        # pays for deserialising (a 1000-record batch costs more to decode than to refuse).
        decode = None if streaming_in else handler.request_deserializer

        def start(request: Any, context: Any) -> tuple[Call, Any]:
            call = Call("grpc", method, rpc_type, key, time.perf_counter(), md, peer=peer_host(context.peer()))
            if streaming_in:
                return call, _counted(request, call)
            call.msgs_in = 1
            if decode is not None and isinstance(request, bytes):
                call.request_bytes = len(request)
            return call, request

        async def gen_wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
            call, request = start(request, context)
            async with self.governed(call, context):
                request = await _decoded(decode, request, context)
                async for resp in behavior(request, context):
                    call.msgs_out += 1
                    yield resp

        async def coro_wrapper(request: Any, context: Any) -> Any:
            call, request = start(request, context)
            async with self.governed(call, context):
                request = await _decoded(decode, request, context)
                resp = await behavior(request, context)
                call.msgs_out = 1 if unary_out else call.msgs_out
            return resp

        wrapper = gen_wrapper if inspect.isasyncgenfunction(behavior) else coro_wrapper
        deserializer = handler.request_deserializer if streaming_in else None
        return _FACTORIES[rpc_type](wrapper, request_deserializer=deserializer,
                                    response_serializer=handler.response_serializer)


async def _decoded(decode: Callable[[bytes], Any] | None, request: Any, context: Any) -> Any:
    """The request decoded after admission; undecodable bytes are the caller's error, as grpc says."""
    if decode is None or not isinstance(request, bytes):
        return request
    try:
        return decode(request)
    except Exception:  # noqa: BLE001 - any decoder error means the same thing: bad bytes
        await context.abort(grpc.StatusCode.INTERNAL, "Exception deserializing request!")
        raise AssertionError("context.abort returned") from None


def peer_host(peer: str | None) -> str | None:
    """The host part of a grpc peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/p")."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer


def _ok_code(context: Any) -> tuple[str, OutcomeKind]:
    code = _code_name(context.code())
    return code, outcome_kind("grpc", code)


def _behavior(handler: Any) -> tuple[Any, str]:
    if handler.unary_unary is not None:
        return handler.unary_unary, "unary"
    if handler.unary_stream is not None:
        return handler.unary_stream, "server_stream"
    if handler.stream_unary is not None:
        return handler.stream_unary, "client_stream"
    return handler.stream_stream, "bidi_stream"
