"""Closed-loop sweep for `benchmarks/ingest.py --sweep` (issue 24): `meterd up` as shipped vs the same
build with the adaptive limiter in dry run, in the same run, at 8, 32 and 128 gRPC `Write` writers
and 32 `WriteStream` writers. Writers use the reference client (service/client.py): a refused batch
is retried with the same id after the server's retry-after (with jitter) within a 10 % retry budget;
past the budget the writer waits 1 s and sends it again, as an edge node keeping its batch would.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

POINTS = [("write", 8), ("write", 32), ("write", 128), ("stream", 32)]


async def sweep_client(spec: dict[str, Any], bodies: list[bytes]) -> dict[str, Any]:
    """One closed loop in the client process: `concurrency` writers until `bodies` are written."""
    import grpc

    from service.client import RETRYABLE, MeterdWriter
    from tests.support.meterd import ADMIN_TOKEN

    # A connection per 32 writers: meterd caps streams per HTTP/2 connection at 100 (grpc.max_concurrent_streams).
    channels = [grpc.aio.insecure_channel(spec["target"], options=[("grpc.max_send_message_length", 64 << 20),
                                                                   ("grpc.use_local_subchannel_pool", 1)])
                for _ in range((spec["concurrency"] + 31) // 32)]
    writers = [MeterdWriter(spec["target"], ADMIN_TOKEN, node_id=f"w{i}", channel=channels[i // 32])
               for i in range(spec["concurrency"])]
    latencies: list[float] = []
    queue = list(reversed(bodies))

    async def unary(writer: MeterdWriter) -> None:
        while queue:
            body, started = queue.pop(), time.perf_counter()
            while True:
                try:
                    resp = await writer.send(body)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRYABLE:
                        raise
                    await asyncio.sleep(1.0)  # budget spent: keep the batch, try again later
            latencies.append(time.perf_counter() - started)
            assert resp.accepted == spec["per_batch"] and not resp.duplicate, resp

    async def stream(writer: MeterdWriter, mine: list[bytes]) -> None:
        last = time.perf_counter()
        async for resp in writer.write_stream(mine):
            now = time.perf_counter()
            latencies.append(now - last)  # lock-step: send to answer of one batch
            last = now
            assert resp.accepted == spec["per_batch"] and not resp.duplicate, resp

    t0 = time.time()
    if spec["mode"] == "write":
        await asyncio.gather(*(unary(w) for w in writers))
    else:
        n = len(writers)
        await asyncio.gather(*(stream(w, bodies[i::n]) for i, w in enumerate(writers)))
    t1 = time.time()
    for channel in channels:
        await channel.close()
    refusals = sum(w.stats.refusals for w in writers)
    retries = sum(w.stats.retries for w in writers)
    return {"t0": t0, "t1": t1, "lat": latencies, "sheds": refusals, "sent": len(bodies) * spec["per_batch"],
            "shed_why": f"{retries} retries within the budget"}


def run_sweep(args: argparse.Namespace, ingest: Any) -> str:
    """Every point twice, shipped and dry run back to back (order alternating), on fresh `meterd up`s."""
    import json
    import tempfile

    rows = []
    loads = []
    with tempfile.TemporaryDirectory(prefix="meterd-sweep-") as tmp_s:
        for n, (mode, writers) in enumerate(POINTS):
            records = max(args.sweep_records, writers * 3 * args.batch)
            spec = {"mode": mode, "records": records, "per_batch": args.batch, "concurrency": writers}
            # One key writes every stream: lift the per-key WriteStream cap (16) in both arms.
            common = {"METERD_GRPC__MAX_STREAMS_PER_KEY": "256"}
            arms = [("as shipped", common),
                    ("dry run", {**common, "METERD_GOVERNANCE": json.dumps({"plugins": ingest._dry_run_plugins()})})]
            results = {}
            for name, env in (arms if n % 2 == 0 else arms[::-1]):
                tmp = Path(tmp_s) / f"{mode}-{writers}-{name.replace(' ', '-')}"
                tmp.mkdir()
                loads.append(ingest._load())
                print(f"sweep: {mode} x {writers}, {name}", flush=True)
                results[name] = ingest.run_meterd_arm(name, tmp, {**spec, "tag": f"{mode}{writers}{n}"}, env,
                                                      settle_s=1.0)
            rows.append((mode, writers, results["as shipped"], results["dry run"]))
    return render(args, rows, loads, ingest)


def render(args: argparse.Namespace, rows: list[tuple[str, int, Any, Any]], loads: list[str], ingest: Any) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    pct, ms = ingest.pct, ingest._ms
    out = [
        "## Closed-loop sweep: as shipped vs adaptive limiter in dry run (`benchmarks/ingest.py --sweep`)", "",
        f"Machine: {ingest.machine()}; date: {when}. **The VM was shared** with other jobs running tests "
        f"(load average before each arm: {', '.join(loads)}), so absolute figures are noisy; the two arms "
        "of each point ran back to back (order alternating) and the ratios are what to read.", "",
        f"Batches of {args.batch} records (pre-serialised), writers in a separate process using "
        "`service/client.py` (retry-after with jitter, 10 % retry budget). End to end: first write until "
        "every record is queryable through the usage API. Acceptance (issue 24): sheds <= 1 % of batches, "
        "end-to-end throughput >= 0.95 of the dry-run arm, write-ack p99 <= 1.25x.", "",
        "| point | shipped records/s e2e | dry run records/s e2e | ratio | refused batches (shipped) | "
        "limiter sheds shipped / would-shed in dry run | p99 shipped | p99 dry run | p99 ratio | "
        "CPU us/record shipped / dry |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, writers, shipped, dry in rows:
        name = "gRPC `Write`" if mode == "write" else "gRPC `WriteStream`"
        batches = shipped.records // args.batch
        p99s, p99d = pct(shipped.lat, 0.99), pct(dry.lat, 0.99)
        out.append(f"| {name} x {writers} | {shipped.e2e_rps:,.0f} | {dry.e2e_rps:,.0f} | "
                   f"{shipped.e2e_rps / dry.e2e_rps:.2f} | {shipped.sheds} of {batches} | "
                   f"{shipped.server.get('limiter sheds')} / {dry.server.get('dry-run sheds')} | {ms(p99s)} | {ms(p99d)} | "
                   f"{p99s / p99d:.2f} | {shipped.cpu_us:.2f} / {dry.cpu_us:.2f} |")
    return "\n".join(out) + "\n"
