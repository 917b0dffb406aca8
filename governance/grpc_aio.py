"""grpc.aio server interceptor: the same chain for unary and streaming RPCs.

Rejections become RESOURCE_EXHAUSTED (rate limited) or UNAVAILABLE (overloaded/unavailable) with a
details message and `retry-after` trailing metadata (seconds). A handler raising
`DependencyUnavailable` (an open outbound breaker) is answered UNAVAILABLE the same way. Message
counts are kept for the go-grpc-prometheus msg_received/msg_sent counters when the handler
consumes/produces through iterators.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from governance.core import CANCELLED, FAILURE, GRPC_FAILURE_CODES, SUCCESS, Call, Chain, Outcome, Plan, Rejection
from governance.outbound import DependencyUnavailable
from governance.problem import retry_after_seconds

log = logging.getLogger(__name__)

ClientKey = Callable[[grpc.HandlerCallDetails], "str | None"]


def _code_name(code: Any) -> str:
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    for sc in grpc.StatusCode:  # cygrpc may hand back the raw int
        if sc.value[0] == code:
            return sc.name
    return "UNKNOWN"


def _kind(code: str) -> str:
    return FAILURE if code in GRPC_FAILURE_CODES else SUCCESS


def _error_code(exc: BaseException, context: Any) -> tuple[str, str]:
    """(code name, outcome kind) for a handler that raised."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED", CANCELLED
    if isinstance(exc, aio.AbortError):  # context.abort(): the code is on the context
        code = _code_name(context.code())
        return code, _kind(code)
    return "UNKNOWN", FAILURE


async def _abort(context: Any, status: grpc.StatusCode, details: str, retry_after: float,
                 headers: list[tuple[str, str]] | None = None) -> None:
    md: list[tuple[str, str]] = [("retry-after", str(retry_after_seconds(retry_after)))]
    if headers:
        md.extend((k.lower(), v) for k, v in headers)
    await context.abort(status, details, trailing_metadata=tuple(md))


def _reject_code(rej: Rejection) -> grpc.StatusCode:
    return grpc.StatusCode.RESOURCE_EXHAUSTED if rej.status == "rate_limited" else grpc.StatusCode.UNAVAILABLE


async def _counted(it: AsyncIterator[Any], call: Call) -> AsyncIterator[Any]:
    async for msg in it:
        call.msgs_in += 1
        yield msg


class GovernanceInterceptor(aio.ServerInterceptor):
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

    # -- shared steps ---------------------------------------------------------------------------
    async def _enter(self, method: str, rpc_type: str, key: str | None, metadata: Any,
                     context: Any) -> tuple[Call, Plan]:
        call = Call("grpc", method, rpc_type, key, time.perf_counter())
        call.attributes["carrier"] = metadata
        plan = self.chain.plan("grpc", rpc_type, method)
        try:
            await self.chain.admit(call, plan)
        except Rejection as rej:
            await _abort(context, _reject_code(rej), str(rej), rej.retry_after, rej.headers)
        return call, plan

    async def _fail(self, call: Call, plan: Plan, exc: BaseException, context: Any) -> None:
        """Release after a handler exception; turn DependencyUnavailable into UNAVAILABLE."""
        if isinstance(exc, DependencyUnavailable):
            await self.chain.release(call, plan, Outcome(FAILURE, "UNAVAILABLE", time.perf_counter() - call.start))
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after)
        code, kind = _error_code(exc, context)
        await self.chain.release(call, plan, Outcome(kind, code, time.perf_counter() - call.start))

    async def _done(self, call: Call, plan: Plan, context: Any) -> None:
        code = _code_name(context.code())
        await self.chain.release(call, plan, Outcome(_kind(code), code, time.perf_counter() - call.start))

    # -- per RPC type ---------------------------------------------------------------------------
    def _wrap(self, handler: Any, method: str, key: str | None, md: Any) -> Any:
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            behavior, rpc_type = handler.unary_unary, "unary"
        elif handler.unary_stream is not None:
            behavior, rpc_type = handler.unary_stream, "server_stream"
        elif handler.stream_unary is not None:
            behavior, rpc_type = handler.stream_unary, "client_stream"
        else:
            behavior, rpc_type = handler.stream_stream, "bidi_stream"
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            if method not in self._warned:
                self._warned.add(method)
                log.warning("governance: %s has a synchronous handler; it is not governed", method)
            return handler
        enter, fail, done = self._enter, self._fail, self._done
        streaming_in = rpc_type in ("client_stream", "bidi_stream")

        if inspect.isasyncgenfunction(behavior):
            async def gen_wrapper(request: Any, context: Any) -> AsyncIterator[Any]:
                call, plan = await enter(method, rpc_type, key, md, context)
                if streaming_in:
                    request = _counted(request, call)
                else:
                    call.msgs_in = 1
                try:
                    async for resp in behavior(request, context):
                        call.msgs_out += 1
                        yield resp
                except BaseException as exc:
                    await fail(call, plan, exc, context)
                    raise
                await done(call, plan, context)

            wrapper: Any = gen_wrapper
        else:
            async def coro_wrapper(request: Any, context: Any) -> Any:
                call, plan = await enter(method, rpc_type, key, md, context)
                if streaming_in:
                    request = _counted(request, call)
                else:
                    call.msgs_in = 1
                try:
                    resp = await behavior(request, context)
                except BaseException as exc:
                    await fail(call, plan, exc, context)
                    raise
                if rpc_type in ("unary", "client_stream"):
                    call.msgs_out = 1
                await done(call, plan, context)
                return resp

            wrapper = coro_wrapper

        factory = {
            "unary": grpc.unary_unary_rpc_method_handler,
            "server_stream": grpc.unary_stream_rpc_method_handler,
            "client_stream": grpc.stream_unary_rpc_method_handler,
            "bidi_stream": grpc.stream_stream_rpc_method_handler,
        }[rpc_type]
        return factory(wrapper, **kwargs)
