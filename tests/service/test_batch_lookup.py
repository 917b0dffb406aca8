"""GET /v1/batches/{batch_id}: applied (when, how many records), pending (acknowledged, in the log,
not yet counted), or 404; scoped to the credentials that wrote the batch."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.meterd import MeterdProc, free_port, meterd_env, wait_until


def test_batch_lookup_pending_applied_unknown(tmp_path: Path) -> None:
    env = meterd_env(tmp_path)
    api = MeterdProc(["api"], env, tmp_path).start()
    writer = MeterdProc(["writer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path).start()
    consumer = None
    try:
        with api.client() as admin:
            account = admin.post("/v1/accounts", json={"name": "lookup"}).json()["id"]
            key = admin.post(f"/v1/accounts/{account}/keys").json()["key"]
            other = admin.post("/v1/accounts", json={"name": "lookup-other"}).json()["id"]
            other_key = admin.post(f"/v1/accounts/{other}/keys").json()["key"]
        stub = traffic_pb2_grpc.TrafficWriterStub(grpc.insecure_channel(writer.grpc or ""))
        records = [traffic_pb2.TrafficRecord(account_id=account, node_id="n", timestamp_ms=int(time.time() * 1000),
                                             bytes_in=1, bytes_out=2, requests=1) for _ in range(3)]
        stub.Write(traffic_pb2.WriteRequest(batch_id="edge-7-0001", records=records),
                   metadata=[("authorization", f"Bearer {key}")], timeout=10)
        with api.client(key) as own, api.client(other_key) as stranger:
            # No consumer is running: acknowledged, durable, not counted yet.
            pending = own.get("/v1/batches/edge-7-0001")
            assert pending.status_code == 200, pending.text
            body = pending.json()
            assert body["status"] == "pending" and body["records"] == 3 and body["applied_at"] is None
            assert stranger.get("/v1/batches/edge-7-0001").status_code == 404  # not the writer's id space
            unknown = own.get("/v1/batches/never-sent")
            assert unknown.status_code == 404
            assert unknown.headers["content-type"].startswith("application/problem+json")

            consumer = MeterdProc(["consumer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path).start()
            wait_until(lambda: own.get("/v1/batches/edge-7-0001").json()["status"] == "applied", 30, 0.2,
                       "the batch to be counted")
            applied = own.get("/v1/batches/edge-7-0001").json()
            assert applied["records"] == 3 and applied["applied_at"] >= applied["accepted_at"]
    finally:
        for proc in (api, writer, consumer):
            if proc is not None:
                proc.kill()
