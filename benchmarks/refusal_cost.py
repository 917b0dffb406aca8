"""Cost of a refusal vs an admitted call of the same size (issue 24: target <= 10 %).

    .venv/bin/python benchmarks/refusal_cost.py [--calls 2000] [--records 1000] [--old-tree DIR]

A grpc.aio server in a child process runs the governance interceptor (metrics + adaptive) in
front of a `TrafficWriter/Write`-shaped handler that only counts the records (so "admitted" is the
cheapest possible admitted call: transport, governance and decoding, none of meterd's ingest
work). The refused arm puts a plugin that refuses every call where the adaptive limiter sits
(after metrics, so the refusal is counted and rendered as in production). Server CPU (user +
system, psutil) per call is measured over `--calls` calls of a `--records`-record batch, 8 at a
time from this process. `--old-tree` runs the same arms with an older checkout's governance/ (its
server process runs that tree's copy of this file), e.g. the commit before the raw-bytes handler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from governance.core import Call, Rejection  # noqa: E402


class RefuseAll:
    """Refuses every call as the adaptive limiter does when it sheds."""

    name = "adaptive"
    _refusal = Rejection("adaptive", "concurrency", "overloaded", 1.0)

    def admit(self, call: Call) -> Rejection:
        return self._refusal


async def serve(arm: str, port_file: Path) -> None:
    import grpc

    from governance import Governance
    from service.pb.meterd.v1 import traffic_pb2

    plugins: list[dict[str, Any]] = [{"type": "metrics"}, {"type": "adaptive", "dry_run": True}]
    if arm == "refused":
        plugins[1] = {"type": "refusal_cost:RefuseAll"}
    gov = Governance.from_config({"plugins": plugins})

    async def write(request: Any, context: Any) -> Any:
        return traffic_pb2.WriteResponse(batch_id=request.batch_id, accepted=len(request.records))

    handler = grpc.unary_unary_rpc_method_handler(write, request_deserializer=traffic_pb2.WriteRequest.FromString,
                                                  response_serializer=traffic_pb2.WriteResponse.SerializeToString)
    server = grpc.aio.server(interceptors=[gov.grpc_interceptor()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("meterd.v1.TrafficWriter",
                                                                          {"Write": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    await server.wait_for_termination()


async def load(target: str, body: bytes, calls: int) -> tuple[int, int]:
    import grpc

    ok = refused = 0
    async with grpc.aio.insecure_channel(target) as channel:
        write = channel.unary_unary("/meterd.v1.TrafficWriter/Write", request_serializer=None,
                                    response_deserializer=None)
        left = [calls]

        async def worker() -> None:
            nonlocal ok, refused
            while left[0] > 0:
                left[0] -= 1
                try:
                    await write(body, timeout=30)
                    ok += 1
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                    refused += 1

        await asyncio.gather(*(worker() for _ in range(8)))
    return ok, refused


def run_arm(arm: str, tree: Path, body: bytes, calls: int, tmp: Path) -> dict[str, float]:
    port_file = tmp / f"{arm}.port"
    env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'benchmarks'}"}
    script = tree / "benchmarks" / "refusal_cost.py"  # the tree's own copy: its ROOT is that tree
    child = subprocess.Popen([sys.executable, str(script), "--serve", arm, str(port_file)], env=env, cwd=tree)
    try:
        while not port_file.exists():
            time.sleep(0.02)
        target = f"127.0.0.1:{port_file.read_text()}"
        asyncio.run(load(target, body, 50))  # warm up: connections, imports, caches
        proc = psutil.Process(child.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        ok, refused = asyncio.run(load(target, body, calls))
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    finally:
        child.terminate()
        child.wait(10)
    return {"ok": ok, "refused": refused, "cpu_us_per_call": cpu / calls * 1e6}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        asyncio.run(serve(sys.argv[2], Path(sys.argv[3])))
        return
    import tempfile

    from benchmarks.machine_info import machine
    from service.pb.meterd.v1 import traffic_pb2

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--old-tree", type=Path, help="a checkout whose governance/ the server imports for the old arms")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refusal-cost.md")
    args = ap.parse_args()
    req = traffic_pb2.WriteRequest(batch_id="b")
    for i in range(args.records):
        req.records.add(account_id=f"acc-{i % 10}", node_id="edge-1", timestamp_ms=1_700_000_000_000 + i,
                        bytes_in=100 + i, bytes_out=900 + i, requests=1)
    body = req.SerializeToString()
    trees = [("this tree", ROOT)] + ([("old tree", args.old_tree)] if args.old_tree else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        for name, tree in trees:
            for round_ in range(2):  # interleaved twice: the VM is shared
                for arm in ("admitted", "refused"):
                    work = Path(tmp_s) / f"{name.replace(' ', '-')}-{arm}-{round_}"
                    work.mkdir()
                    rows.append((name, arm, run_arm(arm, tree, body, args.calls, work)))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Cost of a refusal vs an admitted call (`benchmarks/refusal_cost.py`)", "",
             f"Machine: {machine()}; date: {when}; load average {os.getloadavg()}. The VM was shared with other "
             f"jobs: read the ratios. {args.calls} unary `Write` calls of {args.records} records ({len(body):,} bytes) "
             "per arm, 8 in flight; server CPU per call (user + system). The admitted handler only counts the "
             "records, so the ratio is against the cheapest admitted call; meterd's real ingest costs more.", "",
             "| governance | arm | answered | server CPU per call |", "|---|---|---|---:|"]
    for name, arm, r in rows:
        lines.append(f"| {name} | {arm} | {r['ok']} ok, {r['refused']} refused | {r['cpu_us_per_call']:,.0f} us |")
    for name, _ in trees:
        adm = min(r["cpu_us_per_call"] for n, a, r in rows if n == name and a == "admitted")
        ref = min(r["cpu_us_per_call"] for n, a, r in rows if n == name and a == "refused")
        lines.append("")
        lines.append(f"{name}: a refusal costs {ref / adm:.0%} of an admitted call (best of two runs each).")
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
