"""Open-loop overload on meterd's real ingest route (issue 24): gRPC `Write`, 1000-record batches.

    .venv/bin/python benchmarks/ingest_overload.py [--levels 0.5,0.8,1.5,2,5] [--channels 8] [--arms "as shipped,dry run"]

The capacity is measured first on a fresh `meterd up` (closed loop of 128 writers on 8 connections, limiter in dry run:
acknowledged records/s) and the unloaded p99 on the same server (open loop at 0.2x). Then, per level,
a fresh `meterd up` gets 4 s at 0.5x (the limiter's warm-up), `--level-seconds` at the level, and 4 s
back at 0.5x (the step down), as shipped and with the limiter in dry run back to back. The generator runs in its own process and is open loop: batches are
scheduled at a fixed rate whatever the answers, spread round-robin over `--channels` connections
(one HTTP/2 connection caps in-flight calls at meterd's `grpc.max_concurrent_streams`, 100, which
would turn the open loop into a closed loop of 100), latency is measured from the scheduled time,
nothing is retried (a shed is counted, not re-offered) and a batch older than `--timeout` is lost.
Results go to benchmarks/results/ingest-overload.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:  # run as a script: benchmarks/ is on sys.path
    from ingest import _load, _server_metrics, pct, record_templates, request_bytes  # noqa: E402
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module>
    from benchmarks.ingest import _load, _server_metrics, pct, record_templates, request_bytes  # noqa: E402
    from benchmarks.machine_info import machine  # noqa: E402

from tests.support.meterd import ADMIN_TOKEN, MeterdProc, meterd_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ingest-overload.md"
PER_BATCH, WARM_S, DOWN_S = 1000, 4.0, 4.0  # records per batch; seconds at 0.5x before and after the level
WINDOW = 0.25  # s, for the recovery measure


# == generator (its own process) ===================================================================
def _channels(target: str, n: int) -> list[Any]:
    import grpc

    # A local subchannel pool per channel: otherwise channels to one target share one connection.
    return [grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                       ("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)]


def _writes(channels: list[Any]) -> list[Any]:
    from service.pb.meterd.v1 import traffic_pb2

    return [ch.unary_unary("/meterd.v1.TrafficWriter/Write", request_serializer=None,
                           response_deserializer=traffic_pb2.WriteResponse.FromString) for ch in channels]


async def open_loop(spec: dict[str, Any], templates: list[bytes]) -> dict[str, Any]:
    """Phases of (records/s, seconds) back to back. Per batch: [scheduled s, outcome, latency s]."""
    import grpc

    channels = _channels(spec["target"], spec["channels"])
    writes = _writes(channels)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    out: list[list[Any]] = []
    lag: list[float] = []

    async def one(i: int, due: float, start: float) -> None:
        lag.append(time.perf_counter() - due)
        try:
            await writes[i % len(writes)](request_bytes(spec["tag"], i, templates), metadata=md,
                                          timeout=spec["timeout"])
            outcome = "ok"
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            outcome = (f"shed: {details[:50]}" if err.code() == grpc.StatusCode.UNAVAILABLE
                       and "REFUSED_STREAM" not in details
                       else "timeout" if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                       else f"{err.code().name}: {details[:60]}")
        out.append([due - start, outcome, time.perf_counter() - due])

    pending: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    t_phase, i = start, 0
    for rate, seconds in spec["phases"]:
        interval, k = PER_BATCH / rate, 0
        while (due := t_phase + k * interval) < t_phase + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one(i, due, start))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i, k = i + 1, k + 1
        t_phase += seconds
    await asyncio.gather(*pending)
    for ch in channels:
        await ch.close()
    return {"batches": out, "lag_p99": pct(lag, 0.99)}


async def closed_loop(spec: dict[str, Any], templates: list[bytes]) -> dict[str, Any]:
    """`writers` writers on `channels` connections for `seconds`: acknowledged records/s."""
    channels = _channels(spec["target"], spec["channels"])
    writes = _writes(channels)
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    done = [0]
    t_end = time.perf_counter() + spec["seconds"]

    async def writer(w: int) -> None:
        i = w
        while time.perf_counter() < t_end:
            await writes[w % len(writes)](request_bytes(spec["tag"], i, templates), metadata=md, timeout=60)
            done[0] += 1
            i += spec["writers"]

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(spec["writers"])))
    elapsed = time.perf_counter() - t0
    for ch in channels:
        await ch.close()
    return {"rps": done[0] * PER_BATCH / elapsed}


def generator(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    templates = record_templates(spec["accounts"], PER_BATCH, int(time.time() * 1000))
    run = closed_loop if spec["mode"] == "closed" else open_loop
    Path(spec["out"]).write_text(json.dumps(asyncio.run(run(spec, templates))))


# == driver =======================================================================================
def run_generator(proc: MeterdProc, accounts: list[str], tmp: Path, spec: dict[str, Any]) -> dict[str, Any]:
    out = tmp / f"{spec['tag']}.json"
    spec_path = tmp / f"{spec['tag']}.spec.json"
    spec_path.write_text(json.dumps({**spec, "target": proc.grpc, "accounts": accounts, "out": str(out)}))
    gen = subprocess.Popen([sys.executable, __file__, "--generator", str(spec_path)])
    trace = []  # the limiter's gauges every 0.25 s (diagnostic: why it armed, or not)
    with httpx.Client(base_url=proc.http, timeout=5) as c:
        t0 = time.perf_counter()
        while gen.poll() is None:
            try:
                text = c.get("/metrics").text
            except httpx.HTTPError:
                continue
            gauges = {line.split("{")[0][len("governance_adaptive_"):]: float(line.rsplit(" ", 1)[1])
                      for line in text.splitlines() if line.startswith("governance_adaptive_") and "{" in line
                      and "sheds" not in line}
            trace.append({"t": round(time.perf_counter() - t0, 2), **gauges})
            time.sleep(0.25)
    if gen.returncode:
        raise RuntimeError("generator failed")
    return {**json.loads(out.read_text()), "trace": trace}


def start_meterd(tmp: Path, env: dict[str, str] | None = None) -> tuple[MeterdProc, list[str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    proc = MeterdProc(["up"], meterd_env(tmp, **(env or {})), tmp).start()
    with httpx.Client(base_url=proc.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
        accounts = [c.post("/v1/accounts", json={"name": f"bench-{i}"}).json()["id"] for i in range(10)]
    return proc, accounts


def summarise(batches: list[list[Any]], step: float, down: float, capacity: float) -> dict[str, Any]:
    """Goodput: records acknowledged while the level ran (by answer time) per second; p99 of the
    batches scheduled in the level that were acknowledged; sheds by the answer's detail."""
    level = [b for b in batches if step <= b[0] < down]
    ok = [b[2] for b in level if b[1] == "ok"]
    acked = sum(1 for b in batches if b[1] == "ok" and step <= b[0] + b[2] < down)
    sheds = [b for b in batches if b[1].startswith("shed")]
    other: dict[str, int] = {}
    why: dict[str, int] = {}
    for b in level:
        if b[1] != "ok":
            kind = why if b[1].startswith("shed") else other
            kind[b[1]] = kind.get(b[1], 0) + 1
    first_shed = min((b[0] + b[2] for b in sheds if b[0] + b[2] >= step), default=None)
    before = pct([b[2] for b in batches if 1.0 <= b[0] < step and b[1] == "ok"], 0.99)
    return {"goodput": acked * PER_BATCH / (down - step) / capacity, "p99": pct(ok, 0.99), "before": before,
            "sheds": sum(why.values()), "sheds_total": len(sheds), "other": other, "why": why,
            "first_shed": None if first_shed is None else first_shed - step,
            "settled": settled(batches, down, 2 * before)}


