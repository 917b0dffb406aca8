"""Issue 18: does a flood of made-up API keys slow a legitimate client down?

One `meterd up` (database log). A legitimate client writes one-record batches over gRPC `Write`,
one at a time, for --seconds without a flood, then for --seconds while flood_bad_tokens.py (its own
process, from another loopback address) posts --rate requests per second, each with a fresh random
`mk_` token. The result is the ratio of the client's p99 latency with the flood to without it.
`measure()` is also what tests/service/test_auth_flood.py runs. Writes benchmarks/results/auth-flood.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

if __name__ == "__main__":  # as a script: the repo root is importable (tests import this module)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.flood_bad_tokens import flooding  # noqa: E402
from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc  # noqa: E402

FLOOD = Path(__file__).resolve().parent / "flood_bad_tokens.py"


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _legit(stub: traffic_pb2_grpc.TrafficWriterStub, key: str, account: str, until: float,
           on: Callable[[float], bool] = lambda t: False) -> dict[bool, tuple[list[float], collections.Counter[str]]]:
    """The client's write latencies (epoch `until`), split by whether the flood was on when each
    started; a refused write counts by its code (and its latency too)."""
    md = (("authorization", f"Bearer {key}"),)
    out: dict[bool, tuple[list[float], collections.Counter[str]]] = {
        False: ([], collections.Counter()), True: ([], collections.Counter())}
    while (started := time.time()) < until:
        rec = traffic_pb2.TrafficRecord(account_id=account, node_id="n1", timestamp_ms=int(started * 1000),
                                        bytes_in=1, bytes_out=1, requests=1)
        samples, failures = out[on(started)]
        t0 = time.perf_counter()
        try:
            stub.Write(traffic_pb2.WriteRequest(batch_id=uuid.uuid4().hex, records=[rec]), metadata=md, timeout=30)
        except grpc.RpcError as exc:
            failures[exc.code().name] += 1
            time.sleep(0.05)  # a refused client backs off a little, as a real one would
        samples.append(time.perf_counter() - t0)
    return out


def measure(grpc_target: str, http_port: int, key: str, account: str, *, seconds: float = 10.0,
            rate: float = 1000.0, source: str = "127.0.0.2", slice_s: float = 1.0) -> dict[str, Any]:
    """`seconds` with the flood and `seconds` without, interleaved in `slice_s` slices (so load from
    neighbours on a shared machine falls on both arms alike)."""
    with grpc.insecure_channel(grpc_target) as ch:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        _legit(stub, key, account, time.time() + 1.0)  # warm-up
        start = time.time() + 1.0  # the generator is up and connected by then
        flood = subprocess.Popen([sys.executable, str(FLOOD), "--port", str(http_port), "--rate", str(rate),
                                  "--seconds", str(2 * seconds), "--source", source, "--start-at", str(start),
                                  "--slice", str(slice_s)], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(max(0.0, start - time.time()))
            arms = _legit(stub, key, account, start + 2 * seconds, lambda t: flooding(t, start, slice_s))
            out, _ = flood.communicate(timeout=60)
        finally:
            if flood.poll() is None:
                flood.kill()
    assert flood.returncode == 0, "flood generator failed"
    (base, base_failed), (flooded, flood_failed) = arms[False], arms[True]
    p99_base, p99_flood = _p(base, 0.99), _p(flooded, 0.99)
    return {"base_n": len(base), "flood_n": len(flooded), "p50_base_ms": _p(base, 0.5) * 1e3,
            "p50_flood_ms": _p(flooded, 0.5) * 1e3, "p99_base_ms": p99_base * 1e3,
            "p99_flood_ms": p99_flood * 1e3, "ratio": p99_flood / p99_base, "flood": json.loads(out),
            "base_failed": dict(base_failed), "flood_failed": dict(flood_failed)}


def report(r: dict[str, Any], label: str) -> str:
    f = r["flood"]
    return (f"| {label} | {r['p50_base_ms']:.2f} | {r['p99_base_ms']:.2f} | {r['p50_flood_ms']:.2f} | "
            f"{r['p99_flood_ms']:.2f} | **{r['ratio']:.2f}x** | {r['flood_failed'] or 'none'} of {r['flood_n']} | "
            f"{f['rate']}/s, {f['statuses']} |")


def main() -> None:
    from benchmarks.machine_info import machine
    from tests.support.meterd import ADMIN_TOKEN, meterd_env, running_meterd

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--slice", type=float, default=1.0)
    ap.add_argument("--label", default="this branch")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "auth-flood.md"))
    a = ap.parse_args()
    import tempfile

    import httpx
    tmp = Path(tempfile.mkdtemp(prefix="auth-flood-"))
    env = meterd_env(tmp)
    with running_meterd(tmp, "up", env=env) as m:
        assert m.http and m.grpc
        with httpx.Client(base_url=m.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            acc = c.post("/v1/accounts", json={"name": "legit"}).json()["id"]
            key = c.post(f"/v1/accounts/{acc}/keys").json()["key"]
        r = measure(m.grpc, int(env["METERD_HTTP__PORT"]), key, acc, seconds=a.seconds, rate=a.rate, slice_s=a.slice)
    row = report(r, a.label)
    print(row)
    out = Path(a.out)
    if not out.exists():
        out.write_text(
            "# A flood of made-up API keys vs a legitimate client (issue 18)\n\n"
            "`benchmarks/auth_flood.py`: one `meterd up` (database log, default chain); a legitimate client\n"
            "writes one-record batches over gRPC `Write`, sequentially, for 20 s; `flood_bad_tokens.py`\n"
            "(own process, from 127.0.0.2) posts 1,000 requests/s to `POST /v1/traffic`, each with a fresh\n"
            "random `mk_` token, in every other 1 s slice (10 s of flood in all), so both arms share the\n"
            "machine's moods. Ratio = the client's p99 during the flood / its p99 between. A refused write\n"
            "counts with its latency (and in the refused column).\n\n"
            "| build | p50 ms | p99 ms | p50 ms (flood) | p99 ms (flood) | p99 ratio | client refused (flood) "
            "| flood achieved, statuses | run |\n|---|---|---|---|---|---|---|---|---|\n")
    with out.open("a") as fh:
        fh.write(row + f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()} |\n")


if __name__ == "__main__":
    main()
