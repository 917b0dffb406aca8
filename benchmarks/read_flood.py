"""A flood of account reads and CSV exports beside edge writers (issue 24): the flood is what gets shed.

    .venv/bin/python benchmarks/read_flood.py [--flood 5] [--writers 0.5] [--seconds 12]

Probe (fresh `meterd up`, limiter in dry run: the service's capacity): write capacity (closed loop,
128 gRPC `Write` writers of 1000-record batches on 8 connections) and read capacity (closed loop, 16
HTTP clients alternating `GET /v1/accounts/{id}/balance` (priority `read`) and
`GET /v1/accounts/{id}/usage` as CSV (priority `export`)). Then two arms on fresh `meterd up`s as
shipped: writers alone at `--writers` x write capacity (open loop, benchmarks/ingest_overload.py's
generator), and the same writers with a flood at `--flood` x read capacity from 3 s to `--seconds` - 1 s
(open loop, its own process, raw HTTP/1.1 keep-alive connections, half balance reads, half CSV exports,
each account read with its own API key: the writers use the admin token, so the per-client quota
does not mix the two).
Targets: writes during the flood keep >= 95 % of their offered rate and p99 <= 1.5x the writers-alone p99.
Results go to benchmarks/results/read-flood.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from ingest import _dry_run_plugins, _load, _server_metrics, pct  # noqa: E402
from ingest_overload import PER_BATCH, run_generator, start_meterd  # noqa: E402
from machine_info import machine  # noqa: E402

from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "read-flood.md"
FLOOD_START = 3.0


# == HTTP flood (its own process) =================================================================
class Http:
    """Raw HTTP/1.1 GETs over a pool of keep-alive connections (no client library in the way)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str, accept: str, token: str, sched: float) -> tuple[int, float]:
        req = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: {accept}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
        conn = None
        try:
            async with asyncio.timeout(max(0.001, sched + self.timeout - time.perf_counter())):
                conn = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                if length:
                    await reader.readexactly(length)
            self.idle.append(conn)
            return status, time.perf_counter() - sched
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if conn is not None:
                conn[1].close()
            return 0, time.perf_counter() - sched

    def path(self, i: int, accounts: list[str], keys: list[str]) -> tuple[str, str, str]:
        """Each account's own key reads that account: the flood is many clients, not the writers' key."""
        n = (i // 2) % len(accounts)
        if i % 2:
            return f"/v1/accounts/{accounts[n]}/usage?step=1h", "text/csv", keys[n]
        return f"/v1/accounts/{accounts[n]}/balance", "application/json", keys[n]


async def flood(spec: dict[str, Any]) -> dict[str, Any]:
    http = Http(spec["host"], spec["port"], spec["timeout"])
    accounts, keys = spec["accounts"], spec["keys"]
    if spec["mode"] == "closed":
        done, t_end = [0], time.perf_counter() + spec["seconds"]

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < t_end:
                status, _ = await http.get(*http.path(i, accounts, keys), time.perf_counter())
                done[0] += status == 200
                i += 1

        await asyncio.gather(*(worker(w) for w in range(16)))
        return {"rps": done[0] / spec["seconds"]}
    await asyncio.sleep(spec["delay"])
    out: list[list[Any]] = []
    lag: list[float] = []

    async def one(i: int, sched: float) -> None:
        lag.append(time.perf_counter() - sched)
        status, took = await http.get(*http.path(i, accounts, keys), sched)
        out.append(["export" if i % 2 else "read", status, took])

    tasks, start = [], time.perf_counter()
    for i in range(int(spec["rate"] * spec["seconds"])):
        sched = start + i / spec["rate"]
        await asyncio.sleep(max(0.0, sched - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, sched)))
    await asyncio.gather(*tasks)
    return {"calls": out, "lag_p99": pct(lag, 0.99)}