def settled(batches: list[list[Any]], down: float, bound: float) -> float | None:
    """Seconds after the step down until every later window's p99 (by scheduled time) is <= bound with
    nothing lost; None if never."""
    after = [b for b in batches if b[0] >= down]
    end = max((b[0] for b in after), default=down)
    n = int((end - down) / WINDOW) + 1
    bad = -1
    for w in range(n):
        win = [b for b in after if down + w * WINDOW <= b[0] < down + (w + 1) * WINDOW]
        lat = [b[2] for b in win if b[1] == "ok"]
        if len(lat) < len(win) or (lat and pct(lat, 0.99) > bound):
            bad = w
    return None if bad == n - 1 else (bad + 1) * WINDOW


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="0.5,0.8,1.5,2,5")
    ap.add_argument("--level-seconds", type=float, default=6.0)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--arms", default="as shipped,dry run", help="per level, back to back: as shipped, dry run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--write-objective", type=float, help="add an arm with this objective for Write, s")
    ap.add_argument("--trace", action="store_true", help="print the limiter's gauges every 0.25 s")
    args = ap.parse_args()
    if args.generator:
        generator(args.generator)
        return
    import tempfile

    from ingest import _dry_run_plugins

    dry = {"METERD_GOVERNANCE": json.dumps({"plugins": _dry_run_plugins()})}
    arms: dict[str, dict[str, str]] = {"as shipped": {}, "dry run": dry}
    if args.write_objective:  # an operator's knob: a tighter objective for unary Write
        route = {"unary /meterd.v1.TrafficWriter/Write": {"priority": "write", "objective": args.write_objective}}
        arms[f"objective {args.write_objective:g} s"] = {
            "METERD_GOVERNANCE": json.dumps({"overrides": {"adaptive": {"routes": route}}})}
        args.arms += f",objective {args.write_objective:g} s"
    chosen = [a.strip() for a in args.arms.split(",")]
    rows, loads = [], [_load()]
    with tempfile.TemporaryDirectory(prefix="meterd-overload-") as tmp_s:
        tmp = Path(tmp_s)
        proc, accounts = start_meterd(tmp / "probe", dry)  # the service's capacity, not the limiter's
        try:
            capacity = run_generator(proc, accounts, tmp, {"mode": "closed", "tag": "cap", "writers": 128,
                                                          "channels": 8, "seconds": 8.0})["rps"]
            base = run_generator(proc, accounts, tmp, {"mode": "open", "tag": "base", "channels": args.channels,
                                                       "timeout": args.timeout, "phases": [[0.2 * capacity, 6.0]]})
            unloaded = pct([b[2] for b in base["batches"] if b[1] == "ok" and b[0] >= 1.0], 0.99)
        finally:
            proc.stop()
        print(f"capacity {capacity:,.0f} records/s, unloaded p99 {unloaded * 1000:.1f} ms", flush=True)
        for n, (level, arm) in enumerate((float(x), a) for x in args.levels.split(",") for a in chosen):
            loads.append(_load())
            proc, accounts = start_meterd(tmp / f"l{n}", arms[arm])
            try:
                phases = [[0.5 * capacity, WARM_S], [level * capacity, args.level_seconds], [0.5 * capacity, DOWN_S]]
                res = run_generator(proc, accounts, tmp, {"mode": "open", "tag": f"l{n}", "channels": args.channels,
                                                          "timeout": args.timeout, "phases": phases})
                server = _server_metrics(proc.http)
            finally:
                proc.stop()
            row = {"level": level, "arm": arm, **summarise(res["batches"], WARM_S, WARM_S + args.level_seconds, capacity),
                   "lag_p99": res["lag_p99"], "limiter_sheds": server.get("limiter sheds")}
            print(row, flush=True)
            if args.trace:
                for sample in res["trace"]:
                    print(sample)
            rows.append(row)
    text = render(args, capacity, unloaded, rows, loads)
    with args.out.open("a") as f:
        f.write(text + "\n")
    print(text)


