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
- governance-10%-sdk-spans: governance-10% on a provider with the SDK's own id generator, so the
  tracing plugin leaves every span, unsampled ones included, to the SDK's `start_span` (what it
  did before governance/spans.py; setup_tracing's PresetIdGenerator is what enables the shortcut).
- governance-10%-default-gc: governance-10% without the GC settings below.

`--breakdown` adds arms that split governance-10%'s cost: governance-none (the ASGI adapter with an
empty chain), governance-only-<plugin> (the adapter with that one plugin, as configured above),
bare-ratelimit-headers (bare Starlette sending the two RateLimit fields the quota plugin adds, with
the same bytes: what those fields cost the server and the kernel, without governance) and
governance-10%-no-ratelimit-fields (governance-10% with quota's `headers: false`).

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
import tempfile
import time
from pathlib import Path
from typing import Any

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module> (uvicorn app factories)
    from benchmarks.machine_info import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "governance-middleware.md"
ARMS = ["bare", "governance-10%", "governance-100%", "peer-100%", "governance-10%-sdk-spans",
        "governance-10%-default-gc"]
HIGH_LIMIT = "100000000/minute"
PLUGINS = ("metrics", "tracing", "adaptive", "quota", "breaker")
BREAKDOWN = ["governance-none", *(f"governance-only-{p}" for p in PLUGINS), "bare-ratelimit-headers",
             "governance-10%-no-ratelimit-fields"]


# -- the apps (built inside each uvicorn subprocess from BENCH_ARM) ---------------------------------
def _discarding_provider(ratio: float, sdk_spans: bool = False) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from governance.tracing import setup_tracing

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = setup_tracing({"ratio": ratio, "set_global": False}, service_name="bench", exporter=Discard())
    if sdk_spans:  # the same provider with the SDK's own id generator: every span is started by the SDK
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        sampler, resource = provider.sampler, provider.resource
        provider.shutdown()
        provider = TracerProvider(sampler=sampler, resource=resource)
        provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider


def _starlette(headers: dict[str, str] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": "world"}, headers=headers)

    return Starlette(routes=[Route("/hello", hello)])


def _governed(ratio: float, only: tuple[str, ...] = PLUGINS, ratelimit_fields: bool = True,
              sdk_spans: bool = False) -> Any:
    from governance import Governance

    plugins = {
        "metrics": {"type": "metrics"},
        "tracing": {"type": "tracing"},
        # dry_run: every decision is computed (same cost) but nothing is shed; a saturating closed
        # loop would otherwise be (rightly) shed and cheap 503s would flatter the throughput.
        "adaptive": {"type": "adaptive", "dry_run": True},
        "quota": {"type": "quota", "limit": HIGH_LIMIT, "headers": ratelimit_fields},
        "breaker": {"type": "breaker"},
    }
    cfg = {"plugins": [plugins[name] for name in only]}
    gov = Governance.from_config(cfg, tracer_provider=_discarding_provider(ratio, sdk_spans))
    return gov.asgi(_starlette(), client_key=lambda scope: None)


def _ratelimit_fields() -> dict[str, str]:
    """The two RateLimit fields as the quota plugin renders them for HIGH_LIMIT (same bytes as on
    governance-10%'s replies, for a count of 99,999,999 left and 42 s to the window's reset)."""
    from governance import Governance
    from governance.core import Call
    from governance.plugins.quota import QuotaPlugin

    quota = Governance.from_config({"plugins": [{"type": "quota", "limit": HIGH_LIMIT}]}).plugin("quota")
    assert isinstance(quota, QuotaPlugin)
    call = Call("http", "/hello", "GET", None, 0.0)
    quota.decide(call, [(1, 42.0)])  # renders the fields as on a reply (here 99,999,999 left)
    return {k.decode(): v.decode() for k, v in call.response_headers or []}


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
                "governance-10%-default-gc": lambda: _governed(0.1),
                "governance-10%-sdk-spans": lambda: _governed(0.1, sdk_spans=True),
                "governance-none": lambda: _governed(0.1, ()),
                "governance-10%-no-ratelimit-fields": lambda: _governed(0.1, ratelimit_fields=False),
                "bare-ratelimit-headers": lambda: _starlette(_ratelimit_fields())}
    builders.update({f"governance-only-{p}": (lambda p=p: _governed(0.1, (p,))) for p in PLUGINS})
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


def start_server(arm: str, port: int, wrapper: list[str] | None = None,
                 ready_within: float = 30) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_ARM": arm, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0"}
    cmd = [*pin(0), *(wrapper or []), sys.executable, "-m", "uvicorn", "benchmarks.middleware:create_app",
           "--factory", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning",
           "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + ready_within
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
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "requests": requests, "p50": p50, "p99": p99, "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "errors": 1.0 if errors else 0.0}


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICK, int(fields[12]) / CLOCK_TICK


def measured_slice(proc: subprocess.Popen[bytes], port: int, seconds: float, connections: int) -> dict[str, float]:
    """One wrk slice plus the server's CPU per request in it (user and kernel, microseconds).

    The server is saturated, so its throughput is about 1 / CPU per request while it holds the
    core; CPU time does not count the moments the VM is descheduled, which wall-clock req/s does.
    """
    user0, sys0 = cpu_seconds(proc.pid)
    res = run_wrk(port, seconds, connections)
    user1, sys1 = cpu_seconds(proc.pid)
    n = res["requests"] or 1.0
    return {**res, "user_us": (user1 - user0) / n * 1e6, "sys_us": (sys1 - sys0) / n * 1e6,
            "cpu_us": (user1 - user0 + sys1 - sys0) / n * 1e6}



def instructions_per_request(arm: str, seconds: float, connections: int) -> float:
    """CPU instructions the server executes per request, counted by valgrind's callgrind.

    Unlike req/s, the count does not move with what else the machine is doing, so it settles which
    arm is cheaper, and by how much, when wall-clock rounds disagree. Counted over `seconds` of wrk
    load after a warm-up (counters zeroed in between with callgrind_control), so start-up is left
    out. Time-driven work (governance's 50 ms CPU sampler, the span exporter's thread) is spread
    over the ~40x fewer requests a server serves under valgrind, which overstates governance's count
    a little.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        port = free_port()
        proc = start_server(arm, port, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
                            ready_within=300)
        try:
            run_wrk(port, 5, connections)  # warm-up: the interpreter specialises its hot code first
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
            res = run_wrk(port, seconds, connections)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        finally:
            stop_server(proc)
        dump = Path(f"{out}.1")  # the -d dump; the file without a suffix is the one written at exit
        total = re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(errors="replace"), re.M)
        if total is None:
            raise RuntimeError(f"no instruction total in {dump}")
        return int(total.group(1)) / res["requests"]


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
    ap.add_argument("--breakdown", action="store_true",
                    help="also run the arms that split governance-10%%'s cost by plugin (see above)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--instructions", type=float, default=15.0, metavar="SECONDS",
                    help="also count instructions per request under callgrind for this long per arm (0: skip)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian package 'wrk'), then re-run.")
    if args.instructions and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        raise SystemExit("valgrind is not installed: `apt-get install valgrind`, or pass --instructions 0.")
    arms = args.arms.split(",") + (BREAKDOWN if args.breakdown else [])
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
                res = measured_slice(*servers[arm], args.duration, args.connections)
                runs[arm].append(res)
                print(f"round {rnd + 1} {arm:16s} {res['rps']:9.0f} req/s  p50 {res['p50']:.2f} ms  "
                      f"p99 {res['p99']:.2f} ms  CPU {res['user_us']:.1f} + {res['sys_us']:.1f} us/request  "
                      f"non-2xx {res['non2xx']:.0f}", flush=True)
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    instructions: dict[str, float] = {}
    if args.instructions:
        for arm in arms:
            instructions[arm] = instructions_per_request(arm, args.instructions, 16)
            print(f"instructions {arm:16s} {instructions[arm]:,.0f} per request", flush=True)
    report = render(runs, args, instructions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)


def render(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace,
           instructions: dict[str, float] | None = None) -> str:
    mean = {a: {k: statistics.mean(r[k] for r in rs) for k in ("rps", "p50", "p99", "non2xx", "user_us", "sys_us")}
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
        "| arm | req/s (mean) | min / median / max of rounds | p50 ms | p99 ms | vs bare | server CPU us/request "
        "(user + kernel, mean) | non-2xx |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for arm, m in mean.items():
        rps = sorted(r["rps"] for r in runs[arm])
        per = f"{rps[0]:.0f} / {statistics.median(rps):.0f} / {rps[-1]:.0f}"
        ratio = f"{m['rps'] / bare:.0%}" if bare else "-"
        lines.append(f"| {arm} | {m['rps']:.0f} | {per} | {m['p50']:.2f} | {m['p99']:.2f} | {ratio} | "
                     f"{m['user_us']:.1f} + {m['sys_us']:.1f} | {m['non2xx']:.0f} |")
    # Other load on a shared machine moves whole rounds up and down; a ratio of two arms run back to
    # back within one round cancels most of that, so the headline is the median of per-round ratios.
    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        per = [x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b], strict=True)]
        return statistics.median(per), per

    def cpu_ratio(a: str, b: str, key: str = "cpu_us") -> float:
        """Median per-round ratio of b's CPU per request to a's (a's throughput relative to b's, by CPU)."""
        return statistics.median(y[key] / x[key] for x, y in zip(runs[a], runs[b], strict=True))

    lines.append("")
    if "governance-100%" in runs and "peer-100%" in runs:
        med, per = ratio("governance-100%", "peer-100%")
        lines.append(f"- governance-100% / peer-100%: **{med:.1f}x** (median of rounds: "
                     f"{', '.join(f'{r:.1f}x' for r in per)}; target >= 6x, issue 19)")
    if "bare" in runs:
        for arm in (a for a in runs if a != "bare"):
            med, per = ratio(arm, "bare")
            target = " (target >= 60%, issue 19)" if arm == "governance-10%" else ""
            lines.append(f"- {arm} / bare: **{med:.0%}** (median of rounds: "
                         f"{', '.join(f'{r:.0%}' for r in per)}){target}")
        if "governance-10%" in runs:
            arm = "governance-10%"
            lines.append(f"- {arm} / bare by server CPU per request: {cpu_ratio(arm, 'bare'):.0%} (user time alone: "
                         f"{cpu_ratio(arm, 'bare', 'user_us'):.0%}, kernel time alone: "
                         f"{cpu_ratio(arm, 'bare', 'sys_us'):.0%}; medians of rounds)")
    if "bare" in runs and len(runs) > 2:
        # Differences, not ratios: what each arm adds to a request, in microseconds comparable across
        # arms (governance-none plus each plugin's share over it is what the plugins cost one at a
        # time; governance-10% measured more than that sum here).
        lines += ["", "Server CPU each arm adds per request over bare (median of per-round differences, us):", "",
                  "| arm | user + kernel | kernel |", "|---|---:|---:|"]
        for arm in (a for a in runs if a != "bare"):
            pairs = list(zip(runs[arm], runs["bare"], strict=True))
            total = statistics.median(x["cpu_us"] - y["cpu_us"] for x, y in pairs)
            kernel = statistics.median(x["sys_us"] - y["sys_us"] for x, y in pairs)
            lines.append(f"| {arm} | {total:+.1f} | {kernel:+.1f} |")
    if instructions:
        base = instructions.get("bare")
        lines += ["", f"Instructions per request (callgrind; {args.instructions:.0f} s of wrk -t1 -c16 per arm after "
                  "a 5 s warm-up; the same code gives the same count whatever else the machine does; "
                  "bare / arm is what the arm's throughput would be, relative to bare, if every instruction "
                  "cost the same):", "",
                  "| arm | instructions / request | bare / arm |", "|---|---:|---:|"]
        for arm, count in instructions.items():
            lines.append(f"| {arm} | {count:,.0f} | {base / count:.1%} |" if base else f"| {arm} | {count:,.0f} | - |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
