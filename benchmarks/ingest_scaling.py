"""`benchmarks/ingest.py --workers 1,2`: `meterd up --workers 1` beside multi-process arms (issue 26).

Each arm is `meterd up` on the database log (SQLite), as shipped (the adaptive limiter enforcing),
closed loop of `--concurrency` writers over 8 connections from a client in its own process. The
arms run in turn, `--rounds` times (1, 2, 1, 2, ...) so that load from other work on the machine
falls on every arm alike; the table gives each run and the ratios of the medians. meterd's CPU is
that of every one of its processes (supervisor and children), in total and per process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support.broker import running_tansu
from tests.support.meterd import ADMIN_TOKEN

try:  # run as a script: benchmarks/ is on sys.path
    from ingest import ArmResult, _load, _ms, pct, run_meterd_arm
    from machine_info import machine
except ImportError:  # imported as benchmarks.<module>
    from benchmarks.ingest import ArmResult, _load, _ms, pct, run_meterd_arm
    from benchmarks.machine_info import machine


def run(tmp: Path, spec: dict[str, Any], workers: list[int], rounds: int,
        env: dict[str, str] | None = None, kafka: bool = False, profile: Path | None = None) -> list[tuple[int, ArmResult, str]]:
    runs = []
    for r in range(rounds):
        for n in workers:
            where = tmp / f"w{n}-{r}"
            where.mkdir()
            load = _load()
            print(f"scaling: --workers {n}, round {r + 1}", file=sys.stderr)
            with contextlib.ExitStack() as stack:
                extra = {"METERD_WORKERS": str(n), **(env or {})}
                if kafka:  # a fresh broker per arm (4 partitions, meterd's default)
                    broker = stack.enter_context(running_tansu())
                    extra["METERD_KAFKA__BOOTSTRAP_SERVERS"] = broker.bootstrap
                capture = capture_writer(where, 3.0, profile) if profile and n > 1 and r == 0 else None
                arm = run_meterd_arm(f"--workers {n}", where, {**spec, "tag": f"w{n}r{r}"}, extra,
                                     settle_s=8.0 if kafka else 1.0)
            if capture is not None:
                capture.join(90)
            runs.append((n, arm, load))
    return runs


def capture_writer(where: Path, seconds: float, results: Path) -> threading.Thread:
    """Once the arm's load starts, a capture of writer-1 through meterd's own API (POST
    /debug/profiles/start on its admin port, the admin token), its flamegraph and folded stacks then
    copied to `results`."""

    def run() -> None:
        while not (where / "client.go").exists():
            time.sleep(0.02)
        time.sleep(0.5)  # past the first connections
        targets = json.loads((where / "data" / "meterd-up-targets.json").read_text())
        admin = next(t["targets"][0] for t in targets if t["labels"]["process"] == "writer-1")
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        started = httpx.post(f"http://{admin}/debug/profiles/start", params={"duration_s": seconds},
                             headers=headers, timeout=30).json()
        deadline = time.monotonic() + seconds + 60
        while time.monotonic() < deadline:  # the files appear when the capture ends (or meterd stops)
            files = [p for p in (where / "meterd_profile").glob(f"{started['id']}_*")
                     if p.name.endswith(("flamegraph.svg", "folded.txt"))]
            if len(files) == 2:
                for path in files:
                    shutil.copy(path, results / f"ingest-writer-profile-{path.name.rsplit('_', 1)[1]}")
                return
            time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _per_role(arm: ArmResult) -> dict[str, float]:
    """CPU microseconds per record by role (writers summed)."""
    out: dict[str, float] = {}
    for name, seconds in arm.processes.items():
        role = name.split("-")[0] if name != "meterd" else "supervisor (or the one process)"
        out[role] = out.get(role, 0.0) + seconds / arm.records * 1e6
    return out


def render(args: Any, runs: list[tuple[int, ArmResult, str]]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Ingest scaling: `meterd up --workers N` ({when})", "",
             f"Machine: {machine()}; usable CPUs {len(psutil.Process().cpu_affinity() or [])}. "
             "Shared with other work while measured: the load average before each arm is listed; compare "
             "the ratios, not the absolute numbers.", "",
             f"`python benchmarks/ingest.py --workers {args.workers} --records {args.records} "
             f"--concurrency {args.concurrency} --rounds {args.rounds}"
             f"{' --limiter-dry-run' if args.limiter_dry_run else ''}{' --kafka' if args.kafka else ''}`: "
             f"{'Kafka (Tansu, 4 partitions)' if args.kafka else 'database log'}, SQLite, "
             f"{'adaptive limiter in dry run' if args.limiter_dry_run else 'limiter as shipped'}, closed loop, "
             "client in its own process.", "",
             "| arm | records/s end to end | records/s acked | meterd CPU µs/record (all processes) | "
             "cores used | ack p50 / p99 | shed answers | load avg before |",
             "|---|---|---|---|---|---|---|---|"]
    for n, arm, load in runs:
        cores = arm.meterd_cpu_s / arm.e2e_s
        lines.append(f"| `--workers {n}` | {arm.e2e_rps:,.0f} | {arm.ack_rps:,.0f} | {arm.cpu_us:.2f} | {cores:.2f} | "
                     f"{_ms(pct(arm.lat, 0.5))} / {_ms(pct(arm.lat, 0.99))} | {arm.sheds} | {load} |")
    by_n: dict[int, list[ArmResult]] = {}
    for n, arm, _ in runs:
        by_n.setdefault(n, []).append(arm)
    base = statistics.median(a.e2e_rps for a in by_n[min(by_n)])
    base_cpu = statistics.median(a.cpu_us for a in by_n[min(by_n)])
    lines += ["", "## Scaling table (medians)", "",
              "| workers | records/s end to end | vs 1 | CPU µs/record | vs 1 | CPU µs/record by role |",
              "|---|---|---|---|---|---|"]
    for n, arms in sorted(by_n.items()):
        rps = statistics.median(a.e2e_rps for a in arms)
        cpu = statistics.median(a.cpu_us for a in arms)
        roles = _per_role(min(arms, key=lambda a: abs(a.e2e_rps - rps)))
        role_text = ", ".join(f"{k} {v:.2f}" for k, v in sorted(roles.items()))
        lines.append(f"| {n} | {rps:,.0f} | {rps / base:.2f}x | {cpu:.2f} | {cpu / base_cpu:.2f}x | {role_text} |")
    lines += ["", "Sizing from the multi-process arm: a writer process or a consumer can carry at most "
              "1 / (its CPU µs per record) records per second of one core; see README \"Scaling out\"."]
    return "\n".join(lines) + "\n"
