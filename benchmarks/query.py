"""Usage and billing queries over a year of minute data: the rollup-backed API against the
minute-table queries meterd ran before the rollups (issue 20), side by side in one run.

One account gets a year of per-minute usage (525,600 minutes, 50 edge nodes in 3 billing regions) through
Ledger.apply, the consumers' own flush transaction, so the rollups are the ones production
writes. Then, interleaved round by round on the same database:

- usage, one year at step=1d, through the HTTP API (in process, ASGI) and, as before, one SQL
  GROUP BY over the minute table;
- the same in Asia/Shanghai (local days from hourly rows);
- billing for one month through the API and, as before rollups existed, its 5-minute intervals
  summed from the minute table (then the same p95 arithmetic);
- billing for one month in each billing mode (issue 27), with one bill per region, and the forecast.

SQLite (a temporary file) always; PostgreSQL too unless --no-postgres (a throwaway cluster started
with tests/support/servers.py). Writes benchmarks/results/query.md.

Run: .venv/bin/python benchmarks/query.py [--rounds 40] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import and_, func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine  # noqa: E402

from service.api.app import ApiContext, build_api  # noqa: E402
from service.auth import Authenticator  # noqa: E402
from service.billing import bandwidth_bps  # noqa: E402
from service.storage import Repository, create_database, schema  # noqa: E402
from service.storage.ledger import Flush, Ledger  # noqa: E402
from service.timezones import boundaries, month_bounds  # noqa: E402

TOKEN = "bench-admin-token"
YEAR_START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
YEAR_END = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
MONTH = "2025-07"
NODES = tuple(f"edge-{i:02d}" for i in range(1, 51))  # 50 nodes in 3 billing regions (issue 27)
REGIONS = {n: ("cn", "eu", "us")[i % 3] for i, n in enumerate(NODES)}
MODES = ("month95", "day_peak", "month_avg_day_peak", "month_4th_day_peak", "month_avg_day95",
         "month_top5_day_peak", "night_half95")


async def load_year(repo: Repository) -> str:
    acc = (await repo.create_account("bench", 10**15))["id"]
    for node, region in REGIONS.items():
        await repo.set_node_region(node, region)
    rng = random.Random(1)
    ledger = Ledger(repo.db)
    for day in range(YEAR_START, YEAR_END, 86400):
        usage = {(acc, rng.choice(NODES), m): [rng.randrange(10**8), rng.randrange(10**9), rng.randrange(1, 500)]
                 for m in range(day, day + 86400, 60)}
        await ledger.apply(Flush(usage=usage))
    return acc


async def minute_table_usage(repo: Repository, acc: str, start: int, end: int, step: int) -> list[tuple]:
    """The query GET usage ran before rollups: one GROUP BY over the minute rows."""
    u = schema.usage_minute
    bucket = ((u.c.minute // step) * step).label("bucket")
    q = (select(bucket, func.sum(u.c.bytes_in), func.sum(u.c.bytes_out), func.sum(u.c.requests))
         .where(and_(u.c.account_id == acc, u.c.minute >= start, u.c.minute < end)).group_by(bucket).order_by(bucket))
    async with repo.db.engine.connect() as conn:
        return list(await conn.execute(q))


async def minute_table_billing(repo: Repository, acc: str) -> dict[str, dict[str, int]]:
    """Billing as it had to be done before rollups: the month's 5-minute sums grouped from the
    minute rows, then the rule in Python."""
    zone = ZoneInfo("UTC")
    start, end = month_bounds(int(MONTH[:4]), int(MONTH[5:]), zone)
    rows = {int(r[0]): (int(r[1]), int(r[2])) for r in await minute_table_usage(repo, acc, start, end, 300)}
    n = (end - start) // 300
    ins = [rows.get(start + 300 * i, (0, 0))[0] for i in range(n)]
    outs = [rows.get(start + 300 * i, (0, 0))[1] for i in range(n)]
    series = {"in": ins, "out": outs, "max": list(map(max, ins, outs))}
    days = boundaries(start, end, 86400, zone)
    stats: dict[str, dict[str, int]] = {"p95": {}, "peak": {}, "daily_peak_sum": {}, "days": {}}
    for name, v in series.items():
        stats["p95"][name] = sorted(v, reverse=True)[n * 5 // 100]
        stats["peak"][name] = max(v)
        stats["daily_peak_sum"][name] = sum(max(v[(a - start) // 300:(b - start) // 300])
                                            for a, b in zip(days, days[1:], strict=False))
        stats["days"][name] = len(days) - 1
    return bandwidth_bps(stats)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(url: str, rounds: int) -> list[tuple[str, float, float, int]]:
    db = create_database(url, pool_size=4)
    await db.migrate()
    repo = Repository(db)
    t0 = time.perf_counter()
    acc = await load_year(repo)
    print(f"  loaded a year of minute data in {time.perf_counter() - t0:.0f} s", flush=True)
    app = build_api(ApiContext(repo=repo, ledger=Ledger(repo.db), auth=Authenticator(repo, TOKEN), ingest=None,
                               registry=CollectorRegistry(), max_body_bytes=1 << 20))
    year = {"start": "2025-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "step": "1d"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                 headers={"authorization": f"Bearer {TOKEN}"}) as http:

        async def api(path: str, params: dict[str, str]) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                resp = await http.get(path, params=params)
                assert resp.status_code == 200, resp.text
                return resp.json()
            return call

        arms: dict[str, Callable[[], Awaitable[object]]] = {
            "usage 1 year step=1d UTC, API (daily rollup)": await api(f"/v1/accounts/{acc}/usage", year),
            "usage 1 year step=1d UTC, minute table (before)":
                lambda: minute_table_usage(repo, acc, YEAR_START, YEAR_END, 86400),
            "usage 1 year step=1d Asia/Shanghai, API (hourly rollup)":
                await api(f"/v1/accounts/{acc}/usage", {**year, "tz": "Asia/Shanghai"}),
            "billing 1 month, API (5-minute rollup)": await api(f"/v1/accounts/{acc}/billing", {"month": MONTH}),
            "billing 1 month, minute table (before)": lambda: minute_table_billing(repo, acc),
            **{f"billing 1 month, mode={mode}": await api(f"/v1/accounts/{acc}/billing", {"month": MONTH, "mode": mode})
               for mode in MODES},
            "billing 1 month, group_by=region (3 regions)":
                await api(f"/v1/accounts/{acc}/billing", {"month": MONTH, "group_by": "region"}),
            "billing forecast, every mode": await api(f"/v1/accounts/{acc}/billing/forecast", {"month": MONTH}),
        }
        # Same answers first: the daily rollup and the minute-table GROUP BY agree.
        body = await arms["usage 1 year step=1d UTC, API (daily rollup)"]()
        rows = await minute_table_usage(repo, acc, YEAR_START, YEAR_END, 86400)
        assert [p["bytes_in"] for p in body["points"]] == [int(r[1]) for r in rows]  # type: ignore[index]
        bill = await arms["billing 1 month, API (5-minute rollup)"]()
        before = await minute_table_billing(repo, acc)
        assert bill["bandwidth_bps"] == before  # type: ignore[index]
        samples: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(rounds):
            for name, fn in arms.items():  # interleaved: drift on a shared VM hits every arm alike
                t = time.perf_counter()
                await fn()
                samples[name].append((time.perf_counter() - t) * 1000)
    await db.close()
    return [(name, statistics.median(v), pct(v, 0.99), len(v)) for name, v in samples.items()]


def table(results: list[tuple[str, float, float, int]]) -> str:
    lines = ["| query | p50 ms | p99 ms | rounds |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {p50:.1f} | {p99:.1f} | {n} |" for name, p50, p99, n in results]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "query.md"))
    args = ap.parse_args()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meterd-query-bench-")))
        backends = [("SQLite", f"sqlite+aiosqlite:///{tmp / 'bench.db'}")]
        if not args.no_postgres:
            from tests.support.servers import running_postgres

            pg = stack.enter_context(running_postgres(database="bench"))
            backends.append(("PostgreSQL", pg.url_for("bench")))
        for name, url in backends:
            print(f"{name}:", flush=True)
            results = asyncio.run(measure(url, args.rounds))
            print(table(results), flush=True)
            sections.append(f"### {name}\n\n{table(results)}\n")
    text = (f"# Usage and billing queries (`benchmarks/query.py`)\n\nMachine: {machine()}; date: {when}.\n"
            f"Data: one account, a year (2025) of per-minute usage from 50 nodes in 3 regions, written through "
            f"`Ledger.apply`; {args.rounds} interleaved rounds per arm, in process (ASGI, no "
            f"network). \"before\" arms are the minute-table queries meterd ran before rollups.\n\n"
            + "\n".join(sections))
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
