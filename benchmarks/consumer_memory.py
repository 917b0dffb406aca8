"""Issue 23 N5: the database-log consumer's memory on hostile cardinality.

Fills a fresh data dir's `ingest_log` with --rows batches of --nodes distinct 110-character node
ids each (written directly, as a full log would hold them), then starts `meterd consumer` alone and
samples its RSS every 0.1 s until the log is empty. Prints (and with --write appends to
benchmarks/results/consumer-memory.md) the peak RSS and how long the count took.
Run: PYTHONPATH=$PWD .venv/bin/python benchmarks/consumer_memory.py [--rows 64 --nodes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __name__ == "__main__":  # as a script: the repo root is importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from benchmarks.machine_info import machine  # noqa: E402
from service.storage import create_database, schema  # noqa: E402
from tests.service.test_consumer_poison_live import append_directly, batch  # noqa: E402
from tests.support.meterd import MeterdBin, MeterdProc, meterd_env  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "consumer-memory.md"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def pending(url: str) -> int:
    db = create_database(url)
    try:
        async with db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(schema.ingest_log))).scalar_one())
    finally:
        await db.close()


async def run(rows: int, nodes: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="meterd-consumer-memory-"))
    env = meterd_env(tmp)
    url = f"sqlite+aiosqlite:///{tmp / 'data' / 'meterd.db'}"
    subprocess.run([MeterdBin, "migrate"], env=env, cwd=tmp, check=True, capture_output=True)
    for i in range(rows):  # one row at a time: the filler's own memory stays small
        await append_directly(url, [batch(f"wide-{i}", "acc_memory", [f"node-{i}-{j:05d}-" + "x" * 96
                                                                       for j in range(nodes)])])
    consumer = MeterdProc(["consumer"], env, tmp).start()
    try:
        start_rss, peak, started = rss_mb(consumer.pid), 0.0, time.monotonic()
        while True:
            peak = max(peak, rss_mb(consumer.pid))
            if await pending(url) == 0:
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - started
    finally:
        consumer.stop(60)
    return {"start_rss_mb": start_rss, "peak_rss_mb": peak, "seconds": took}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--label", default="this tree")
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    r = asyncio.run(run(a.rows, a.nodes))
    line = (f"| {datetime.now(UTC):%Y-%m-%d %H:%M} UTC | {a.label} | {a.rows} x {a.nodes:,} distinct nodes | "
            f"{r['start_rss_mb']:.0f} MB | **{r['peak_rss_mb']:.0f} MB** | {r['seconds']:.1f} s |")
    print(line)
    if a.write:
        if not RESULTS.exists():
            RESULTS.write_text("# Database-log consumer memory on hostile cardinality (issue 23 N5)\n\n"
                               f"Machine: {machine()}. `meterd consumer` alone, counting a log filled directly.\n\n"
                               "| when | code | log | RSS at start | peak RSS | time to empty the log |\n"
                               "|---|---|---|---|---|---|\n")
        with RESULTS.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
