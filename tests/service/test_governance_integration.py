"""Governance inside meterd: a custom plugin from config on both transports, quota limits shared
by two processes through a real Redis, and traces from HTTP/gRPC through Kafka into the consumer."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.broker import running_tansu
from tests.support.meterd import ADMIN_TOKEN, meterd_env, running_meterd, wait_until


def _config(tmp: Path, governance: dict) -> Path:
    path = tmp / "meterd.yaml"
    path.write_text(yaml.safe_dump({"governance": governance}))
    return path


def _record(account: str) -> dict:
    return {"account_id": account, "node_id": "n1", "timestamp_ms": int(time.time() * 1000), "bytes_in": 1,
            "bytes_out": 2, "requests": 1}


def _grpc_write(target: str, batch_id: str, account: str, metadata: tuple = ()) -> traffic_pb2.WriteResponse:
    with grpc.insecure_channel(target) as ch:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        req = traffic_pb2.WriteRequest(batch_id=batch_id, records=[traffic_pb2.TrafficRecord(**_record(account))])
        return stub.Write(req, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"), *metadata), timeout=10)


def test_custom_plugin_from_config_rejects_on_http_and_grpc(tmp_path: Path) -> None:
    flag = tmp_path / "maintenance.flag"
    cfg = _config(tmp_path, {"plugins": [
        {"type": "metrics"},
        {"type": "tests.service.maintenance_plugin:MaintenanceSwitch", "settings": {"flag_path": str(flag)}},
    ]})
    # The plugin lives in this repo's tests package: make it importable in the meterd process.
    env = meterd_env(tmp_path, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with running_meterd(tmp_path, "up", "--config", str(cfg), env=env) as m, m.client() as c:
        acc = c.post("/v1/accounts", json={"name": "maint"}).json()["id"]
        assert _grpc_write(m.grpc, "before", acc).accepted == 1
        flag.write_text("on")

        r = c.post("/v1/traffic", json={"batch_id": "during", "records": [_record(acc)]})
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "7"
        http_instance = re.search(r"plugin instance ([0-9a-f]+)", r.json()["detail"]).group(1)

        with pytest.raises(grpc.RpcError) as err:
            _grpc_write(m.grpc, "during", acc)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        grpc_instance = re.search(r"plugin instance ([0-9a-f]+)", err.value.details()).group(1)
        assert grpc_instance == http_instance  # one instance governs both transports
        assert ("retry-after", "7") in [(k, v) for k, v in err.value.trailing_metadata()]

        assert c.get("/healthz").status_code == 200  # exempt route still answers
        metrics = c.get("/metrics").text
        assert re.search(r'governance_rejections_total\{plugin="maintenance",reason="[^"]*",transport="http"\} 1\.0',
                         metrics), metrics
        assert re.search(r'governance_rejections_total\{plugin="maintenance",reason="[^"]*",transport="grpc"\} 1\.0',
                         metrics)
        flag.unlink()
        assert _grpc_write(m.grpc, "after", acc).accepted == 1


def test_quota_is_exact_across_two_processes_sharing_redis(tmp_path: Path, fresh_redis_url: str) -> None:
    gov = {"plugins": [{"type": "metrics"}, {
        "type": "quota", "limit": "1000/second", "storage": fresh_redis_url,
        "routes": {"GET /v1/accounts/{account_id}": {"limit": "10/minute"}}}]}
    procs = []
    try:
        for n in range(2):
            d = tmp_path / f"p{n}"
            d.mkdir()
            ctx = running_meterd(d, "up", "--config", str(_config(d, gov)), env=meterd_env(d))
            procs.append((ctx, ctx.__enter__()))
        a, b = procs[0][1], procs[1][1]
        with a.client() as ca, b.client() as cb:
            acc_a = ca.post("/v1/accounts", json={"name": "q"}).json()["id"]
            statuses = []
            for i in range(16):  # alternate processes: only a shared counter can hold the limit
                client, url = (ca, f"/v1/accounts/{acc_a}") if i % 2 == 0 else (cb, "/v1/accounts/nope")
                r = client.get(url)
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["content-type"] == "application/problem+json"
                    assert int(r.headers["retry-after"]) >= 1
                else:
                    assert "ratelimit" in r.headers and "ratelimit-policy" in r.headers
        admitted = [s for s in statuses if s != 429]
        assert len(admitted) == 10, statuses  # exactly the limit, across both processes
        assert statuses[10:] == [429] * 6
    finally:
        for ctx, _ in reversed(procs):
            ctx.__exit__(None, None, None)


class _OtlpReceiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.spans: list = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        with self.server.lock:  # type: ignore[attr-defined]
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    self.server.spans.extend(ss.spans)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("log", ["database", "kafka"])
def test_trace_follows_http_and_grpc_writes_through_the_log_into_the_consumer(tmp_path: Path, log: str) -> None:
    """Both logs carry the trace context: Kafka in message headers, the database log in its row."""
    broker = running_tansu(tmp_path) if log == "kafka" else contextlib.nullcontext()
    with broker as tansu:
        env = meterd_env(tmp_path, **({"METERD_KAFKA__BOOTSTRAP_SERVERS": tansu.bootstrap} if tansu else {}))
        _check_trace(tmp_path, env, "process meterd.traffic.v1" if tansu else "process ingest_log")


def _check_trace(tmp_path: Path, env: dict[str, str], consumer_span: str) -> None:
    receiver = _OtlpReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    cfg = _config(tmp_path, {"tracing": {"exporter": "otlp-http", "endpoint": receiver.url, "ratio": 1.0,
                                         "schedule_delay_millis": 200}})
    http_trace, grpc_trace = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with running_meterd(tmp_path, "up", "--config", str(cfg), env=env) as m, m.client() as c:
            acc = c.post("/v1/accounts", json={"name": "traced"}).json()["id"]
            r = c.post("/v1/traffic", json={"batch_id": "traced-http", "records": [_record(acc)]},
                       headers={"traceparent": f"00-{http_trace}-b7ad6b7169203331-01"})
            assert r.status_code == 202
            _grpc_write(m.grpc, "traced-grpc", acc, (("traceparent", f"00-{grpc_trace}-00f067aa0ba902b7-01"),))

            def spans_of(trace_hex: str) -> list:
                with receiver.lock:
                    return [s for s in receiver.spans if s.trace_id.hex() == trace_hex]

            for trace_hex in (http_trace, grpc_trace):
                wait_until(lambda t=trace_hex: {s.kind for s in spans_of(t)} >= {2, 4, 5}, timeout=30,
                           message=f"server, producer and consumer spans of trace {trace_hex}")

            # Exemplars: the sampled calls' trace ids on the latency histograms, in OpenMetrics.
            scrape = c.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert scrape.headers["content-type"].startswith("application/openmetrics-text")
            text = scrape.text
            assert re.search(r'^http_server_request_duration_seconds_bucket\{[^}]*route="/v1/traffic"[^}]*\} '
                             rf'\S+ # \{{trace_id="{http_trace}"\}} ', text, re.M), text
            assert re.search(r'^grpc_server_handling_seconds_bucket\{[^}]*grpc_method="Write"[^}]*\} '
                             rf'\S+ # \{{trace_id="{grpc_trace}"\}} ', text, re.M), text
            # The classic text format (no Accept) has no exemplars.
            assert "trace_id" not in c.get("/metrics").text
    finally:
        receiver.shutdown()

    for trace_hex, caller_span in ((http_trace, "b7ad6b7169203331"), (grpc_trace, "00f067aa0ba902b7")):
        spans = spans_of(trace_hex)
        server = [s for s in spans if s.kind == 2]  # SPAN_KIND_SERVER
        producer = [s for s in spans if s.kind == 4]  # SPAN_KIND_PRODUCER
        consumer = [s for s in spans if s.kind == 5]  # SPAN_KIND_CONSUMER
        assert len(server) == 1 and len(producer) == 1 and len(consumer) == 1, [(s.name, s.kind) for s in spans]
        assert server[0].parent_span_id.hex() == caller_span  # continues the caller's trace
        assert producer[0].parent_span_id == server[0].span_id  # produce happens inside the request
        assert consumer[0].parent_span_id == producer[0].span_id  # the log carried the context
        assert consumer[0].name == consumer_span
