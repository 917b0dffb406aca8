"""The shipped configs loaded by the REAL Prometheus and Alertmanager.

- Prometheus loads alerts/prometheus.yml's rule files and parses every dashboard query (with the
  Grafana variables substituted): a query Prometheus rejects fails here, data or not.
- Alertmanager runs alerts/alertmanager.yml as shipped: a critical alert inhibits the warning of
  the same alertname/job/instance, and not another job's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from tests.observability.artifacts import ALERTS, dashboard_expressions, grafana_to_promql
from tests.observability.promstack import Proc, running_alertmanager, running_prometheus


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "rules").mkdir()
    for rule_file in (ALERTS / "rules").glob("*.yml"):
        doc = yaml.safe_load(rule_file.read_text())
        for group in doc["groups"]:
            group["interval"] = "1s"  # evaluate within the test's time, not every 30 s
        (workdir / "rules" / rule_file.name).write_text(yaml.safe_dump(doc))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    with running_prometheus(workdir / "prometheus.yml", workdir) as proc:
        yield proc


def test_prometheus_loads_every_rule(prometheus: Proc) -> None:
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    shipped = {
        r.get("alert") or r["record"]
        for f in (ALERTS / "rules").glob("*.yml")
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    }
    assert loaded == shipped
    # Rules evaluate without errors (health "ok" once evaluated; "unknown" before the first run).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        health = {r["name"]: (r["health"], r.get("lastError", "")) for g in groups for r in g["rules"]}
        if all(h == "ok" for h, _ in health.values()):
            break
        time.sleep(0.5)
    assert {n: h for n, h in health.items() if h[0] != "ok"} == {}


def test_every_dashboard_query_is_valid_promql(prometheus: Proc) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) > 40
    bad = []
    with httpx.Client(base_url=prometheus.url, timeout=10) as client:
        for where, expr in expressions:
            reply = client.post("/api/v1/query", data={"query": grafana_to_promql(expr)})
            if reply.status_code != 200 or reply.json()["status"] != "success":
                bad.append(f"{where}: {reply.text[:300]}")
    assert bad == []


def _post_alerts(am: Proc, alerts: list[dict[str, str]], severity_by_name: dict[str, str]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": {**labels, "severity": severity_by_name[labels["id"]], "service": "meterd"},
            "annotations": {"summary": "test"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
        for labels in alerts
    ]
    reply = httpx.post(f"{am.url}/api/v2/alerts", json=body, timeout=5)
    assert reply.status_code == 200, reply.text


def test_shipped_alertmanager_inhibits_warning_under_critical(tmp_path: Path) -> None:
    with running_alertmanager(ALERTS / "alertmanager.yml", tmp_path) as am:
        alerts = [
            {"id": "crit", "alertname": "MeterdHighMemory", "job": "meterd-api", "instance": "a:8080"},
            {"id": "warn", "alertname": "MeterdHighMemory", "job": "meterd-api", "instance": "a:8080"},
            {"id": "other", "alertname": "MeterdHighMemory", "job": "meterd-writer", "instance": "w:9100"},
        ]
        _post_alerts(am, alerts, {"crit": "critical", "warn": "warning", "other": "warning"})
        deadline = time.monotonic() + 10
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            listed = httpx.get(f"{am.url}/api/v2/alerts", timeout=5).json()
            states = {a["labels"]["id"]: a["status"]["state"] for a in listed}
            if states.get("warn") == "suppressed" and len(states) == 3:
                break
            time.sleep(0.2)
        assert states == {"crit": "active", "warn": "suppressed", "other": "active"}
