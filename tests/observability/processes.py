"""The processes of the live-data test (test_live_data.py): `meterd up` configured for the
scenario's faults, `meterd relay`, and fake DingTalk robots, all real (children or threads)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.governance_setup import DEFAULT_PLUGINS
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.support.meterd import MeterdProc

BALANCE_QUOTA = "2/second"



class RobotServer:
    """Fake DingTalk robots served by uvicorn on an event loop in a thread (the scenario is sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.robots: list[FakeDingTalk] = []

    def serve(self, robot: FakeDingTalk) -> FakeDingTalk:
        asyncio.run_coroutine_threadsafe(robot.start(), self.loop).result(15)
        self.robots.append(robot)
        return robot

    def close(self) -> None:
        for robot in self.robots:
            asyncio.run_coroutine_threadsafe(robot.stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _meterd_cli() -> list[str]:
    script = Path(sys.executable).with_name("meterd")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from service.cli import main; main()"]


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextlib.contextmanager
def running_relay(workdir: Path, robots: dict[str, FakeDingTalk], port: int) -> Iterator[str]:
    """`meterd relay --config ...` on `port` as a child process, robot secrets from the
    environment; yields its base URL. The port is the caller's: Prometheus already scrapes it."""
    config = {
        "relay": {
            "host": "127.0.0.1",
            "port": port,
            "merge_window_s": 0.5,
            "ack_timeout_s": 5,
            "retry_backoff_initial_s": 0.5,
            "robots": {name: {"webhook_url": fake.webhook_url} for name, fake in robots.items()},
        }
    }
    (workdir / "relay.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
    env.update({f"METERD_RELAY__ROBOTS__{name.upper()}__SECRET": fake.secret for name, fake in robots.items()})
    log_path = workdir / "relay.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*_meterd_cli(), "relay", "--config", str(workdir / "relay.yaml")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"meterd relay did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        _stop_group(process)


WRITE_INFLIGHT_CAP = 1  # Traffic.write_burst sends 8 at once


def meterd_config(tmp: Path, quota_storage: str) -> dict[str, Any]:
    plugins = copy.deepcopy(DEFAULT_PLUGINS)
    quota = next(p for p in plugins if p["type"] == "quota")
    # Counters in a real Redis, as deploy/meterd.yaml has them; while it hangs, calls are admitted.
    quota.update(storage=quota_storage, fail_open=True)
    # A route override below the default: the balance reads of the scenario get 429s.
    quota["routes"] = {**quota["routes"], "GET /v1/accounts/{account_id}/balance": {"limit": BALANCE_QUOTA}}
    adaptive = next(p for p in plugins if p["type"] == "adaptive")
    # The write route's static in-flight cap, low: a burst of writes goes past it and some are shed
    # (governance_adaptive_sheds_total{priority="write"}, the series the shedding alert reads).
    adaptive["routes"]["unary /meterd.v1.TrafficWriter/Write"] = {"priority": "write",
                                                                  "max_inflight": WRITE_INFLIGHT_CAP}
    return {
        # The kafka breaker stays open for the rest of the scenario once the broker is gone.
        "governance": {"plugins": plugins, "outbound": {"kafka": {"reset_timeout": 300}}},
        # Writes against a dead broker fail after 1.5 s instead of 10 s: the outage takes seconds.
        "kafka": {"request_timeout_ms": 1500},
        "profiling": {"directory": str(tmp / "profiles")},
    }


@contextlib.contextmanager
def running_meterd_up(tmp: Path, env: dict[str, str], quota_storage: str) -> Iterator[MeterdProc]:
    """`meterd up` with `meterd_config`; `env` from tests.support.meterd.meterd_env (ports)."""
    (tmp / "meterd.yaml").write_text(yaml.safe_dump(meterd_config(tmp, quota_storage)))
    proc = MeterdProc(["up", "--config", str(tmp / "meterd.yaml")], env, tmp).start()
    try:
        yield proc
    finally:
        # Its broker is dead by now, so a graceful drain would only wait on Kafka timeouts.
        try:
            proc.stop(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
