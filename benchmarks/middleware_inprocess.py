"""The middleware's cost per call without a server: each arm's ASGI app called directly, in-process.

    .venv/bin/python benchmarks/middleware_inprocess.py [--calls 8000] [--passes 5] [--profile ARM]

No sockets, no HTTP parsing: what is left is the Python each arm runs per request, so differences
between arms are microseconds of middleware (best of --passes passes of --calls calls, all arms in
one process, interleaved pass by pass). Arms are those of benchmarks/middleware.py. `--profile ARM`
prints cProfile's top functions for one arm instead.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from typing import Any

try:  # run as a script: benchmarks/ is on sys.path
    import middleware as mw  # noqa: E402
except ImportError:
    from benchmarks import middleware as mw  # noqa: E402

ARMS = ["bare", "governance-none", *(f"governance-only-{p}" for p in mw.PLUGINS), "governance-10%",
        "governance-10%-sdk-spans", "governance-100%"]
SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
         "path": "/hello", "raw_path": b"/hello", "query_string": b"", "root_path": "",
         "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")],
         "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


async def one_pass(app: Any, calls: int) -> float:
    """Seconds per call over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        await app(dict(SCOPE), receive, send)
    return (time.perf_counter() - start) / calls


def build(arm: str) -> Any:
    os.environ["BENCH_ARM"] = arm
    return mw.create_app()


async def run(args: argparse.Namespace) -> None:
    arms = args.arms.split(",")
    apps = {arm: build(arm) for arm in arms}
    for app in apps.values():
        await one_pass(app, 500)  # warm-up: caches, plans, specialised bytecode
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        await one_pass(apps[args.profile], args.calls)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    best = {arm: float("inf") for arm in arms}
    for _ in range(args.passes):
        for arm, app in apps.items():
            best[arm] = min(best[arm], await one_pass(app, args.calls))
    base = best.get("bare")
    print(f"| arm | us per call (best of {args.passes} x {args.calls}) | over bare |\n|---|---:|---:|")
    for arm, sec in best.items():
        print(f"| {arm} | {sec * 1e6:.1f} | {'' if base is None else f'{(sec - base) * 1e6:+.1f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=8000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--profile", metavar="ARM")
    args = ap.parse_args()
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
