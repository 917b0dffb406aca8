"""gRPC transport of the write path: meterd.v1.TrafficWriter, plus health and reflection."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from governance import Call, DependencyUnavailable, Rejection
from governance.grpc_aio import GovernanceInterceptor, peer_host, retry_metadata
from service.auth import Authenticator, Principal
from service.ingest.errors import (
    DependencyDown,
    IngestError,
    InvalidBatch,
)
from service.ingest.writer import IngestService
from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc

log = logging.getLogger("meterd.grpc")
SERVICE_NAME = traffic_pb2.DESCRIPTOR.services_by_name["TrafficWriter"].full_name


@dataclass(frozen=True)
class _RichStatus(grpc.Status):  # type: ignore[misc]
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _status(code: grpc.StatusCode, rpc_code: int, message: str, details: Sequence[Any] = ()) -> grpc.Status:
    st = status_pb2.Status(code=rpc_code, message=message)
    for d in details:
        packed = any_pb2.Any()
        packed.Pack(d)
        st.details.append(packed)
    return rpc_status.to_status(st)


def status_for(exc: IngestError) -> grpc.Status:
    """The gRPC status an ingest error names (service.ingest.errors), with its rich details."""
    details: list[Any] = []
    if isinstance(exc, InvalidBatch):
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in exc.violations]))
    if isinstance(exc, DependencyDown):  # as governance answers DependencyUnavailable, plus RetryInfo
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(exc.retry_after * 1000))
        details.append(retry)
    status = _status(getattr(grpc.StatusCode, exc.grpc_code), getattr(code_pb2, exc.grpc_code),
                     exc.public_detail, details)
    if isinstance(exc, DependencyDown):
        return _RichStatus(status.code, status.details, (*status.trailing_metadata, *retry_metadata(exc.retry_after)))
    return status


STREAM_ROUTE = f"/{SERVICE_NAME}/WriteStream"
MESSAGE = "message"  # the Call.method of one WriteStream message, governed like a unary Write


class TrafficWriterServicer(traffic_pb2_grpc.TrafficWriterServicer):
    """`governor` (the governance interceptor) governs each WriteStream message as a call of its own;
    credentials are re-checked per message (the Authenticator caches them ~1 s), and each key holds at
    most `max_streams_per_key` open streams."""

    def __init__(self, ingest: IngestService, auth: Authenticator, *, governor: GovernanceInterceptor | None = None,
                 max_streams_per_key: int = 16) -> None:
        self._ingest = ingest
        self._auth = auth
        self._governor = governor
        self._max_streams = max_streams_per_key
        self._open: dict[str, int] = {}  # principal name -> open streams (bounded: principals with one)

    async def _principal(self, context: grpc.aio.ServicerContext, *, budgeted: bool = True) -> Principal:
        """`budgeted`: charge a failure to the caller's peer budget here (audit N9); false where the
        chain's `auth` plugin has already charged it (unary Write), so it is not counted twice."""
        md = context.invocation_metadata() or ()
        header = next((v for k, v in md if k == "authorization"), None)
        token = header if isinstance(header, str) else None
        try:
            if budgeted:
                principal: Principal | Rejection | None = await self._auth.check(token, peer_host(context.peer()))
            else:
                principal = await self._auth.authenticate(token)
        except DependencyUnavailable as exc:
            await context.abort_with_status(status_for(DependencyDown(f"{exc.name} unavailable", exc.retry_after)))
        if isinstance(principal, Rejection):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "too many failed credential checks from this address; retry later",
                                trailing_metadata=retry_metadata(principal.retry_after))
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or invalid credentials: send metadata 'authorization: Bearer <token>'")
        assert isinstance(principal, Principal)
        return principal

    async def _write_one(self, principal: Principal, request: traffic_pb2.WriteRequest | Undecodable,
                         context: grpc.aio.ServicerContext) -> traffic_pb2.WriteResponse:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request is not a valid meterd.v1.WriteRequest: {request.reason}")
        assert not isinstance(request, Undecodable)
        try:
            result = await self._ingest.write(principal, request.batch_id, request.records, "grpc")
        except IngestError as exc:
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        return traffic_pb2.WriteResponse(batch_id=result.batch_id, accepted=result.accepted,
                                         duplicate=result.duplicate)

    async def Write(self, request: traffic_pb2.WriteRequest,  # noqa: N802 (generated name)
                    context: grpc.aio.ServicerContext) -> traffic_pb2.WriteResponse:
        principal = await self._principal(context, budgeted=False)
        return await self._write_one(principal, request, context)

    async def WriteStream(self, request_iterator: AsyncIterator[traffic_pb2.WriteRequest],  # noqa: N802
                          context: grpc.aio.ServicerContext) -> AsyncIterator[traffic_pb2.WriteResponse]:
        principal = await self._principal(context)
        name = principal.name
        if self._open.get(name, 0) >= self._max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"at most {self._max_streams} open WriteStreams per key",
                                trailing_metadata=retry_metadata(1.0))
        self._open[name] = self._open.get(name, 0) + 1
        try:
            md = tuple(context.invocation_metadata() or ())
            peer = peer_host(context.peer())
            async for request in request_iterator:
                # Re-checked per message: a revoked key or a suspended account stops on an open stream.
                principal = await self._principal(context)
                if self._governor is None:
                    yield await self._write_one(principal, request, context)
                    continue
                call = Call("grpc", STREAM_ROUTE, MESSAGE, principal.name, time.perf_counter(), md, peer=peer)
                async with self._governor.governed(call, context):
                    response = await self._write_one(principal, request, context)
                yield response  # outside the block: a slow reader holds no in-flight slot
        finally:
            left = self._open[name] - 1
            if left:
                self._open[name] = left
            else:
                del self._open[name]


class Undecodable:
    """Stands in for a request whose bytes are not a WriteRequest, so the handler can answer
    INVALID_ARGUMENT (a raising deserializer makes grpc.aio answer UNKNOWN and log a traceback)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_write_request(data: bytes) -> traffic_pb2.WriteRequest | Undecodable:
    try:
        return traffic_pb2.WriteRequest.FromString(data)
    except DecodeError as exc:
        return Undecodable(str(exc) or "malformed protobuf")


def _add_traffic_writer(servicer: TrafficWriterServicer, server: grpc.aio.Server) -> None:
    serialize = traffic_pb2.WriteResponse.SerializeToString
    handlers = {
        "Write": grpc.unary_unary_rpc_method_handler(
            servicer.Write, request_deserializer=_parse_write_request, response_serializer=serialize),
        "WriteStream": grpc.stream_stream_rpc_method_handler(
            servicer.WriteStream, request_deserializer=_parse_write_request, response_serializer=serialize),
    }
    # Both, as grpc_tools' generated helper does: registered methods skip the generic lookup.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def build_grpc_server(servicer: TrafficWriterServicer, *, max_message_bytes: int,
                      interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                      options: Sequence[tuple[str, Any]] = ()) -> tuple[grpc.aio.Server, Any]:
    """`options`: more grpc channel arguments (GrpcSettings.channel_options: stream and age caps)."""
    # gRPC takes the first of repeated arguments: a caller's so_reuseport (shared-port writers) wins.
    reuseport = [] if any(key == "grpc.so_reuseport" for key, _ in options) else [("grpc.so_reuseport", 0)]
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        *reuseport,
        *options,
    ]
    server = grpc.aio.server(interceptors=list(interceptors), options=options)
    _add_traffic_writer(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server)
    return server, health_servicer
