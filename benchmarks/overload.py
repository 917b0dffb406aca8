"""Overload protection under open-loop load: no limiter vs a Kratos/sponge BBR port vs governance's
adaptive limiter, on a CPU-bound and an I/O-bound route.

    .venv/bin/python benchmarks/overload.py [--level-seconds 5] [--arms none,kratos-bbr,governance]

Each run starts a fresh server process (1 worker, pinned to CPU 0), warms it at 0.5x capacity so the
limiters have history, then steps to the level (0.5x ... 5x) and measures only the level phase. The
load generator here (pinned to CPU 1) is open loop: requests are scheduled at a fixed rate whatever
the server answers, latency is measured from the scheduled send time (no coordinated omission), and
a client gives up after --timeout seconds (a reply that late is not goodput).

Routes: /cpu burns ~--cpu-ms of pure Python CPU in the event loop (queueing happens *before* any
middleware); /io waits on a downstream with --io-cap concurrent slots of --io-ms each (queueing
happens inside the handler, CPU stays low). Capacity is measured with a closed loop against a
no-limiter server, once per route and again just before every run (this VM's speed drifts within
minutes; each run's rate and goodput ratio use the capacity probed just before it); the unloaded p99
is measured on the same probe server, at 0.2x, before every run too.

The server is meterd's own HTTP server for every arm (service.runtime.http_server: uvicorn's guarded
protocol on uvloop behind meterd's accept loop, which takes every queued connection per wake-up);
the governance-lazy-accept arm is governance with uvicorn's own listener instead (libuv accepts one
connection per loop iteration). --server uvicorn runs the plain uvicorn CLI for every arm.

Results go to benchmarks/results/governance-overload.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # run as a script: benchmarks/ is on sys.path
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module> (uvicorn app factories)
    from benchmarks.machine_info import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "governance-overload.md"
LEVELS = [0.5, 0.8, 1.0, 2.0, 3.0, 5.0]
ARMS = ["none", "kratos-bbr", "governance", "governance-lazy-accept"]
IDLE_EXPIRY = 4.0  # s; below uvicorn's 5 s keep-alive timeout (see Client._reusable)


# == server side ===================================================================================
class KratosBBR:
    """A faithful port of the Kratos (aegis) / sponge BBR limiter defaults, as pure-ASGI middleware.

    Defaults: window 10 s in 100 buckets, CPU threshold 800 per mille, CPU sampled every 500 ms from
    host-wide usage and smoothed as cpu = cpu*0.95 + usage*0.05, cool-off 1 s after the last drop.
    Drop when (cpu >= threshold or within cool-off of the last drop) and in_flight > 1 and
    in_flight > floor(max_pass * min_rt_ms * buckets_per_second / 1000 + 0.5); max_pass is the
    largest per-bucket completion count and min_rt the smallest per-bucket mean latency (whole ms,
    at least 1) over the window excluding the current bucket. Every completion counts as a pass.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.window, self.buckets = 10.0, 100
        self.blen = self.window / self.buckets
        self.threshold = 800.0
        self.passes = [0] * self.buckets
        self.rt_sum = [0] * self.buckets
        self.rt_cnt = [0] * self.buckets
        self.idx, self.bstart = 0, time.monotonic()
        self.inflight = 0
        self.prev_drop = 0.0
        self.init = time.monotonic()
        self.cpu = 0.0
        self._sampler: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        import psutil

        psutil.cpu_percent(None)
        while True:
            await asyncio.sleep(0.5)
            usage = psutil.cpu_percent(None) * 10  # host-wide, per mille
            self.cpu = self.cpu * 0.95 + usage * 0.05

    def _advance(self, now: float) -> None:
        steps = int((now - self.bstart) / self.blen)
        for _ in range(min(steps, self.buckets)):
            self.idx = (self.idx + 1) % self.buckets
            self.passes[self.idx] = self.rt_sum[self.idx] = self.rt_cnt[self.idx] = 0
        if steps > 0:
            self.bstart += steps * self.blen

    def _max_inflight(self) -> int:
        max_pass, min_rt = 1.0, math.inf
        for back in range(1, self.buckets):
            i = (self.idx - back) % self.buckets
            max_pass = max(max_pass, float(self.passes[i]))
            if self.rt_cnt[i]:
                min_rt = min(min_rt, self.rt_sum[i] / self.rt_cnt[i])
        if min_rt is math.inf or min_rt <= 0:
            min_rt = 1.0
        return int(math.floor(max_pass * min_rt * (1.0 / self.blen) / 1000.0 + 0.5))

    def _should_drop(self, now: float) -> bool:
        if self.cpu < self.threshold:
            if self.prev_drop == 0.0 or now - self.prev_drop > 1.0:
                return False
            return self.inflight > 1 and self.inflight > self._max_inflight()
        drop = self.inflight > 1 and self.inflight > self._max_inflight()
        if drop:
            self.prev_drop = now
        return drop

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample())
        now = time.monotonic()
        self._advance(now)
        if self._should_drop(now):
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        self.inflight += 1
        start = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            end = time.monotonic()
            self._advance(end)
            self.inflight -= 1
            self.passes[self.idx] += 1
            self.rt_sum[self.idx] += int((end - start) * 1000)  # Go: Duration.Milliseconds() truncates
            self.rt_cnt[self.idx] += 1


