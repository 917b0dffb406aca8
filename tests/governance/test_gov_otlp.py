"""OTLP export from `setup_tracing` reaches a real local receiver (gRPC and HTTP/protobuf)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client import CollectorRegistry

from governance import Governance
from governance.tracing import setup_tracing
from tests.governance.gov_helpers import client_for, make_starlette


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def] # noqa: N802 - generated name
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[tuple[str, Receiver]]:
    # A synchronous server on its own threads: the exporter blocks in the SDK's worker thread.
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", receiver
    server.stop(None)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    got: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, self.headers["Content-Type"], body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()


def span_names(req: trace_service_pb2.ExportTraceServiceRequest) -> list[tuple[str, str]]:
    out = []
    for rs in req.resource_spans:
        service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
        for ss in rs.scope_spans:
            out.extend((service, s.name) for s in ss.spans)
    return out


async def _traffic(provider: object) -> None:
    gov = Governance.from_config({"plugins": [{"type": "tracing"}]}, registry=CollectorRegistry(),
                                 tracer_provider=provider)
    async with client_for(gov.asgi(make_starlette())) as http:
        assert (await http.get("/v1/accounts/9/usage")).status_code == 200


async def test_otlp_grpc_export_reaches_receiver(grpc_receiver: tuple[str, Receiver]) -> None:
    endpoint, receiver = grpc_receiver
    provider = setup_tracing({"exporter": "otlp-grpc", "endpoint": endpoint, "set_global": False},
                             service_name="meterd-test")
    await _traffic(provider)
    assert await asyncio.to_thread(provider.force_flush, 10_000)
    provider.shutdown()
    names = [n for req in receiver.requests for n in span_names(req)]
    assert ("meterd-test", "GET /v1/accounts/{id}/usage") in names


async def test_otlp_http_export_reaches_receiver(http_receiver: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    endpoint, got = http_receiver
    provider = setup_tracing({"exporter": "otlp-http", "endpoint": endpoint, "set_global": False,
                              "service_name": "meterd-http"})
    await _traffic(provider)
    assert await asyncio.to_thread(provider.force_flush, 10_000)
    provider.shutdown()
    assert got, "no OTLP/HTTP request arrived"
    path, ctype, body = got[0]
    assert path == "/v1/traces" and ctype == "application/x-protobuf"
    req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    assert ("meterd-http", "GET /v1/accounts/{id}/usage") in span_names(req)
