"""Throughput of an asyncio HTTP service with a 100 Hz py-spy capture running vs not, in one run.

    .venv/bin/python benchmarks/profiling.py [--seconds 10] [--rounds 2] [--output PATH]

A Starlette app (CPU-bound handler with an await in it) runs under uvicorn in a subprocess with the
`profiling` library mounted. A closed-loop load generator in this process (raw keep-alive HTTP/1.1
over asyncio streams, so the client stays cheap) drives it for `--seconds` per arm; the arms are
interleaved (`--rounds` times) so drift hits every arm alike:

  baseline        no capture
  py-spy          a capture at 100 Hz with tracemalloc off (the sampling cost alone)
  full capture    a capture at 100 Hz with the default tracemalloc allocation tracking

It prints a markdown table (req/s, ratio to baseline, latency) with the machine and date, and
saves it under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
WORK_ITEMS = 6000  # ~1 ms of pure-Python work per request on the reference machine


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
        service_name="bench", directory=profile_dir, rate_hz=100, watchdog={"enabled": False}
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

    async def capture(request: Request) -> JSONResponse:
        # Bench-only control: choose whether the capture tracks allocations too.
        settings.tracemalloc = request.query_params.get("tracemalloc") == "1"
        info = await profiler.start_capture("api", duration_s=600)
        return JSONResponse(info.to_dict())

    async def stop(request: Request) -> JSONResponse:
        return JSONResponse((await profiler.stop_capture()).to_dict())

    app = Starlette(
        routes=[
            Route("/work", work),
            Route("/bench/capture", capture, methods=["POST"]),
            Route("/bench/stop", stop, methods=["POST"]),
            Mount("/debug/profiles", routes=profiler.starlette_routes(lambda request: True)),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    asyncio.run(server.serve(sockets=[sock]))


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


def post(port: int, path: str) -> dict[str, object]:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}{path}", timeout=60)
    response.raise_for_status()
    return response.json()


# --------------------------------------------------------------------------------------------- driver


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    py_spy = Path(sys.executable).with_name("py-spy")
    version = subprocess.run([str(py_spy), "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, {version}"
    )


ARMS = [("baseline", None), ("py-spy 100 Hz", "0"), ("full capture (py-spy + tracemalloc)", "1")]


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
        time.sleep(0.5)
        asyncio.run(load(port, 2.0))  # warm-up
        results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in ARMS}
        samples: list[int] = []
        for round_no in range(args.rounds):
            for name, tracemalloc in ARMS:
                if tracemalloc is not None:
                    post(port, f"/bench/capture?tracemalloc={tracemalloc}")
                result = asyncio.run(load(port, args.seconds))
                if tracemalloc is not None:
                    info = post(port, "/bench/stop")
                    samples.append(int(info.get("samples") or 0))
                results[name].append(result)
                print(f"round {round_no + 1} {name:40s} {result['rps']:8.1f} req/s "
                      f"p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()

    base = statistics.mean(r["rps"] for r in results["baseline"])
    date = datetime.now(UTC)
    lines = [
        "# Profiling overhead: throughput with a 100 Hz py-spy capture vs none",
        "",
        f"- date: {date:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- workload: Starlette under uvicorn (one process), CPU-bound handler (~{WORK_ITEMS} loop steps "
        f"with awaits), {CONCURRENCY} keep-alive connections, closed loop, {args.seconds:.0f} s per arm, "
        f"arms interleaved {args.rounds}x in one run; load generator and py-spy share the machine",
        f"- samples taken by py-spy per capture arm: {', '.join(map(str, samples))}",
        "- command: `.venv/bin/python benchmarks/profiling.py`",
        "",
        "| arm | req/s (mean) | runs | ratio to baseline | drop | p50 ms | p99 ms |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, _ in ARMS:
        runs = results[name]
        rps = statistics.mean(r["rps"] for r in runs)
        each = " / ".join(f"{r['rps']:.0f}" for r in runs)
        lines.append(
            f"| {name} | {rps:.1f} | {each} | {rps / base:.3f} | "
            f"{100 * (1 - rps / base):+.1f}% | {statistics.mean(r['p50_ms'] for r in runs):.2f} | "
            f"{statistics.mean(r['p99_ms'] for r in runs):.2f} |"
        )
    lines += ["", "Target: at most 5% fewer requests per second with a 100 Hz capture running.", ""]
    report = "\n".join(lines)
    print()
    print(report)
    output = args.output or ROOT / "benchmarks" / "results" / f"profiling-{date:%Y-%m-%d}.md"
    output.write_text(report)
    print(f"saved {output}")
    print(json.dumps({name: [r["rps"] for r in runs] for name, runs in results.items()}))


if __name__ == "__main__":
    main()