def create_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    cpu_iters = int(os.environ.get("OVERLOAD_CPU_ITERS", "80000"))
    io_cap = int(os.environ.get("OVERLOAD_IO_CAP", "4"))
    io_s = float(os.environ.get("OVERLOAD_IO_MS", "20")) / 1000
    downstream = asyncio.Semaphore(io_cap)

    # /cpu service time, read by the generator via /_served ("early" stays 0: no server-side refusals)
    served = {"calls": 0, "busy": 0.0, "early": 0}

    async def cpu(request: Any) -> PlainTextResponse:
        start = time.perf_counter()
        acc = 0
        for i in range(cpu_iters):  # pure Python work on the event loop, like heavy serialisation
            acc = (acc * 31 + i) % 1_000_003
        served["calls"] += 1
        served["busy"] += time.perf_counter() - start
        return PlainTextResponse(str(acc))

    async def io(request: Any) -> PlainTextResponse:
        async with downstream:  # a downstream that serves io_cap calls at a time
            await asyncio.sleep(io_s)
        return PlainTextResponse("ok")

    app: Any = Starlette(routes=[Route("/cpu", cpu), Route("/io", io)])
    # Every arm runs with the GC settings meterd applies once serving (fewer, shorter collection
    # pauses for all three alike).
    from service.runtime.gc_tuning import tune_gc_for_serving

    tune_gc_for_serving()
    arm = os.environ.get("OVERLOAD_ARM", "none")
    if arm == "kratos-bbr":
        governed: Any = KratosBBR(app)
    elif arm in ("governance", "governance-in-app", "governance-lazy-accept"):
        from governance import Governance

        governed = Governance.from_config({"plugins": [{"type": "adaptive"}]}).asgi(app)
    else:
        governed = app

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        # /_served answers outside any limiter (it must not be shed while the run is overloaded).
        if scope["type"] == "http" and scope["path"] == "/_served":
            body = f"{served['calls']} {served['busy']:.6f} {served['early']}".encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await governed(scope, receive, send)

    return outer


# == load generator ================================================================================
@dataclass
class Result:
    sched: float
    latency: float
    status: int  # 0 = timeout / connection error
    # How late the generator itself started the request. Latency counts from the scheduled time, so
    # a generator that falls behind inflates it; this tells that apart from the server's queueing.
    lag: float = 0.0


