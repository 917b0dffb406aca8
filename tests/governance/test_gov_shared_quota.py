"""Quota counters shared by two OS processes through a real redis-server hold exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("gov_quota_worker.py")


def test_two_processes_share_one_quota(redis_server: RedisServer) -> None:
    redis_server.flushall()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start_at = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, str(WORKER), redis_server.limits_url, "25/minute", "40",
                               str(start_at)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["ok"] for r in results) == 25, results
    assert sum(r["limited"] for r in results) == 55, results
    assert all(r["other"] == 0 for r in results)
