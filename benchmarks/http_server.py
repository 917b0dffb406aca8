"""meterd's HTTP server vs stock uvicorn, same bare Starlette route: CPU per request, split into
user and kernel time, and req/s.

    apt-get install wrk
    .venv/bin/python benchmarks/http_server.py [--rounds 8] [--duration 2] [--connections 1,64]

Arms, each its own process pinned to CPU 0 (wrk on CPU 1), all serving at once while wrk moves
between them in `--duration` slices, `--rounds` times per connection count:

- uvicorn: `uvicorn.Server` with uvloop + httptools, as an app would run it by default.
- meterd: `service.runtime.http_server.HttpServer`, what `meterd up` serves with (uvicorn's protocol
  plus a header deadline and a header size cap, as a thin subclass).

CPU per request is the server process's utime/stime over the slice divided by the requests wrk
completed in it. Kernel time is where a saved send() shows; on this shared VM the absolute numbers
drift, so the headline is the median of per-round ratios between neighbouring slices.
Results: benchmarks/results/http-server.md (machine and date included).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine
    from middleware import free_port, measured_slice, pin, run_wrk, stop_server
except ImportError:  # imported as benchmarks.<module>
    from benchmarks.machine_info import machine
    from benchmarks.middleware import free_port, measured_slice, pin, run_wrk, stop_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "http-server.md"
ARMS = ["uvicorn", "meterd"]


def _app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    return Starlette(routes=[Route("/hello", hello)])


async def _serve(arm: str, port: int) -> None:
    import uvicorn

    from service.runtime.gc_tuning import tune_gc_for_serving
    from service.runtime.http_server import HttpServer

    app = _app()
    if arm == "uvicorn":
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                               lifespan="off", access_log=False, log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
    else:
        meterd = HttpServer(app, "127.0.0.1", port, name="bench")
        await meterd.start()
        task = asyncio.create_task(asyncio.Event().wait())
    tune_gc_for_serving()  # the same GC settings for every arm, as meterd applies them
    await task


def _start(arm: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [*pin(0), sys.executable, "-m", "benchmarks.http_server", "--serve", arm, str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{arm} died: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            run_wrk(port, 1, 1)
            return proc, port
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{arm} did not come up")


def render(runs: dict[int, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> str:
    med = statistics.median
    lines = [
        "# meterd's HTTP server vs stock uvicorn",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- route: bare Starlette `GET /hello` -> small JSON; {args.rounds} rounds of {args.duration:g} s slices "
        "per arm, arms interleaved; server pinned to CPU 0, wrk (1 thread) to CPU 1",
        "- CPU per request = the server's utime/stime over a slice / requests in it; ratios are medians of "
        "per-round ratios to the `meterd` arm's neighbouring slice",
        "",
    ]
    for conns, by_arm in runs.items():
        lines += [f"## {conns} connection{'s' if conns > 1 else ''}", "",
                  "| arm | req/s | CPU us/request | of which kernel | CPU / meterd's | kernel / meterd's | wrk p99 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        base = by_arm["meterd"]
        for arm, rows in by_arm.items():
            cpu_ratio = med(r["cpu_us"] / b["cpu_us"] for r, b in zip(rows, base, strict=True))
            sys_ratio = med(r["sys_us"] / b["sys_us"] for r, b in zip(rows, base, strict=True) if b["sys_us"])
            lines.append(f"| {arm} | {med(r['rps'] for r in rows):,.0f} | {med(r['cpu_us'] for r in rows):.1f} | "
                         f"{med(r['sys_us'] for r in rows):.1f} | {cpu_ratio:.2f} | {sys_ratio:.2f} | "
                         f"{med(r['p99'] for r in rows):.2f} ms |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", nargs=2, metavar=("ARM", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--connections", default="1,64")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian package 'wrk'), then re-run.")
    servers = {arm: _start(arm) for arm in ARMS}
    runs: dict[int, dict[str, list[dict[str, float]]]] = {}
    try:
        for conns in (int(c) for c in args.connections.split(",")):
            runs[conns] = {arm: [] for arm in ARMS}
            for _, port in servers.values():
                run_wrk(port, 2, conns)  # warm-up at this concurrency
            for rnd in range(args.rounds):
                for arm, (proc, port) in servers.items():
                    res = measured_slice(proc, port, args.duration, conns)
                    runs[conns][arm].append(res)
                    print(f"{conns:3d} conns round {rnd + 1} {arm:18s} {res['rps']:8.0f} req/s  "
                          f"cpu {res['cpu_us']:6.1f} us/req (kernel {res['sys_us']:5.1f})", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    report = render(runs, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
