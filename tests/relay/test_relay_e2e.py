"""End to end: real Prometheus -> real Alertmanager -> `meterd relay` (its own process) -> a local
stand-in for DingTalk that verifies signature, body size and rate.

A tiny /metrics endpoint serves `meterd_e2e_flag`; flipping it to 1 makes a test rule fire, back
to 0 resolves it. Then 50 distinct alerts are posted straight to Alertmanager's API: Alertmanager
sends 50 notifications (one group each) and they must reach DingTalk merged, within 20 messages
per minute and 20,000 bytes per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.observability.promstack import Proc, running_alertmanager, running_prometheus
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import SECRET, relay_process, serving
from tests.support.require import require_binary

MOBILE = "13800000000"


async def _until(predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{logs()}")


TOKEN_FILE = "webhook-token"


@contextlib.asynccontextmanager
async def running_relay(workdir: Path, fake: FakeDingTalk, alertmanager_url: str) -> AsyncIterator[str]:
    """`meterd relay` as a child process; the robot secret comes from the environment and the
    webhook bearer token from the file Alertmanager's http_config reads too."""
    (workdir / TOKEN_FILE).write_text("e2e-webhook-token-0123456789\n")
    config = {
        "merge_window_s": 0.3,
        "ack_timeout_s": 5,
        "alertmanager_url": alertmanager_url,
        "data_dir": str(workdir / "data"),
        "auth": {"bearer_token_file": str(workdir / TOKEN_FILE)},
        "robots": {
            "oncall": {
                "webhook_url": fake.webhook_url,
                "mentions": {"mobiles": [MOBILE], "at_all_for_severities": ["critical"]},
            }
        },
    }
    async with relay_process(workdir, config, {"METERD_RELAY__ROBOTS__ONCALL__SECRET": fake.secret}) as relay:
        yield relay.url


def _alertmanager_config(relay_url: str, token_file: Path) -> dict:
    return {
        "route": {
            "receiver": "dingtalk-oncall",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "dingtalk-oncall",
                "webhook_configs": [
                    {
                        "url": f"{relay_url}/alerts/oncall",
                        "send_resolved": True,
                        # The relay refuses unauthenticated webhooks: this proves Alertmanager's
                        # own http_config is what it accepts.
                        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
                    }
                ],
            },
        ],
    }


def _prometheus_config(metrics_url: str, alertmanager_url: str) -> dict:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager_url.split("//")[1]]}]}]},
        "scrape_configs": [{"job_name": "e2e", "static_configs": [{"targets": [metrics_url.split("//")[1]]}]}],
    }


E2E_RULES = {
    "groups": [
        {
            "name": "e2e",
            "rules": [
                {
                    "alert": "MeterdE2EFlag",
                    "expr": "meterd_e2e_flag > 0",
                    "labels": {"severity": "critical", "service": "meterd"},
                    "annotations": {
                        "summary": "The e2e flag is up on {{ $labels.instance }}",
                        "description": "Raised by the end-to-end test (value {{ $value }}).",
                        "runbook_url": "https://runbooks.example/e2e",
                    },
                }
            ],
        }
    ]
}


