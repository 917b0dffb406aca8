"""Writing over gRPC the way a real edge node does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc


async def write_retrying(stub: traffic_pb2_grpc.TrafficWriterStub, req: traffic_pb2.WriteRequest,
                         metadata: Sequence[tuple[str, str]], timeout: float = 30) -> traffic_pb2.WriteResponse:
    """UNAVAILABLE (the writer shedding load, a dependency away) is retried with the same batch_id,
    whether it is the first attempt or a retry of a lost ack; anything else is raised."""
    while True:
        try:
            return await stub.Write(req, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.2)
