"""Issue 23 / audit N11 on a real `meterd up` whose quota counts in a real redis-server (set through
`governance.overrides`, as deploy/meterd.yaml does): while Redis is SIGSTOPped (TCP still accepts,
nothing answers) and after it is killed, every write answers within a bound by the `fail_open`
policy (202, or 503 when fail-closed), and governance_quota_storage_errors_total counts it. Main
gave no answer within 90 s on a hung Redis and admitted silently on a dead one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support.meterd import meterd_env, running_meterd
from tests.support.meterd_client import record, unique
from tests.support.servers import running_redis

BOUND = 3.0  # seconds per write against a broken Redis (0.5 s check deadline, then the open breaker)


def storage_errors(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("governance_quota_storage_errors_total{"))


def timed_writes(api: str, key: str, account: str, n: int) -> list[tuple[int, float]]:
    out = []
    with httpx.Client(base_url=api, headers={"authorization": f"Bearer {key}"}, timeout=30) as c:
        for _ in range(n):
            started = time.monotonic()
            r = c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(account)]})
            out.append((r.status_code, time.monotonic() - started))
    return out


@pytest.mark.parametrize(("fail_open", "expected"), [(True, 202), (False, 503)])
def test_hung_then_dead_redis_answers_within_a_bound(tmp_path: Path, fail_open: bool, expected: int) -> None:
    with running_redis() as redis:
        cfg = tmp_path / "meterd.yaml"
        cfg.write_text(json.dumps({"governance": {"overrides": {"quota": {"storage": redis.url,
                                                                          "fail_open": fail_open}}}}))
        with running_meterd(tmp_path, "up", "--config", str(cfg), env=meterd_env(tmp_path)) as m:
            assert m.http, m.output()
            with m.client() as admin:
                account = admin.post("/v1/accounts", json={"name": "redis"}).json()["id"]
                key = admin.post(f"/v1/accounts/{account}/keys").json()["key"]
            assert [s for s, _ in timed_writes(m.http, key, account, 1)] == [202]  # Redis up: counted
            assert redis.pid is not None
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                hung = timed_writes(m.http, key, account, 8)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            redis.kill()
            dead = timed_writes(m.http, key, account, 4)
            with httpx.Client(base_url=m.http, timeout=10) as c:
                errors = storage_errors(c.get("/metrics").text)
    for status, seconds in hung + dead:
        assert status == expected and seconds < BOUND, (hung, dead)
    assert errors >= len(hung) + len(dead), errors
