"""Helpers for relay tests: payload builders and a relay app wired in-process to a fake robot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from service.relay import RelaySettings, build_relay_app
from tests.relay.fake_dingtalk import FakeDingTalk

SECRET = "SEC0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd"
# Set per test by tests/relay/conftest.py (a tmp_path): relay_settings' default data_dir.
DATA_DIR: Path | None = None


def relay_settings(fake: FakeDingTalk, **overrides: Any) -> RelaySettings:
    robot = {"webhook_url": fake.webhook_url, "secret": fake.secret, **overrides.pop("robot", {})}
    data: dict[str, Any] = {
        "robots": {"oncall": robot},
        "merge_window_s": 0.0,
        "alertmanager_url": "http://alertmanager.example:9093",
        "dashboard_url": "http://grafana.example:3000",
        "data_dir": DATA_DIR,
        **overrides,
    }
    return RelaySettings.model_validate(data)


@contextlib.asynccontextmanager
async def relay_client(
    settings: RelaySettings, fake: FakeDingTalk, *, window_s: float = 60.0
) -> AsyncIterator[tuple[httpx.AsyncClient, Starlette, CollectorRegistry]]:
    """The relay app (lifespan running) reached through httpx; its DingTalk calls go to `fake`."""
    registry = CollectorRegistry()
    app = build_relay_app(settings, registry=registry, transport=httpx.ASGITransport(app=fake.app), window_s=window_s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://relay") as client:
            yield client, app, registry


def notification(
    *alerts: dict[str, Any], status: str = "firing", receiver: str = "dingtalk-oncall", **extra: Any
) -> dict[str, Any]:
    """An Alertmanager webhook v4 payload."""
    return {
        "version": "4",
        "groupKey": '{}:{alertname="X"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am.internal:9093",
        "alerts": list(alerts),
        **extra,
    }


def alert(
    name: str = "MeterdTestAlert",
    *,
    status: str = "firing",
    severity: str = "warning",
    fingerprint: str | None = None,
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {
            "summary": f"{name} summary",
            "description": f"{name} description",
            "runbook_url": f"https://runbooks.example/{name}",
            "dashboard_url": "/d/meterd-overview/meterd-overview",
        },
        "startsAt": "2025-01-02T03:04:05.678Z",
        "endsAt": "2025-01-02T03:14:05Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": f"http://prometheus.example:9090/graph?g0.expr={name}",
        "fingerprint": fingerprint or f"fp-{name}-{'-'.join(sorted(labels.values()))}",
    }


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app on a random loopback port with real uvicorn; yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def meterd_cli() -> list[str]:
    import sys

    script = Path(sys.executable).with_name("meterd")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from service.cli import main; main()"]


@dataclass
class RelayProcess:
    url: str
    process: asyncio.subprocess.Process
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def relay_process(workdir: Path, relay: dict[str, Any], env: dict[str, str] | None = None,
                        *, log_name: str = "relay.log") -> AsyncIterator[RelayProcess]:
    """`meterd relay --config ...` as a child process (its own session), ready on /readyz; killed
    with SIGTERM (then SIGKILL) on exit unless the test already ended it. `relay` gets a free port
    unless it names one."""
    import os
    import signal
    import time

    import pytest
    import yaml

    from tests.support.servers import free_port

    fixed_port = "port" in relay
    for _attempt in range(1 if fixed_port else 3):
        port = relay["port"] if fixed_port else free_port()
        config = {"relay": {"host": "127.0.0.1", **relay, "port": port}}
        config_path = workdir / "meterd.yaml"
        config_path.write_text(yaml.safe_dump(config))
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("METERD_")}
        child_env.update(env or {})
        log_path = workdir / log_name
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *meterd_cli(), "relay", "--config", str(config_path),
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=child_env, start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            ready = False
            async with httpx.AsyncClient(timeout=1) as client:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and process.returncode is None:
                    with contextlib.suppress(httpx.HTTPError):
                        ready = (await client.get(url + "/readyz")).status_code == 200
                    if ready:
                        break
                    await asyncio.sleep(0.1)
            if ready:
                yield RelayProcess(url, process, log_path)
                return
            text = log_path.read_text(errors="replace")
            if "address already in use" not in text or fixed_port:
                pytest.fail(f"meterd relay did not become ready:\n{text[-3000:]}")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()
    pytest.fail("meterd relay: no free port after 3 tries")
