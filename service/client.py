"""The reference client for edge nodes: how to write traffic records to meterd over gRPC.

    async with MeterdWriter("meterd:50051", token, node_id="edge-1") as writer:
        writer.add(account_id=acc, timestamp_ms=now_ms, bytes_in=100, bytes_out=900, requests=1)
        ...                                   # full batches (batch_size records) go out as they fill
        await writer.flush()                  # the rest
        # or: await writer.write(records) for one batch, writer.write_stream(batches) over one stream

What it does that an edge node must do:
- every batch gets an idempotent id (`<node>-<boot>-<seq>`) and a retry re-sends the *same* id, so
  a batch acknowledged once is counted once, however often it was sent;
- an UNAVAILABLE / RESOURCE_EXHAUSTED answer is retried after the server's `retry-after` trailer,
  stretched by up to 50 % of random jitter so refused clients do not return in step (without the
  trailer: exponential backoff with full jitter);
- retries are bounded by a retry budget (Google SRE): at most `retry_ratio` (10 %) extra requests
  over first attempts, plus a small reserve; past it the error goes to the caller, who keeps the
  batch for later instead of adding load to an overloaded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from service.pb.meterd.v1 import traffic_pb2

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
WRITE = "/meterd.v1.TrafficWriter/Write"
WRITE_STREAM = "/meterd.v1.TrafficWriter/WriteStream"
Batch = traffic_pb2.WriteRequest | bytes  # bytes: an already serialised WriteRequest


class RetryBudget:
    """Token bucket: each first attempt earns `ratio` of a retry, a retry spends one; at most
    `reserve` tokens are banked. Over any stretch, retries <= ratio x first attempts + reserve."""

    def __init__(self, ratio: float = 0.1, reserve: float = 10.0) -> None:
        self.ratio, self.reserve = ratio, reserve
        self.tokens = reserve

    def on_attempt(self) -> None:
        self.tokens = min(self.reserve, self.tokens + self.ratio)

    def try_retry(self) -> bool:
        if self.tokens < 1.0 - 1e-9:  # ten deposits of 0.1 make a whole retry despite rounding
            return False
        self.tokens -= 1.0
        return True


@dataclass
class WriterStats:
    batches: int = 0
    attempts: int = 0
    retries: int = 0
    refusals: int = 0  # retryable answers seen (sheds, quota)
    gave_up: int = 0  # refusals handed to the caller because the retry budget was spent


def retry_after_of(err: grpc.RpcError) -> float | None:
    """The `retry-after` trailer in seconds, if the server sent one."""
    trailers: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "retry-after":
            with contextlib.suppress(ValueError):
                return max(0.0, float(value))
    return None


class MeterdWriter:
    def __init__(self, target: str, token: str, *, node_id: str, batch_size: int = 1000,
                 retry_ratio: float = 0.1, max_wait: float = 30.0, timeout: float = 60.0,
                 channel: grpc.aio.Channel | None = None, rng: random.Random | None = None) -> None:
        self.node_id, self.batch_size, self.max_wait, self.timeout = node_id, batch_size, max_wait, timeout
        self._channel = channel or grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20)])
        self._own_channel = channel is None
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._write = self._channel.unary_unary(WRITE, request_serializer=traffic_pb2.WriteRequest.SerializeToString,
                                                response_deserializer=traffic_pb2.WriteResponse.FromString)
        self._raw_write = self._channel.unary_unary(WRITE, request_serializer=None,
                                                    response_deserializer=traffic_pb2.WriteResponse.FromString)
        self._stream = self._channel.stream_stream(  # serialised here: batches may come as bytes
            WRITE_STREAM, request_serializer=None, response_deserializer=traffic_pb2.WriteResponse.FromString)
        self.budget = RetryBudget(retry_ratio)
        self.stats = WriterStats()
        self._rng = rng or random.Random()
        self._boot = os.urandom(4).hex()  # a restarted node never reuses an earlier run's ids
        self._seq = 0
        self._pending: list[traffic_pb2.TrafficRecord] = []

    async def __aenter__(self) -> MeterdWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is None:
            await self.flush()
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self._channel.close()

    def next_batch_id(self) -> str:
        self._seq += 1
        return f"{self.node_id}-{self._boot}-{self._seq}"

    def batch(self, records: Iterable[traffic_pb2.TrafficRecord],
              batch_id: str | None = None) -> traffic_pb2.WriteRequest:
        return traffic_pb2.WriteRequest(batch_id=batch_id or self.next_batch_id(), records=records)

    # -- batching -------------------------------------------------------------------------------
    async def add(self, **record: Any) -> traffic_pb2.WriteResponse | None:
        """Queue one record (TrafficRecord fields; node_id defaults to this node's); a full batch is
        written before returning, and its answer returned."""
        record.setdefault("node_id", self.node_id)
        self._pending.append(traffic_pb2.TrafficRecord(**record))
        if len(self._pending) >= self.batch_size:
            return await self.flush()
        return None

    async def flush(self) -> traffic_pb2.WriteResponse | None:
        if not self._pending:
            return None
        records, self._pending = self._pending, []
        return await self.send(self.batch(records))

    # -- one batch ------------------------------------------------------------------------------
    async def write(self, records: Iterable[traffic_pb2.TrafficRecord]) -> traffic_pb2.WriteResponse:
        return await self.send(self.batch(records))

    async def send(self, request: Batch) -> traffic_pb2.WriteResponse:
        """Write one batch (a WriteRequest, or its serialized bytes), retrying refusals within the
        budget with the same batch id."""
        self.stats.batches += 1
        self.budget.on_attempt()
        call: Any = self._raw_write if isinstance(request, bytes) else self._write
        attempt = 0
        while True:
            self.stats.attempts += 1
            try:
                response: traffic_pb2.WriteResponse = await call(request, metadata=self._metadata,
                                                                  timeout=self.timeout)
                return response
            except grpc.aio.AioRpcError as err:
                await self._before_retry(err, attempt)
                attempt += 1

    async def _before_retry(self, err: grpc.RpcError, attempt: int) -> None:
        """Sleep as the server asked (with jitter), or raise `err` when it is not retryable or the
        retry budget is spent."""
        if err.code() not in RETRYABLE:
            raise err
        self.stats.refusals += 1
        if not self.budget.try_retry():
            self.stats.gave_up += 1
            raise err
        self.stats.retries += 1
        await asyncio.sleep(self.backoff(retry_after_of(err), attempt))

    def backoff(self, retry_after: float | None, attempt: int) -> float:
        jitter = self._rng.random()
        if retry_after is not None:
            return min(self.max_wait, retry_after * (1.0 + 0.5 * jitter))
        return min(self.max_wait, 0.1 * 2.0 ** attempt * jitter)

    # -- a stream of batches --------------------------------------------------------------------
    async def write_stream(self, requests: AsyncIterable[Batch] | Iterable[Batch]
                           ) -> AsyncIterator[traffic_pb2.WriteResponse]:
        """Write batches (WriteRequests or their bytes) over one WriteStream, one answer per batch in
        order. A refused batch ends the stream: after the retry-after the stream is reopened and that
        batch sent again."""
        source = _aiter(requests)
        retry: Batch | None = None
        attempt = 0
        while True:
            stream = self._stream(metadata=self._metadata, timeout=None)
            try:
                while True:
                    request = retry if retry is not None else await anext(source, None)
                    if request is None:
                        await stream.done_writing()
                        return
                    if retry is None:
                        self.stats.batches += 1
                        self.budget.on_attempt()
                    self.stats.attempts += 1
                    retry = request
                    await stream.write(request if isinstance(request, bytes) else request.SerializeToString())
                    response = await stream.read()
                    if response is grpc.aio.EOF:
                        await stream  # raises the status that ended the stream
                        raise RuntimeError("WriteStream ended without an answer or an error")
                    retry, attempt = None, 0
                    yield response
            except grpc.aio.AioRpcError as err:
                stream.cancel()
                await self._before_retry(err, attempt)
                attempt += 1


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