def flood_main(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    Path(spec["out"]).write_text(json.dumps(asyncio.run(flood(spec))))


def start_flood(proc: Any, accounts: list[str], tmp: Path, spec: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    import httpx

    host, port = proc.http.split("://", 1)[1].rsplit(":", 1)
    with httpx.Client(base_url=proc.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
        keys = [c.post(f"/v1/accounts/{acc}/keys").json()["key"] for acc in accounts]
    out = tmp / f"{spec['tag']}.flood.json"
    spec_path = tmp / f"{spec['tag']}.flood-spec.json"
    spec_path.write_text(json.dumps({**spec, "host": host, "port": int(port), "accounts": accounts, "keys": keys,
                                      "out": str(out)}))
    return subprocess.Popen([sys.executable, __file__, "--flood-process", str(spec_path)]), out


# == driver =======================================================================================
class Split:
    """`meterd api`, `meterd writer` and `meterd consumer` as three processes on one data dir (the
    production shape), standing in for one `meterd up`: `http` is the API's, `grpc` the writer's."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True)
        env = meterd_env(tmp)
        self.procs = [MeterdProc([role], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp).start()
                      for role in ("api", "writer", "consumer")]
        self.http, self.grpc = self.procs[0].http, self.procs[1].grpc
        self.metrics = [self.http, self.procs[1].admin]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def start(tmp: Path, split: bool) -> tuple[Any, list[str]]:
    if not split:
        proc, accounts = start_meterd(tmp)
        proc.metrics = [proc.http]
        return proc, accounts
    import httpx

    both = Split(tmp)
    with httpx.Client(base_url=both.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
        accounts = [c.post("/v1/accounts", json={"name": f"bench-{i}"}).json()["id"] for i in range(10)]
    return both, accounts


def writes_in(batches: list[list[Any]], t0: float, t1: float) -> tuple[float, float, int]:
    """(acknowledged share of the batches scheduled in [t0, t1), their p99, how many were shed)."""
    sent = [b for b in batches if t0 <= b[0] < t1]
    ok = [b[2] for b in sent if b[1] == "ok"]
    return len(ok) / max(1, len(sent)), pct(ok, 0.99), sum(1 for b in sent if b[1] != "ok")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flood-process", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--flood", type=float, default=5.0, help="flood rate, x read capacity")
    ap.add_argument("--writers", type=float, default=0.5, help="writers' rate, x write capacity")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--split", action="store_true", help="meterd api, writer and consumer as three processes")
    args = ap.parse_args()
    if args.flood_process:
        flood_main(args.flood_process)
        return
    loads = [_load()]
    with tempfile.TemporaryDirectory(prefix="meterd-flood-") as tmp_s:
        tmp = Path(tmp_s)
        proc, accounts = start_meterd(tmp / "probe", {"METERD_GOVERNANCE": json.dumps({"plugins": _dry_run_plugins()})})
        try:
            w_cap = run_generator(proc, accounts, tmp, {"mode": "closed", "tag": "wcap", "writers": 128,
                                                        "channels": 8, "seconds": 6.0})["rps"]
            child, out = start_flood(proc, accounts, tmp, {"mode": "closed", "tag": "rcap", "seconds": 5.0,
                                                           "timeout": args.timeout})
            child.wait()
            r_cap = json.loads(out.read_text())["rps"]
        finally:
            proc.stop()
        print(f"write capacity {w_cap:,.0f} records/s, read capacity {r_cap:,.0f} req/s", flush=True)
        writers = {"mode": "open", "channels": 8, "timeout": args.timeout,
                   "phases": [[args.writers * w_cap, args.seconds]]}
        arms: dict[str, Any] = {}
        for arm in ("writers alone", "writers + flood"):
            loads.append(_load())
            proc, accounts = start(tmp / arm.replace(" ", "").replace("+", "-"), args.split)
            try:
                child = None
                if arm != "writers alone":
                    child, out = start_flood(proc, accounts, tmp, {
                        "mode": "open", "tag": "flood", "delay": FLOOD_START, "rate": args.flood * r_cap,
                        "seconds": args.seconds - FLOOD_START - 1.0, "timeout": args.timeout})
                res = run_generator(proc, accounts, tmp, {**writers, "tag": arm[:7] + str(len(arms))})
                flood_res = None
                if child is not None:
                    child.wait()
                    flood_res = json.loads(out.read_text())
                server = _server_metrics(proc.http)
                sheds = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
                         for url in proc.metrics for line in _metrics_text(url).splitlines()
                         if line.startswith("governance_adaptive_sheds_total{")}
            finally:
                proc.stop()
            arms[arm] = {"writes": writes_in(res["batches"], FLOOD_START, args.seconds - 1.0),
                         "lag": res["lag_p99"], "flood": flood_res, "sheds": sheds, "server": server}
            print(arm, arms[arm]["writes"], sheds, flush=True)
    text = render(args, w_cap, r_cap, arms, loads)
    with args.out.open("a") as f:
        f.write(text + "\n")
    print(text)


def _metrics_text(http: str) -> str:
    import httpx

    return httpx.get(f"{http}/metrics", timeout=10).text


def render(args: argparse.Namespace, w_cap: float, r_cap: float, arms: dict[str, Any], loads: list[str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    alone, both = arms["writers alone"], arms["writers + flood"]
    shape = "`meterd api` + `meterd writer` + `meterd consumer` (three processes)" if args.split else "`meterd up`"
    out = [f"## Flood of reads and CSV exports at {args.flood:g}x beside writers at {args.writers:g}x: {shape}", "",
           f"Machine: {machine()}; date: {when}. **The VM was shared** with other jobs running tests (load average "
           f"before the probe and each arm: {', '.join(loads)}): read the ratios of the two arms.", "",
           f"Write capacity (closed loop, 128 writers, dry run): {w_cap:,.0f} records/s; read capacity (closed loop, "
           f"16 clients, balance + CSV usage, dry run): {r_cap:,.0f} req/s. Writers: open loop of {PER_BATCH}-record "
           f"batches at {args.writers * w_cap:,.0f} records/s for {args.seconds:g} s, 8 connections, never retried; "
           f"flood: {args.flood * r_cap:,.0f} req/s from {FLOOD_START:g} s to {args.seconds - 1:g} s. Write figures "
           "cover batches scheduled in the flood window (same window in the writers-alone arm). Targets: write "
           "goodput >= 95 % of offered, write p99 <= 1.5x writers alone.", "",
           "| arm | writes acknowledged / offered | write p99 | p99 / writers alone | writes not acknowledged | "
           "generator lag p99 | limiter sheds (route, priority, reason) |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, arm in arms.items():
        share, p99, lost = arm["writes"]
        sheds = "; ".join(f"{k}: {v:.0f}" for k, v in arm["sheds"].items() if v) or "none"
        out.append(f"| {name} | {share:.1%} | {p99 * 1000:,.0f} ms | {p99 / alone['writes'][1]:.2f}x | {lost} | "
                   f"{arm['lag'] * 1000:.0f} ms | {sheds} |")
    calls = both["flood"]["calls"]
    out += ["", "| flood class | sent | 200 | 503 (shed) | other status | timeouts / connection errors | p99 of 200s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for cls in ("read", "export"):
        mine = [c for c in calls if c[0] == cls]
        ok = [c[2] for c in mine if c[1] == 200]
        out.append(f"| {cls} | {len(mine)} | {len(ok)} | {sum(c[1] == 503 for c in mine)} | "
                   f"{sum(c[1] not in (0, 200, 503) for c in mine)} | {sum(c[1] == 0 for c in mine)} | "
                   f"{pct(ok, 0.99) * 1000:,.0f} ms |")
    out.append(f"\nFlood generator lag p99: {both['flood']['lag_p99'] * 1000:.0f} ms.")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