@dataclass
class Client:
    host: str
    port: int
    timeout: float
    # Idle keep-alive connections, newest last, with the time each was last used.
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(default_factory=list)

    def _reusable(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The newest idle connection, dropping any idle longer than the server keeps one open.

        uvicorn closes a keep-alive connection after 5 s idle; a request written into one it is
        closing fails with no reply, which is a client mistake, not the server's (HTTP clients
        expire pooled connections for this reason). The oldest sit at the bottom of the stack and
        are reached only when a burst needs many at once.
        """
        expired = time.perf_counter() - IDLE_EXPIRY
        while self.idle:
            reader, writer, used = self.idle.pop()
            if used > expired:
                return reader, writer
            writer.close()
        return None

    async def request(self, path: str, sched: float, out: list[Result]) -> None:
        lag = time.perf_counter() - sched
        req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        conn = None
        try:
            async with asyncio.timeout(max(0.001, sched + self.timeout - time.perf_counter())):
                conn = self._reusable() or await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
            now = time.perf_counter()
            out.append(Result(sched, now - sched, status, lag))
            self.idle.append((reader, writer, now))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            out.append(Result(sched, time.perf_counter() - sched, 0, lag))
            if conn is not None:
                conn[1].close()

    async def served(self) -> tuple[int, float, int] | None:
        """(calls, busy seconds) the server's /cpu handler has done so far, and the refusals made
        before a task existed; None if the server is too far behind to answer within 3 s (a
        no-limiter arm still working off its backlog)."""
        try:
            async with asyncio.timeout(3.0):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                try:
                    writer.write(b"GET /_served HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    calls, busy, early = (await reader.read()).split(b"\r\n\r\n", 1)[1].split()
                    return int(calls), float(busy), int(early)
                finally:
                    writer.close()
        except (TimeoutError, OSError):
            return None

    async def open_loop(self, path: str, rate: float, seconds: float) -> list[Result]:
        out: list[Result] = []
        tasks = []
        start = time.perf_counter() + 0.05
        n = int(rate * seconds)
        for i in range(n):
            sched = start + i / rate
            delay = sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.request(path, sched, out)))
        await asyncio.gather(*tasks)
        return out

    async def closed_loop(self, path: str, concurrency: int, seconds: float) -> float:
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            out: list[Result] = []
            while time.perf_counter() < end:
                await self.request(path, time.perf_counter(), out)
            done += sum(1 for r in out if r.status == 200)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / seconds

    def close(self) -> None:
        for _, w, _ in self.idle:
            w.close()
        self.idle.clear()


# == orchestration ================================================================================
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) >= 2 else []


def start_server(arm: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "OVERLOAD_ARM": arm, "PYTHONPATH": str(ROOT), "OVERLOAD_CPU_ITERS": str(args.cpu_iters),
           "OVERLOAD_IO_CAP": str(args.io_cap), "OVERLOAD_IO_MS": str(args.io_ms)}
    if args.server == "meterd":
        cmd = [*pin(0), sys.executable, "-m", "benchmarks.overload", "--serve", str(port)]
    else:
        cmd = [*pin(0), sys.executable, "-m", "uvicorn", "benchmarks.overload:create_app", "--factory", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log", "--backlog", "4096"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died") from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)  # queued work would otherwise keep it busy for seconds
    proc.wait()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q * len(values))) - 1)]


@dataclass
class Run:
    arm: str
    route: str
    level: float
    rate: float
    results: list[Result]
    step_at: float
    seconds: float
    capacity: float  # probed just before this run
    unloaded_p99: float  # measured on the same probe server, at 0.2x that capacity
    # /cpu only: 1 / the handler's mean service time during this run. On this VM the same handler
    # runs ~15 % slower under an open loop than under the closed-loop probe (the generator's own
    # CPU work shares the machine), so this is what the server could really do during the run.
    service_capacity: float | None = None
    early_shed: int | None = None  # of the sheds, those refused before a task existed (meterd's server)

    def share(self) -> float:
        return self.goodput() / self.capacity

    def service_share(self) -> float | None:
        return self.goodput() / self.service_capacity if self.service_capacity else None

    def service_level(self) -> float | None:
        """The offered rate as a multiple of what the server could do during the run (/cpu only)."""
        return self.rate / self.service_capacity if self.service_capacity else None

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if r.status == 200]

    def goodput(self) -> float:
        return len(self.ok) / self.seconds

    def early_note(self) -> str:
        return f" ({self.early_shed} before a task)" if self.early_shed else ""

    def shed(self) -> int:
        return sum(1 for r in self.results if r.status in (429, 503))

    def failed(self) -> int:
        return sum(1 for r in self.results if r.status not in (200, 429, 503))

    def admitted_p99(self, after: float = 0.0) -> float:
        return pct([r.latency for r in self.ok if r.sched - self.step_at >= after], 0.99)

    def generator_lag_p99(self, after: float = 2.0) -> float:
        return pct([r.lag for r in self.results if r.sched - self.step_at >= after], 0.99)

    def reaction(self, unloaded_p99: float, window: float = 0.25) -> tuple[float | None, float | None]:
        """(first shed after the step, first window from which admitted p99 stays <= 2x unloaded p99)."""
        rel = [(r.sched - self.step_at, r) for r in self.results]
        sheds = [t for t, r in rel if r.status in (429, 503)]
        first_shed = min(sheds) if sheds else None
        nwin = int(self.seconds / window)
        good_from = None
        for w in range(nwin):
            lats = [r.latency for t, r in rel if w * window <= t < (w + 1) * window and r.status == 200]
            bad = [r for t, r in rel if w * window <= t < (w + 1) * window and r.status == 0]
            ok = bool(lats) and pct(lats, 0.99) <= 2 * unloaded_p99 and not bad
            if ok and good_from is None:
                good_from = w * window
            elif not ok:
                good_from = None
        return first_shed, good_from


async def probe(route: str, args: argparse.Namespace, probes: int = 2) -> tuple[float, float]:
    """(capacity, unloaded p99) of a no-limiter server on `route`: capacity from closed-loop runs
    (16 in flight; other tenants of a shared machine only ever slow a probe down, so the best of a
    few short ones is the estimate: a low one would flatter every goodput ratio), then the p99 of 3 s
    of open-loop load at 0.2x that capacity."""
    proc, port = start_server("none", args)
    client = Client("127.0.0.1", port, args.timeout)
    try:
        await client.closed_loop(f"/{route}", 16, 0.5)
        cap = max([await client.closed_loop(f"/{route}", 16, 1.5) for _ in range(probes)])
        client.close()
        res = await client.open_loop(f"/{route}", 0.2 * cap, 3.0)
        return cap, pct([r.latency for r in res if r.status == 200], 0.99)
    finally:
        client.close()
        stop_server(proc)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"capacity": {}, "unloaded_p99": {}, "runs": []}
    routes = args.routes.split(",")
    for route in routes:
        out["capacity"][route], out["unloaded_p99"][route] = await probe(route, args, probes=3)
        print(f"{route}: capacity {out['capacity'][route]:.0f} req/s, unloaded p99 "
              f"{out['unloaded_p99'][route] * 1e3:.1f} ms", flush=True)
    for route in routes:
        for arm in args.arms.split(","):
            for level in args.levels:
                # The generator keeps every finished run's results, and late in a session the
                # collector's full passes over them held its loop up (generator lag p99 62 ms at the
                # last level, inflating that level's latencies): keep finished work out of its way.
                gc.collect()
                gc.freeze()
                # This VM's speed drifts by a third within minutes, so each run gets its own capacity,
                # probed on a no-limiter server just before it: the level's rate and its goodput
                # ratio then refer to what the machine could do at that time.
                cap, p99u = await probe(route, args)
                proc, port = start_server(arm, args)
                client = Client("127.0.0.1", port, args.timeout)
                try:
                    await client.open_loop(f"/{route}", 0.5 * cap, args.warm_seconds)
                    before = await client.served()
                    step_at = time.perf_counter() + 0.05  # open_loop starts sending 50 ms after its call
                    res = await client.open_loop(f"/{route}", level * cap, args.level_seconds)
                    after = await client.served()
                finally:
                    client.close()
                    stop_server(proc)
                service = None
                if before and after and after[1] > before[1]:
                    service = (after[0] - before[0]) / (after[1] - before[1])
                early_shed = after[2] - before[2] if before and after else None
                run = Run(arm, route, level, level * cap, res, step_at, args.level_seconds, cap, p99u, service,
                          early_shed)
                out["runs"].append(run)
                svc = run.service_share()
                print(f"  (probe: capacity {cap:.0f} req/s, unloaded p99 {p99u * 1e3:.1f} ms)", flush=True)
                lvl = run.service_level()
                print(f"  {route:3s} {arm:11s} {level:>3}x  capacity {cap:6.0f}  goodput {run.share():6.1%}"
                      f"{'' if svc is None else f' ({svc:6.1%} of service capacity; offered {lvl:.2f}x of it)'}  "
                      f"admitted p99 {run.admitted_p99() * 1e3:8.1f} ms (after 2 s "
                      f"{run.admitted_p99(after=2.0) * 1e3:6.1f} ms; generator lag p99 "
                      f"{run.generator_lag_p99() * 1e3:5.1f} ms)  shed {run.shed():5d}{run.early_note()}  "
                      f"timeouts/errors {run.failed():5d}", flush=True)
    return out




def _opt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def fmt_s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f} s"


def render(data: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# governance/ adaptive limiter under overload",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        ("- server: meterd's HTTP server (uvicorn + uvloop with a header deadline and size cap, behind meterd's "
         "accept loop that drains the kernel's queue per wake-up; governance-lazy-accept: uvicorn's own listener, "
         "one accept per loop iteration)"
         if args.server == "meterd"
         else "- server: the plain uvicorn CLI (uvloop: libuv accepts one connection per loop iteration)")
        + ", 1 worker, pinned to CPU 0; open-loop generator (this script, asyncio) on CPU 1",
        f"- routes: /cpu = {args.cpu_iters} iterations of pure-Python arithmetic per call on the event loop; "
        f"/io = downstream with {args.io_cap} slots x {args.io_ms:.0f} ms",
        f"- each run: fresh server, {args.warm_seconds:.0f} s at 0.5x, then {args.level_seconds:.0f} s at the level "
        f"(measured); client timeout {args.timeout:.1f} s (later replies are not goodput)",
        "- goodput = 2xx replies/s within the timeout, as a share of the capacity probed just before the run (closed "
        "loop, 16 in flight, no limiter) and, for /cpu, of the service capacity in the run (1 / the handler's mean "
        "service time while the level ran: the same handler runs slower under the open loop on this VM); "
        "admitted p99 = p99 latency of 2xx "
        "replies measured from the scheduled send time; reaction = time after the step until the first shed / "
        "until every 250 ms window's admitted p99 stays <= 2x unloaded p99 with no timeouts; generator lag = how "
        "late the generator itself started requests (a generator falling behind adds that much to every latency); "
        "shed = refusals",
        "",
    ]
    for route in data["capacity"]:
        cap, p99u = data["capacity"][route], data["unloaded_p99"][route]
        lines += [f"## /{route}: capacity {cap:.0f} req/s at the start, unloaded p99 {p99u * 1e3:.1f} ms", "",
                  "| arm | load | capacity probed before the run (req/s) | goodput / that capacity "
                  "| service capacity in the run (req/s) | offered / service capacity | goodput / service capacity "
                  "| unloaded p99 probed before the run | admitted p99 (whole level) | admitted p99 after 2 s "
                  "| p99 after 2 s / unloaded | generator lag p99 after 2 s | shed | timeouts+errors | first shed "
                  "| p99 settled |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for run in (r for r in data["runs"] if r.route == route):
            first, settled = run.reaction(run.unloaded_p99)
            p99, steady = run.admitted_p99(), run.admitted_p99(after=2.0)
            lines.append(
                f"| {run.arm} | {run.level}x | {run.capacity:.0f} | {run.share():.0%} | {_opt(run.service_capacity, '.0f')} | "
                f"{_opt(run.service_level(), '.2f')}{'' if run.service_level() is None else 'x'} | "
                f"{_opt(run.service_share(), '.0%')} | {run.unloaded_p99 * 1e3:.1f} ms | {p99 * 1e3:.1f} ms | "
                f"{steady * 1e3:.1f} ms | {steady / run.unloaded_p99:.1f}x | {run.generator_lag_p99() * 1e3:.1f} ms | "
                f"{run.shed()}{run.early_note()} | {run.failed()} | "
                f"{fmt_s(first)} | {fmt_s(settled)} |")
        lines.append("")
    lines += ["## Targets (issue 3)", "",
              "At >= 2x: goodput >= 90% of capacity, admitted p99 <= 2x unloaded p99, reacting within 2 s of the "
              "step; no false rejections at <= 0.8x.", ""]
    for route in data["capacity"]:
        for arm in args.arms.split(","):
            runs = [r for r in data["runs"] if r.route == route and r.arm == arm]
            high = [r for r in runs if r.level >= 2]
            low = [r for r in runs if r.level <= 0.8]
            good = all(r.share() >= 0.9 for r in high)
            service = [r.service_share() for r in high]
            good_service = "" if None in service or not service else \
                f" (vs service capacity in the run: {'met' if min(service) >= 0.9 else 'MISSED'}, " \
                f"{' / '.join(f'{v:.0%}' for v in service)})"
            lat = all(r.admitted_p99(after=2.0) <= 2 * r.unloaded_p99 for r in high)
            react = all((s := r.reaction(r.unloaded_p99)[1]) is not None and s <= 2.0 for r in high)
            false_rej = sum(r.shed() for r in low)
            # A level is a multiple of the probed capacity; when the machine slowed down during the run
            # the same rate may have been more than it could serve, and shedding then is no mistake.
            truly_low = [r for r in low if r.service_level() is not None and r.service_level() <= 0.8]
            split = "" if not any(r.service_capacity for r in low) else \
                f" ({sum(r.shed() for r in truly_low)} in the {len(truly_low)} of {len(low)} runs whose offered " \
                "rate was <= 0.8x the service capacity in the run)"
            lines.append(f"- /{route} {arm}: goodput {'met' if good else 'MISSED'}{good_service}, admitted p99 "
                         f"{'met' if lat else 'MISSED'}, reaction {'met' if react else 'MISSED'}, "
                         f"sheds at <= 0.8x: {false_rej}{split}")
    return "\n".join(lines) + "\n"


def serve(port: int) -> None:
    """The server side of one run on meterd's HTTP server (as `meterd up` serves the API)."""
    import uvloop

    from service.runtime.http_server import HttpServer

    async def run() -> None:
        # governance-lazy-accept: the same app with uvicorn's own listener (uvloop accepts one
        # connection per loop iteration) instead of meterd's accept loop, which drains the queue.
        eager = not os.environ.get("OVERLOAD_ARM", "").endswith("-lazy-accept")
        server = HttpServer(create_app(), "127.0.0.1", port, name="overload", eager_accept=eager)
        await server.start()
        await asyncio.Event().wait()

    uvloop.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # a run's server process
    ap.add_argument("--server", choices=("meterd", "uvicorn"), default="meterd")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--routes", default="cpu,io")
    ap.add_argument("--levels", type=lambda v: [float(x) for x in v.split(",")], default=LEVELS,
                    help="load levels, multiples of the probed capacity (default: %(default)s)")
    ap.add_argument("--level-seconds", type=float, default=6.0)
    ap.add_argument("--warm-seconds", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--cpu-iters", type=int, default=80000)
    ap.add_argument("--io-cap", type=int, default=4)
    ap.add_argument("--io-ms", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.serve:
        serve(args.serve)
        return
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    data = runner(measure(args))
    report = render(data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
