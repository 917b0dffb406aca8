"""Throughput of an asyncio HTTP service with a 100 Hz py-spy capture running vs not, in one run.

    .venv/bin/python benchmarks/profiling_overhead.py [--seconds 10] [--rounds 2] [--output PATH]

A Starlette app (CPU-bound handler with an await in it) runs under uvicorn in a subprocess with the
`profiling` library mounted. A closed-loop load generator in this process (raw keep-alive HTTP/1.1
over asyncio streams, so the client stays cheap) drives it for `--seconds` per arm; the arms are
interleaved (`--rounds` times) so drift hits every arm alike:

  baseline          no capture
  capture           a capture as SIGTRAP / the API / CPU pressure start it by default:
                    py-spy at 100 Hz, plus the cheap memory summary
  with tracemalloc  the same plus allocation-site tracing, as memory-pressure captures do
                    during their first tracemalloc_max_s (5 s); traced for the whole arm here

It prints a markdown table (req/s, ratio to baseline, latency) with the machine and date, and
saves it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module> (uvicorn app factories)
    from benchmarks.machine_info import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
WORK_ITEMS = 5000  # ~1 ms of pure-Python work per request on the reference machine


# --------------------------------------------------------------------------------------------- server


def serve(port_file: Path, profile_dir: Path) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    sys.path.insert(0, str(ROOT))
    from profiling import Profiler, ProfilingSettings

    settings = ProfilingSettings(
        service_name="bench",
        directory=profile_dir,
        rate_hz=100,
        watchdog={"enabled": False},
        tracemalloc_max_s=3600,  # trace through the whole arm, to measure what tracing costs
    )
    profiler = Profiler(settings)

    def checksum(n: int) -> int:
        total = 0
        for i in range(n):
            total = (total * 31 + i * i) % 1_000_003
        return total

    async def work(request: Request) -> JSONResponse:
        await asyncio.sleep(0)  # a real await point, as in a handler that talks to a database
        first = checksum(WORK_ITEMS // 2)
        await asyncio.sleep(0)
        second = checksum(WORK_ITEMS // 2)
        return JSONResponse({"a": first, "b": second, "items": [first % 97] * 20})

    app = Starlette(
        routes=[
            Route("/work", work),
            Mount("/debug/profiles", routes=profiler.starlette_routes(lambda request: True)),
        ]
    )
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such sockets;
    # with proto 0 every keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    loop = os.environ.get("BENCH_LOOP", "auto")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, loop=loop))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:  # the driver stops us with SIGINT; uvicorn re-raises it after shutdown
        pass


# --------------------------------------------------------------------------------------------- client


async def _one_connection(port: int, deadline: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /work HTTP/1.1\r\nHost: bench\r\n\r\n"
    done = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            latencies.append(time.perf_counter() - started)
            done += 1
    finally:
        writer.close()
    return done


async def load(port: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    counts = await asyncio.gather(*(_one_connection(port, deadline, latencies) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": sum(counts),
        "rps": sum(counts) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


def post(port: int, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=60)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------------------------- driver




ARMS = [
    ("baseline (no capture)", None),
    ("capture: py-spy 100 Hz (default)", False),
    ("capture + tracemalloc (memory trigger)", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="times the arms are interleaved")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.profile_dir)
        return

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"profiling-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    port_file = work / "port"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port_file), "--profile-dir", str(work / "captures")],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("benchmark server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        load_before = os.getloadavg()
        time.sleep(0.5)
        asyncio.run(load(port, 2.0))  # warm-up
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in ARMS}
        summaries: list[str] = []
        proc = psutil.Process(server.pid)
        for round_no in range(args.rounds):
            # Alternate the order (ABC, CBA, ...) so no arm always runs first or after a given arm.
            order = ARMS if round_no % 2 == 0 else list(reversed(ARMS))
            for name, tracemalloc in order:
                if tracemalloc is not None:
                    post(port, "/debug/profiles/start", {"duration_s": 600, "tracemalloc": tracemalloc})
                before = proc.cpu_times()
                result = asyncio.run(load(port, args.seconds))
                after = proc.cpu_times()
                # CPU the server spent per request: much less sensitive than req/s to other work
                # competing for the machine's cores.
                server_cpu = (after.user + after.system) - (before.user + before.system)
                result["cpu_ms_per_req"] = 1000 * server_cpu / max(1, result["requests"])
                if tracemalloc is not None:
                    info = post(port, "/debug/profiles/stop")
                    summaries.append(f"{name}: {info.get('py_spy_summary')}")
                    # py-spy is the server's child: its CPU lands in the children times once reaped.
                    done = proc.cpu_times()
                    spy = (done.children_user + done.children_system) - (
                        after.children_user + after.children_system
                    )
                    result["py_spy_cpu_share"] = spy / args.seconds
                    time.sleep(1.0)  # let the capture's file writing settle before the next arm
                results[name].append(result)
                print(f"round {round_no + 1} {name:40s} {result['rps']:8.1f} req/s "
                      f"cpu {result['cpu_ms_per_req']:.3f} ms/req "
                      f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    load_after = os.getloadavg()
    base_runs = results[ARMS[0][0]]
    base = statistics.mean(r["rps"] for r in base_runs)
    base_cpu = statistics.mean(r["cpu_ms_per_req"] for r in base_runs)
    date = datetime.now(UTC)
    lines = [
        "# Profiling overhead: throughput with a 100 Hz py-spy capture vs none",
        "",
        f"- date: {date:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- workload: Starlette under uvicorn (one process), CPU-bound handler (~{WORK_ITEMS} loop steps "
        f"with awaits), {CONCURRENCY} keep-alive connections, closed loop, {args.seconds:.0f} s per arm, "
        f"arms interleaved {args.rounds}x in one run (order alternates ABC/CBA); load generator and "
        "py-spy share the machine",
        "- py-spy per capture (errors = samples dropped because a non-blocking read raced the "
        "interpreter): " + "; ".join(summaries),
        f"- load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f} "
        "(other work on the machine shows up as noise between rounds)",
        f"- command: `.venv/bin/python benchmarks/profiling_overhead.py --seconds {args.seconds:g} --rounds {args.rounds}`",
        "",
        "| arm | req/s (mean) | runs | req/s ratio of means | median paired req/s ratio "
        "| server CPU ms/req | CPU/req ratio | py-spy CPU (share of a core) | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _ in ARMS:
        runs = results[name]
        rps = statistics.mean(r["rps"] for r in runs)
        each = " / ".join(f"{r['rps']:.0f}" for r in runs)
        # Each round's arm against the same round's baseline: drift between rounds cancels out.
        paired = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base_runs, strict=True))
        cpu = statistics.mean(r["cpu_ms_per_req"] for r in runs)
        spy = [r["py_spy_cpu_share"] for r in runs if "py_spy_cpu_share" in r]
        spy_text = f"{statistics.mean(spy):.1%}" if spy else "–"
        lines.append(
            f"| {name} | {rps:.1f} | {each} | {rps / base:.3f} | {paired:.3f} | {cpu:.3f} | "
            f"{cpu / base_cpu:.3f} | {spy_text} | "
            f"{statistics.mean(r['p50_ms'] for r in runs):.2f} | {statistics.mean(r['p99_ms'] for r in runs):.2f} |"
        )
    lines += [
        "",
        "Target: at most 5% fewer requests per second with a 100 Hz capture running (ratio >= 0.95).",
        "req/s on a shared 2-core machine moves with whatever else runs; the server's CPU time per",
        "request is the steadier measure of what sampling costs the service itself. py-spy's own CPU",
        "is listed separately: on a machine with a spare core it does not compete with the service.",
        "The tracemalloc arm is traced for the whole arm; a memory-pressure capture traces only its",
        "first `tracemalloc_max_s` (default 5 s), other captures not at all.",
        "",
    ]
    report = "\n".join(lines)
    print()
    print(report)
    output = args.output or ROOT / "benchmarks" / "results" / f"profiling-{date:%Y-%m-%d}.md"
    output.write_text(report)
    print(f"saved {output}")
    print(json.dumps({name: [r["rps"] for r in runs] for name, runs in results.items()}))


if __name__ == "__main__":
    main()
