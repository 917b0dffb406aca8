"""Issue 3 acceptance 5: with the broker down, Write answers UNAVAILABLE fast once the outbound
breaker is open, recovers by itself when the broker returns, and no acknowledged batch is lost.

The broker is Tansu on S3 storage (a local moto server), so a SIGKILL + restart keeps its data, as
a real Kafka cluster would.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.broker import running_durable_tansu
from tests.support.meterd import ADMIN_TOKEN, meterd_env, running_meterd, wait_until
from tests.support.usage import Totals, add_records, iso, stored_usage

MD = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def _batch(n: int, account: str) -> traffic_pb2.WriteRequest:
    req = traffic_pb2.WriteRequest(batch_id=f"outage-{n}")
    req.records.add(account_id=account, node_id="edge", timestamp_ms=int(time.time() * 1000), bytes_in=n,
                    bytes_out=2 * n, requests=1)
    return req


def test_broker_outage_fails_fast_then_recovers_without_loss(tmp_path: Path) -> None:
    (tmp_path / "broker").mkdir()
    with running_durable_tansu(tmp_path / "broker") as broker:
        env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
                         METERD_KAFKA__REQUEST_TIMEOUT_MS="1500",
                         METERD_GOVERNANCE='{"outbound": {"kafka": {"fail_max": 3, "reset_timeout": 2}}}')
        with running_meterd(tmp_path, "up", env=env) as m, m.client() as c, \
                grpc.insecure_channel(m.grpc) as ch:
            stub = traffic_pb2_grpc.TrafficWriterStub(ch)
            acc = c.post("/v1/accounts", json={"name": "outage"}).json()["id"]
            acked: Totals = {}
            n = 0
            for _ in range(5):
                n += 1
                req = _batch(n, acc)
                assert stub.Write(req, metadata=MD, timeout=10).accepted == 1
                add_records(acked, req.records)

            broker.kill()
            codes = []
            fast_unavailable_ms = None
            opened = False
            for _ in range(20):  # failures open the breaker; then answers must be immediate
                n += 1
                started = time.perf_counter()
                try:
                    req = _batch(n, acc)
                    stub.Write(req, metadata=MD, timeout=10)
                    add_records(acked, req.records)  # an ack is an ack, even during the outage
                    codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    if exc.code() == grpc.StatusCode.UNAVAILABLE and "circuit open" in exc.details():
                        if opened:  # the call after the one that tripped it: refused up front
                            fast_unavailable_ms = elapsed_ms
                            break
                        opened = True
            assert fast_unavailable_ms is not None, codes
            assert fast_unavailable_ms < 100, f"UNAVAILABLE took {fast_unavailable_ms:.0f} ms with the breaker open"
            metrics = c.get("/metrics").text
            assert 'governance_breaker_state{breaker="kafka"} 1.0' in metrics

            broker.start()  # same port, same storage
            recovered_after = time.monotonic()

            def write_succeeds() -> bool:
                nonlocal n
                n += 1
                req = _batch(n, acc)
                try:
                    stub.Write(req, metadata=MD, timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    return False
                add_records(acked, req.records)
                return True

            wait_until(write_succeeds, timeout=60, interval=0.5, message="writes to succeed again")
            print(f"\nbreaker open -> UNAVAILABLE in {fast_unavailable_ms:.1f} ms; "
                  f"recovered {time.monotonic() - recovered_after:.1f} s after the broker restarted")
            start, end = iso(time.time() - 3600), iso(time.time() + 120)
            wait_until(lambda: stored_usage(m.http, [acc], start, end) == acked, timeout=60,
                       message="every acknowledged batch to be counted exactly once")