def render(args: argparse.Namespace, capacity: float, unloaded: float, rows: list[dict[str, Any]],
           loads: list[str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def s(v: float | None) -> str:
        return "never" if v is None else f"{v:.2f} s"

    out = [f"## Open loop on gRPC `Write`, {args.channels} connection(s): {args.arms.replace(',', ' vs ')}", "",
           f"Machine: {machine()}; date: {when}. **The VM was shared** with other jobs running tests (load average "
           f"before the probe and each level: {', '.join(loads)}): absolute figures are noisy, read the ratios.", "",
           f"Capacity (closed loop, 128 writers on 8 connections, limiter in dry run, acknowledged): **{capacity:,.0f} records/s**; "
           f"unloaded p99 (open loop at 0.2x): **{unloaded * 1000:.0f} ms**. Each level: fresh `meterd up`, "
           f"{WARM_S:g} s at 0.5x, {args.level_seconds:g} s at the level (measured), {DOWN_S:g} s at 0.5x, the arms "
           "of a level back to back (dry run: the same build with the adaptive limiter deciding but never shedding); "
           f"batches of {PER_BATCH}, never retried, lost after {args.timeout:g} s. Goodput: records acknowledged "
           "while the level ran, per second, over the capacity; admitted p99: acknowledged batches scheduled in "
           "the level, from their scheduled time; settled: after the step down, every 250 ms window's p99 <= 2x "
           "the same run's 0.5x p99 before the step, nothing lost. Targets: goodput >= 90 % of capacity at "
           "overload, admitted p99 <= 2x unloaded, first shed <= 1 s after the step, p99 back <= 2 s after the "
           "step down, no shed at <= 0.8x.", "",
           "| level | arm | goodput / capacity | admitted p99 | p99 / unloaded | p99 at 0.5x before the step | "
           "sheds in level (all phases) | why (answer detail) | lost / other errors | first shed | settled after "
           "step down | generator lag p99 |",
           "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        other = ", ".join(f"{n} {k}" for k, n in r["other"].items()) or "0"
        why = "; ".join(f"{n} x {k[6:]}" for k, n in r["why"].items()) or "-"
        out.append(f"| {r['level']:g}x | {r['arm']} | {r['goodput']:.0%} | {r['p99'] * 1000:,.0f} ms | "
                   f"{r['p99'] / unloaded:.1f}x | {r['before'] * 1000:,.0f} ms | {r['sheds']} ({r['sheds_total']}) | "
                   f"{why} | {other} | {s(r['first_shed'])} | {s(r['settled'])} | {r['lag_p99'] * 1000:.0f} ms |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
