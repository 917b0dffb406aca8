"""The shipped observability artifacts (rule files, dashboards) as data, for the tests and for
the integrator's live test (run `dashboard_expressions()` / `rule_expressions()` against a
Prometheus scraping a loaded meterd, with `grafana_to_promql` applied to dashboard queries)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
DASHBOARDS = ROOT / "dashboards"
RULE_FILES = sorted((ALERTS / "rules").glob("*.yml"))
DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))


# What Grafana substitutes before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+"}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboards() -> dict[str, dict[str, Any]]:
    return {f.name: json.loads(f.read_text()) for f in DASHBOARD_FILES}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation of every dashboard."""
    found = []
    for name, board in dashboards().items():
        for p in panels(board):
            for t in p.get("targets", []):
                found.append((f"{name}: {p['title']} [{t['refId']}]", t["expr"]))
        for a in board.get("annotations", {}).get("list", []):
            if a.get("expr"):
                found.append((f"{name}: annotation {a['name']}", a["expr"]))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expr) for every alerting and recording rule."""
    return [(r.get("alert") or r["record"], r["expr"]) for r in rules()]