async def test_prometheus_alertmanager_relay_dingtalk(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager", "alertmanager")
    flag = {"value": 0}

    async def metrics(_request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"# TYPE meterd_e2e_flag gauge\nmeterd_e2e_flag {flag['value']}\n")

    fake = FakeDingTalk(secret=SECRET)
    await fake.start()
    stack = contextlib.ExitStack()
    try:
        async with serving(Starlette(routes=[Route("/metrics", metrics)])) as metrics_url:
            # Alertmanager needs the relay's URL and the relay wants Alertmanager's for its links:
            # give the relay the port Alertmanager will get by starting Alertmanager second.
            am_dir, prom_dir, relay_dir = (tmp_path / d for d in ("am", "prom", "relay"))
            for d in (am_dir, prom_dir, relay_dir):
                d.mkdir()
            async with running_relay(relay_dir, fake, "http://alertmanager.example:9093") as relay_url:
                am_config = _alertmanager_config(relay_url, relay_dir / TOKEN_FILE)
                (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
                am: Proc = await asyncio.to_thread(
                    stack.enter_context, running_alertmanager(am_dir / "alertmanager.yml", am_dir)
                )
                (prom_dir / "rules.yml").write_text(yaml.safe_dump(E2E_RULES))
                (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_config(metrics_url, am.url)))
                prom: Proc = await asyncio.to_thread(
                    stack.enter_context, running_prometheus(prom_dir / "prometheus.yml", prom_dir)
                )

                def logs() -> str:
                    relay_log = (relay_dir / "relay.log").read_text(errors="replace")
                    return (
                        f"violations={fake.violations}\nmessages={[m.title for m in fake.messages]}\n"
                        f"--- relay\n{relay_log[-2000:]}\n--- alertmanager\n{am.log[-2000:]}\n"
                        f"--- prometheus\n{prom.log[-2000:]}"
                    )

                def e2e_messages(status: str) -> list:
                    return [m for m in fake.messages if "MeterdE2EFlag" in m.text and f"{status} 1" in m.title]

                # 1. Firing: metric flips, rule fires, Alertmanager notifies, DingTalk gets it signed.
                flag["value"] = 1
                await _until(lambda: bool(e2e_messages("FIRING")), 30, "the firing message", logs)
                [firing] = e2e_messages("FIRING")
                assert "FIRING · CRITICAL · MeterdE2EFlag" in firing.text
                assert (
                    "The e2e flag is up on" in firing.text and "[Runbook](https://runbooks.example/e2e)" in firing.text
                )
                assert firing.body["at"] == {"atMobiles": [MOBILE], "atUserIds": [], "isAtAll": True}
                assert f"@{MOBILE}" in firing.text

                # 2. Resolved: the flag drops, Alertmanager sends the resolved notice.
                flag["value"] = 0
                await _until(lambda: bool(e2e_messages("RESOLVED")), 30, "the resolved message", logs)
                [resolved] = e2e_messages("RESOLVED")
                assert "RESOLVED · CRITICAL · MeterdE2EFlag" in resolved.text and "- resolved: " in resolved.text
                assert resolved.body["at"]["isAtAll"] is False  # resolved notices wake nobody

                # 3. A burst of 50 distinct alerts straight into Alertmanager: 50 groups, 50 webhooks.
                before = len(fake.messages)
                now = datetime.now(UTC)
                burst = [
                    {
                        "labels": {
                            "alertname": f"E2EBurst{i:02d}",
                            "severity": "warning",
                            "service": "meterd",
                            "instance": f"node-{i:02d}:9100",
                        },
                        "annotations": {
                            "summary": f"burst alert {i}",
                            # Long enough that 50 of them need two messages under 20,000 bytes.
                            "description": "part of a 50-alert storm; " + "流量异常 traffic anomaly " * 12,
                        },
                        "startsAt": now.isoformat(),
                        "endsAt": (now + timedelta(minutes=10)).isoformat(),
                        "generatorURL": "http://prometheus.example/graph",
                    }
                    for i in range(50)
                ]
                async with httpx.AsyncClient(timeout=5) as client:
                    reply = await client.post(f"{am.url}/api/v2/alerts", json=burst)
                    assert reply.status_code == 200, reply.text

                def burst_names() -> list[str]:
                    return [n for m in fake.messages[before:] for n in re.findall(r"· (E2EBurst\d\d)\n", m.text)]

                await _until(lambda: len(set(burst_names())) == 50, 30, "all 50 burst alerts", logs)
                await asyncio.sleep(1.5)  # let any straggler notification arrive before counting
                burst_messages = fake.messages[before:]
                assert sorted(set(burst_names())) == [f"E2EBurst{i:02d}" for i in range(50)]
                assert len(burst_names()) == 50, "an alert was delivered twice"
                # Merged into a few messages, split (not truncated) because they exceed one body.
                assert 2 <= len(burst_messages) <= 5, [m.size for m in burst_messages]
                assert not any("truncated" in m.text for m in burst_messages)

                # DingTalk's limits held for everything sent, and every signature verified.
                assert fake.violations == []
                assert fake.max_in_window() <= 20
                assert all(m.size <= 20_000 for m in fake.messages)

                async with httpx.AsyncClient(timeout=5) as client:
                    exposition = (await client.get(f"{relay_url}/metrics")).text
                sent = re.search(r'^meterd_relay_messages_sent_total\{robot="oncall"\} (\S+)$', exposition, re.M)
                assert sent and float(sent.group(1)) == len(fake.messages)
                merged = re.search(r'^meterd_relay_alerts_merged_total\{robot="oncall"\} (\S+)$', exposition, re.M)
                assert merged and float(merged.group(1)) >= 50 - len(burst_messages)
                assert "process_resident_memory_bytes" in exposition  # default collectors in `meterd relay`
        relay_log = (relay_dir / "relay.log").read_text(errors="replace")
        for secret in (SECRET, fake.access_token, "sign="):
            assert secret not in relay_log
    finally:
        await asyncio.to_thread(stack.close)
        await fake.stop()
