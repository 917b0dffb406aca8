"""End-to-end ingestion benchmark in `meterd up` mode.

Measures, in one run on this machine:
  * meterd: records/s from the first gRPC write until every record is queryable through the usage
    API, and write-ack latency p50/p99 (per batch, acks=all on the embedded Tansu broker);
  * ceiling: raw aiokafka produce (acks=all) of the same serialized batches to the same kind of
    broker, i.e. what the broker and client library alone allow; reported as meterd / ceiling.

The load generator runs in its own process (it needs a core of its own to be honest), batches are
built before the clock starts. Usage: .venv/bin/python benchmarks/ingest.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module> (uvicorn app factories)
    from benchmarks.machine_info import machine  # noqa: E402

from service.kafka.embedded import tansu_binary  # noqa: E402
from service.pb.meterd.v1 import pipeline_pb2, traffic_pb2, traffic_pb2_grpc  # noqa: E402
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env  # noqa: E402


def build_batches(accounts: list[str], total: int, per_batch: int, now_ms: int) -> list[traffic_pb2.WriteRequest]:
    out = []
    n = 0
    for b in range(total // per_batch):
        req = traffic_pb2.WriteRequest(batch_id=f"bench-{now_ms}-{b}")
        for i in range(per_batch):
            req.records.add(account_id=accounts[(n + i) % len(accounts)], node_id="edge-1",
                            timestamp_ms=now_ms - (i % 600) * 1000, bytes_in=100, bytes_out=900, requests=1)
        n += per_batch
        out.append(req)
    return out


async def drive_grpc(target: str, batches: list[traffic_pb2.WriteRequest], concurrency: int) -> list[float]:
    import grpc

    latencies: list[float] = []
    sheds: list[str] = []
    queue = list(reversed(batches))
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    async def worker(stub: traffic_pb2_grpc.TrafficWriterStub) -> None:
        while queue:
            req = queue.pop()
            t = time.perf_counter()
            while True:  # like an edge node: a shed batch is retried with the same batch_id
                try:
                    resp = await stub.Write(req, metadata=md, timeout=60)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    sheds.append(exc.details())
                    await asyncio.sleep(0.05)
            latencies.append(time.perf_counter() - t)
            assert resp.accepted == len(req.records)

    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        await asyncio.gather(*(worker(stub) for _ in range(concurrency)))
    print(f"client: {len(sheds)} writes shed and retried", file=sys.stderr)
    return latencies


def client_process(target: str, accounts: list[str], total: int, per_batch: int, concurrency: int,
                   out: Path) -> None:
    batches = build_batches(accounts, total, per_batch, int(time.time() * 1000))
    out.with_suffix(".ready").write_text("1")
    while not out.with_suffix(".go").exists():
        time.sleep(0.01)
    t0 = time.time()
    lat = asyncio.run(drive_grpc(target, batches, concurrency))
    out.write_text(f"{t0}\n{time.time()}\n" + "\n".join(f"{x:.6f}" for x in lat))


def run_meterd_arm(total: int, per_batch: int, concurrency: int, tmp: Path) -> dict:
    env = meterd_env(tmp)
    proc = MeterdProc(["up"], env, tmp).start()
    try:
        with httpx.Client(base_url=proc.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            accounts = [c.post("/v1/accounts", json={"name": f"bench-{i}"}).json()["id"] for i in range(10)]
            time.sleep(8)  # let the consumer group settle on Tansu before timing
            out = tmp / "lat.txt"
            child = subprocess.Popen([sys.executable, __file__, "--client", proc.grpc, ",".join(accounts),
                                      str(total), str(per_batch), str(concurrency), str(out)])
            while not out.with_suffix(".ready").exists():
                time.sleep(0.05)
            out.with_suffix(".go").write_text("1")
            child.wait()
            lines = out.read_text().splitlines()
            t_start, t_acked = float(lines[0]), float(lines[1])
            lat = sorted(float(x) for x in lines[2:])

            def stored() -> int:
                total_req = 0
                for acc in accounts:
                    r = c.get(f"/v1/accounts/{acc}/usage", params={"step": "1d"}).json()
                    total_req += r["totals"]["requests"]
                return total_req

            while stored() < total:
                time.sleep(0.1)
            t_queryable = time.time()
            assert stored() == total
    finally:
        proc.stop()
    return {"records": total, "ack_seconds": t_acked - t_start, "e2e_seconds": t_queryable - t_start,
            "p50_ms": statistics.median(lat) * 1000, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000}


async def run_ceiling_arm(total: int, per_batch: int, concurrency: int) -> dict:
    from aiokafka import AIOKafkaProducer

    from service.config import KafkaSettings
    from service.kafka.topics import ensure_topics

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        settings = KafkaSettings()
        await ensure_topics(f"127.0.0.1:{port}", settings)
        now = int(time.time() * 1000)
        payloads = []
        for req in build_batches(["acc_x"], total, per_batch, now):
            b = pipeline_pb2.TrafficBatch(records=req.records, dedupe_key=req.batch_id, batch_id=req.batch_id)
            payloads.append((req.batch_id.encode(), b.SerializeToString()))
        producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks="all", linger_ms=2,
                                    max_request_size=16 << 20)
        await producer.start()
        queue = list(reversed(payloads))
        lat: list[float] = []

        async def worker() -> None:
            while queue:
                key, value = queue.pop()
                t = time.perf_counter()
                await producer.send_and_wait(settings.topic, value, key=key)
                lat.append(time.perf_counter() - t)

        t0 = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.time() - t0
        await producer.stop()
    finally:
        broker.kill()
    lat.sort()
    return {"records": total, "ack_seconds": elapsed, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000}




def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _, _, target, accounts, total, per_batch, conc, out = sys.argv
        client_process(target, accounts.split(","), int(total), int(per_batch), int(conc), Path(out))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        m = run_meterd_arm(args.records, args.batch, args.concurrency, Path(tmp))
    c = asyncio.run(run_ceiling_arm(args.records, args.batch, args.concurrency))
    e2e_rps = m["records"] / m["e2e_seconds"]
    ack_rps = m["records"] / m["ack_seconds"]
    ceil_rps = c["records"] / c["ack_seconds"]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = f"""# Ingestion benchmark (`benchmarks/ingest.py`)

Machine: {machine()}; date: {when}.
Load: {args.records:,} records in batches of {args.batch} over gRPC `Write`, {args.concurrency} concurrent
calls from a separate client process; `meterd up` (api + writer + consumer in one process, SQLite, embedded
Tansu, default governance chain). Write-ack latency includes retries of writes the adaptive limiter
shed (the client retries them after 50 ms with the same batch_id, as an edge node would; the count is printed
by the client). Ceiling arm: raw aiokafka produce (acks=all) of the same serialized batches to a fresh Tansu.

| arm | records/s | write-ack p50 | write-ack p99 | ratio vs ceiling |
|---|---:|---:|---:|---:|
| meterd, gRPC in -> acknowledged | {ack_rps:,.0f} | {m['p50_ms']:.1f} ms | {m['p99_ms']:.1f} ms | {ack_rps / ceil_rps:.2f} |
| meterd, gRPC in -> queryable usage (end to end) | {e2e_rps:,.0f} | | | {e2e_rps / ceil_rps:.2f} |
| ceiling: raw Kafka produce, same payloads | {ceil_rps:,.0f} | {c['p50_ms']:.1f} ms | {c['p99_ms']:.1f} ms | 1.00 |
"""
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
