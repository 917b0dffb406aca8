"""Middleware cost, side by side: bare Starlette vs governance/ vs the usual peer stack.

    .venv/bin/pip install -e '.[bench]'     # slowapi, starlette-exporter, opentelemetry-instrumentation-asgi
    apt-get install wrk                     # the load generator
    .venv/bin/python benchmarks/middleware.py [--duration 2] [--rounds 15] [--connections 64]

Every arm is the same route (`GET /hello` -> small JSON) in its own uvicorn process (1 worker,
pinned to CPU 0 when there are >= 2 CPUs; wrk pinned to CPU 1). All arms' servers run at once and
wrk loads one at a time for `--duration` seconds, arm after arm, `--rounds` times; the headline
ratios are medians of per-round ratios (neighbouring slices see the same machine). Arms:

- bare: Starlette only.
- governance-10%: metrics + tracing (ParentBased(TraceIdRatio 0.1), BatchSpanProcessor into a
  discarding exporter, so span export costs what the SDK costs and nothing else) + adaptive (in
  dry-run: it decides every call but sheds none, because wrk's saturating closed loop *is* overload)
  + quota (memory storage, fixed window (the default), limit far above the load) + SRE breaker.
- governance-100%: the same with every request traced.
- peer-100%: slowapi (SlowAPIMiddleware, default limit far above the load) + starlette-exporter's
  PrometheusMiddleware + opentelemetry-instrumentation-asgi's OpenTelemetryMiddleware, all
  requests traced into the same discarding exporter.
- governance-10%-default-gc: governance-10% without the GC settings below.

Every other arm (bare and peer included) runs with the garbage-collector settings meterd applies
after start-up (service/runtime/gc_tuning.py: gc.freeze() + young threshold 10,000).

Results are written to benchmarks/results/governance-middleware.md (machine and date included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module> (uvicorn app factories)
    from benchmarks.machine_info import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "governance-middleware.md"
ARMS = ["bare", "governance-10%", "governance-100%", "peer-100%", "governance-10%-default-gc"]
HIGH_LIMIT = "100000000/minute"


# -- the apps (built inside each uvicorn subprocess from BENCH_ARM) ---------------------------------
def _discarding_provider(ratio: float) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from governance.tracing import setup_tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return setup_tracing({"ratio": ratio, "set_global": False}, service_name="bench", exporter=Discard())


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    return Starlette(routes=[Route("/hello", hello)])


def _governed(ratio: float) -> Any:
    from governance import Governance

    cfg = {"plugins": [
        {"type": "metrics"},
        {"type": "tracing"},
        # dry_run: every decision is computed (same cost) but nothing is shed; a saturating closed
        # loop would otherwise be (rightly) shed and cheap 503s would flatter the throughput.
        {"type": "adaptive", "dry_run": True},
        {"type": "quota", "limit": HIGH_LIMIT},
        {"type": "breaker"},
    ]}
    gov = Governance.from_config(cfg, tracer_provider=_discarding_provider(ratio))
    return gov.asgi(_starlette(), client_key=lambda scope: None)


def _peer() -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from slowapi import Limiter
    from slowapi.middleware import SlowAPIMiddleware
    from slowapi.util import get_remote_address
    from starlette_exporter import PrometheusMiddleware

    app = _starlette()
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[HIGH_LIMIT])
    app.add_middleware(SlowAPIMiddleware)
    app.add_middleware(PrometheusMiddleware)
    return OpenTelemetryMiddleware(app, tracer_provider=_discarding_provider(1.0))


def create_app() -> Any:
    arm = os.environ["BENCH_ARM"]
    builders = {"bare": _starlette, "governance-10%": lambda: _governed(0.1),
                "governance-100%": lambda: _governed(1.0), "peer-100%": _peer,
                "governance-10%-default-gc": lambda: _governed(0.1)}
    if arm not in builders:
        raise SystemExit(f"unknown arm {arm}")
    app = builders[arm]()
    if not arm.endswith("-default-gc"):
        # Every arm runs with the GC settings `meterd` applies once it has started, so the arms
        # differ only in their middleware; the -default-gc arm shows what those settings are worth.
        from service.runtime.gc_tuning import tune_gc_for_serving

        tune_gc_for_serving()
    return app


# -- the harness ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def start_server(arm: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_ARM": arm, "PYTHONPATH": str(ROOT)}
    cmd = [*pin(0), sys.executable, "-m", "uvicorn", "benchmarks.middleware:create_app", "--factory",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning",
           "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{arm} server died: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{arm} server did not come up on {port}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(port: int, seconds: float, connections: int) -> dict[str, float]:
    cmd = [*pin(1), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
           f"http://127.0.0.1:{port}/hello"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "errors": 1.0 if errors else 0.0}




def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("starlette", "uvicorn", "uvloop", "prometheus-client", "opentelemetry-sdk", "limits", "slowapi",
                "starlette-exporter", "opentelemetry-instrumentation-asgi"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (missing)")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds of measured load per slice")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian package 'wrk'), then re-run.")
    arms = args.arms.split(",")
    runs: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    # All arms serve at once (idle ones cost nothing) and the load moves between them in short
    # slices, so neighbouring slices of two arms see the same machine: on a shared VM whose speed
    # drifts by a third within minutes, that is what makes per-round ratios comparable.
    servers = {}
    try:
        for arm in arms:
            port = free_port()
            servers[arm] = (start_server(arm, port), port)
            run_wrk(port, args.warmup, args.connections)
        for rnd in range(args.rounds):
            for arm in arms:
                res = run_wrk(servers[arm][1], args.duration, args.connections)
                runs[arm].append(res)
                print(f"round {rnd + 1} {arm:16s} {res['rps']:9.0f} req/s  p50 {res['p50']:.2f} ms  "
                      f"p99 {res['p99']:.2f} ms  non-2xx {res['non2xx']:.0f}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    report = render(runs, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)


def render(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    mean = {a: {k: statistics.mean(r[k] for r in rs) for k in ("rps", "p50", "p99", "non2xx")}
            for a, rs in runs.items()}
    bare = mean.get("bare", {}).get("rps")
    lines = [
        "# governance/ middleware cost",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- versions: {versions()}",
        f"- load: wrk -t1 -c{args.connections}, {args.rounds} rounds of one {args.duration:.0f} s slice per arm "
        f"(every server started and warmed for {args.warmup:.0f} s first, all serving throughout); "
        "server: uvicorn, 1 worker (uvloop, httptools); "
        "server pinned to CPU 0, wrk to CPU 1",
        "- route: GET /hello -> {\"hello\": \"world\"}",
        "- GC: every arm except *-default-gc runs with meterd's serving GC settings (gc.freeze() after start-up, "
        "young threshold 10,000; service/runtime/gc_tuning.py)",
        "",
        "| arm | req/s (mean) | min / median / max of rounds | p50 ms | p99 ms | vs bare | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for arm, m in mean.items():
        rps = sorted(r["rps"] for r in runs[arm])
        per = f"{rps[0]:.0f} / {statistics.median(rps):.0f} / {rps[-1]:.0f}"
        ratio = f"{m['rps'] / bare:.0%}" if bare else "-"
        lines.append(f"| {arm} | {m['rps']:.0f} | {per} | {m['p50']:.2f} | {m['p99']:.2f} | {ratio} | "
                     f"{m['non2xx']:.0f} |")
    # Other load on a shared machine moves whole rounds up and down; a ratio of two arms run back to
    # back within one round cancels most of that, so the headline is the median of per-round ratios.
    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        per = [x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b], strict=True)]
        return statistics.median(per), per

    lines.append("")
    if "governance-100%" in runs and "peer-100%" in runs:
        med, per = ratio("governance-100%", "peer-100%")
        lines.append(f"- governance-100% / peer-100%: **{med:.1f}x** (median of rounds: "
                     f"{', '.join(f'{r:.1f}x' for r in per)}; target >= 4x)")
    if "bare" in runs:
        for arm in (a for a in runs if a != "bare"):
            med, per = ratio(arm, "bare")
            target = " (target >= 70%)" if arm == "governance-10%" else ""
            lines.append(f"- {arm} / bare: **{med:.0%}** (median of rounds: "
                         f"{', '.join(f'{r:.0%}' for r in per)}){target}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
