"""The gRPC contract of DESIGN section 4: fresh generated code, exact messages, health, reflection, streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf.descriptor import FieldDescriptor as F
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.pb.meterd.v1 import traffic_pb2
from tests.service.conftest import Meterd, bearer, pb, record, unique

ROOT = Path(__file__).resolve().parents[2]

# DESIGN §4, field by field: name -> (number, type, repeated, message type).
EXPECTED_MESSAGES = {
    "WriteRequest": {"batch_id": (1, F.TYPE_STRING, False, None),
                     "records": (2, F.TYPE_MESSAGE, True, "meterd.v1.TrafficRecord")},
    "TrafficRecord": {"account_id": (1, F.TYPE_STRING, False, None), "node_id": (2, F.TYPE_STRING, False, None),
                      "timestamp_ms": (3, F.TYPE_INT64, False, None), "bytes_in": (4, F.TYPE_UINT64, False, None),
                      "bytes_out": (5, F.TYPE_UINT64, False, None), "requests": (6, F.TYPE_UINT64, False, None)},
    "WriteResponse": {"batch_id": (1, F.TYPE_STRING, False, None), "accepted": (2, F.TYPE_UINT32, False, None),
                      "duplicate": (3, F.TYPE_BOOL, False, None)},
}


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, "-m", "service.pb.generate", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_descriptor_matches_design() -> None:
    fd = traffic_pb2.DESCRIPTOR
    assert fd.package == "meterd.v1"
    assert list(fd.services_by_name) == ["TrafficWriter"]
    service = fd.services_by_name["TrafficWriter"]
    assert service.full_name == "meterd.v1.TrafficWriter"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
               for m in service.methods}
    assert methods == {
        "Write": ("meterd.v1.WriteRequest", "meterd.v1.WriteResponse", False, False),
        "WriteStream": ("meterd.v1.WriteRequest", "meterd.v1.WriteResponse", True, True),
    }
    assert set(fd.message_types_by_name) == set(EXPECTED_MESSAGES)
    for name, fields in EXPECTED_MESSAGES.items():
        msg = fd.message_types_by_name[name]
        actual = {f.name: (f.number, f.type, f.is_repeated,
                           f.message_type.full_name if f.message_type else None) for f in msg.fields}
        assert actual == fields, name


def test_health_serving(meterd: Meterd) -> None:
    stub = health_pb2_grpc.HealthStub(meterd.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(meterd: Meterd) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(meterd.channel)
    (resp,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in resp.list_services_response.service}
    assert {"meterd.v1.TrafficWriter", "grpc.health.v1.Health"} <= names
    # A client can fetch the schema itself by symbol.
    (resp,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="meterd.v1.TrafficWriter")]), timeout=5))
    assert resp.file_descriptor_response.file_descriptor_proto


def test_write_stream_one_response_per_request_in_order(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    ids = [unique("s") for _ in range(4)]
    batches = [pb([record(acc, bytes_in=1)], ids[0]), pb([record(acc, bytes_in=2), record(acc, bytes_in=3)], ids[1]),
               pb([record(acc, bytes_in=4)], ids[2]), pb([record(acc, bytes_in=5)], ids[3])]
    requests = [batches[0], batches[1], batches[0], batches[2], batches[1], batches[3]]  # two retries
    responses = list(meterd.stub.WriteStream(iter(requests), metadata=bearer(key), timeout=30))
    got = [(r.batch_id, r.accepted, r.duplicate) for r in responses]
    assert got == [(ids[0], 1, False), (ids[1], 2, False), (ids[0], 1, True), (ids[2], 1, False),
                   (ids[1], 2, True), (ids[3], 1, False)]
    # The retries were not counted twice.
    meterd.wait_totals(acc, {"bytes_in": 15, "bytes_out": 10, "requests": 5})


def test_write_is_unary_and_acknowledges(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    batch_id = unique()
    resp, call = meterd.stub.Write.with_call(pb([record(acc)] * 3, batch_id), metadata=bearer(key), timeout=10)
    assert call.code() == grpc.StatusCode.OK
    assert (resp.batch_id, resp.accepted, resp.duplicate) == (batch_id, 3, False)
