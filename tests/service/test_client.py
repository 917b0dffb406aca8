"""The reference client against a real grpc.aio server that refuses on cue: same batch id on every
retry, retry-after honoured (with jitter, never early), the 10 % retry budget, WriteStream resumes."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from service.client import MeterdWriter, RetryBudget
from service.pb.meterd.v1 import traffic_pb2
from tests.support.servers import free_port


class Refusing:
    """Answers UNAVAILABLE with `retry-after` to the first `refuse` attempts of each batch id."""

    def __init__(self, refuse: int, retry_after: str = "1") -> None:
        self.refuse, self.retry_after = refuse, retry_after
        self.seen: list[tuple[str, float]] = []

    async def _answer(self, request: traffic_pb2.WriteRequest, context: Any) -> traffic_pb2.WriteResponse:
        self.seen.append((request.batch_id, time.monotonic()))
        if sum(1 for b, _ in self.seen if b == request.batch_id) <= self.refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "adaptive: concurrency",
                                trailing_metadata=(("retry-after", self.retry_after),))
        return traffic_pb2.WriteResponse(batch_id=request.batch_id, accepted=len(request.records))

    async def write(self, request: traffic_pb2.WriteRequest, context: Any) -> traffic_pb2.WriteResponse:
        return await self._answer(request, context)

    async def write_stream(self, requests: AsyncIterator[traffic_pb2.WriteRequest],
                           context: Any) -> AsyncIterator[traffic_pb2.WriteResponse]:
        async for request in requests:
            yield await self._answer(request, context)


async def _serve(servicer: Refusing) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    handlers = {
        "Write": grpc.unary_unary_rpc_method_handler(
            servicer.write, request_deserializer=traffic_pb2.WriteRequest.FromString,
            response_serializer=traffic_pb2.WriteResponse.SerializeToString),
        "WriteStream": grpc.stream_stream_rpc_method_handler(
            servicer.write_stream, request_deserializer=traffic_pb2.WriteRequest.FromString,
            response_serializer=traffic_pb2.WriteResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("meterd.v1.TrafficWriter", handlers),))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _records(n: int) -> list[traffic_pb2.TrafficRecord]:
    return [traffic_pb2.TrafficRecord(account_id="a", node_id="n", timestamp_ms=1, requests=1) for _ in range(n)]


async def test_a_refused_batch_is_retried_with_the_same_id_after_retry_after() -> None:
    servicer = Refusing(refuse=1, retry_after="1")
    server, target = await _serve(servicer)
    try:
        async with MeterdWriter(target, "t", node_id="edge-7", rng=random.Random(1)) as writer:
            response = await writer.write(_records(3))
    finally:
        await server.stop(None)
    (first, t1), (second, t2) = servicer.seen
    assert first == second == response.batch_id and first.startswith("edge-7-")
    assert 1.0 <= t2 - t1 <= 1.6  # retry-after, stretched by at most 50 % jitter, never early
    assert (writer.stats.retries, writer.stats.refusals, response.accepted) == (1, 1, 3)


async def test_the_retry_budget_allows_at_most_ten_percent_extra_requests() -> None:
    servicer = Refusing(refuse=10**6, retry_after="0")  # refuse everything, come back at once
    server, target = await _serve(servicer)
    try:
        async with MeterdWriter(target, "t", node_id="e") as writer:
            for _ in range(200):
                with pytest.raises(grpc.aio.AioRpcError):
                    await writer.write(_records(1))
    finally:
        await server.stop(None)
    assert writer.stats.batches == 200
    assert writer.stats.retries <= 0.1 * 200 + writer.budget.reserve
    assert len(servicer.seen) == writer.stats.attempts == 200 + writer.stats.retries


def test_budget_tokens() -> None:
    budget = RetryBudget(ratio=0.1, reserve=2)
    assert budget.try_retry() and budget.try_retry() and not budget.try_retry()
    for _ in range(10):
        budget.on_attempt()
    assert budget.try_retry() and not budget.try_retry()


async def test_batching_and_write_stream_resume_after_a_refusal() -> None:
    servicer = Refusing(refuse=1, retry_after="0")
    server, target = await _serve(servicer)
    try:
        async with MeterdWriter(target, "t", node_id="e", batch_size=2) as writer:
            assert await writer.add(account_id="a", timestamp_ms=1) is None
            full = await writer.add(account_id="a", timestamp_ms=2)
            assert full is not None and full.accepted == 2
            batches = [writer.batch(_records(1)) for _ in range(3)]
            answers = [r async for r in writer.write_stream(batches)]
    finally:
        await server.stop(None)
    assert [a.batch_id for a in answers] == [b.batch_id for b in batches]
    assert writer.stats.retries == 4  # each batch refused once: the add()ed one and the three streamed
