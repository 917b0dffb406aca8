"""Issue 26, past one machine: the scaled topology on the engines users run. Two gRPC writer
processes (`meterd up --workers 2`, sharing the port), two consumers (`up`'s own and a separate
`meterd consumer`) in one group on a Kafka topic of 4 partitions (Tansu), usage in PostgreSQL:
every acknowledged record counted exactly once, and both writers and both consumers did work.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.service.test_durability import _assert_counted, _create_accounts
from tests.service.test_supervisor import _send
from tests.support.broker import running_tansu
from tests.support.meterd import MeterdProc, free_port, meterd_env
from tests.support.servers import running_postgres
from tests.support.usage import Totals

CLIENTS = 16  # connections: SO_REUSEPORT hashes each to a writer, so both get some (all on one: 2^-15)


def _metric_sum(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _admin_urls(data: Path, role: str) -> list[str]:
    targets = json.loads((data / "meterd-up-targets.json").read_text())
    return [f"http://{t['targets'][0]}" for t in targets if t["labels"]["role"] == role]


async def test_two_writers_two_consumers_four_partitions_on_postgres(tmp_path: Path) -> None:
    with running_postgres(database="meterd_scaled") as pg, running_tansu() as broker:
        env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap, METERD_DATABASE__URL=pg.url,
                         METERD_KAFKA__PARTITIONS="4", METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.5",
                         METERD_WORKERS="2")
        up = MeterdProc(["up"], env, tmp_path).start(timeout=180)
        second = MeterdProc(["consumer"], {**env, "METERD_ADMIN__PORT": str(free_port())}, tmp_path)
        try:
            second.start(timeout=120)
            accounts = _create_accounts(up)
            expected: Totals = {}
            await _send(up.grpc or "", accounts, 200, expected, clients=CLIENTS)  # 200,000 records
            _assert_counted(up, expected, 120)
            writers = _admin_urls(tmp_path / "data", "writer")
            assert len(writers) == 2
            handled = [_metric_sum(w, "grpc_server_handled_total") for w in writers]
            assert all(n > 0 for n in handled), f"calls per writer process: {handled}"
            consumers = [*_admin_urls(tmp_path / "data", "consumer"), second.admin or ""]
            # (the Kafka consumer counts batches, not records, in its metrics)
            counted = {c: _metric_sum(c, "meterd_consumer_batches_total") for c in consumers}
            assert all(counted.values()), f"batches counted per consumer: {counted}"
            assert sum(counted.values()) >= 200, counted
            assert second.stop(60) == 0, second.output()[-3000:]
            assert up.stop(120) == 0, up.output()[-3000:]
        finally:
            second.kill()
            up.kill()
