"""Static checks of alerts/, dashboards/, docker-compose.yml with the real promtool, amtool and
docker-compose, plus the metric-name contract: a name meterd does not emit fails the suite."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.artifacts import (
    ALERTS,
    DASHBOARDS,
    ROOT,
    RULE_FILES,
    alert_rules,
    dashboard_expressions,
    dashboards,
    panels,
    recorded,
    rule_expressions,
)
from tests.observability.emitted_metrics import EMITTED, queryable_names
from tests.observability.promql_names import metric_names, template_query_names
from tests.support.require import require_binary

SEVERITIES = {"critical", "warning", "info"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def unknown_metric_names(expressions: list[tuple[str, str]], known: set[str]) -> list[str]:
    return [f"{where}: {name}" for where, expr in expressions for name in sorted(metric_names(expr) - known)]


# --- Prometheus -------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = require_binary("promtool")
    result = _run([promtool, "check", "config", str(ALERTS / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_checkrules() -> None:
    promtool = require_binary("promtool")
    result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_testrules() -> None:
    promtool = require_binary("promtool")
    tests = sorted((ALERTS / "tests").glob("*.yml"))
    assert tests
    result = _run([promtool, "test", "rules", *map(str, tests)], cwd=ALERTS / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_fresh() -> None:
    # alerts/tests/*.test.yml and dashboards/*.json come from generators; edits go there.
    alert_tests = _load(ALERTS / "tests" / "generate.py", "meterd_alert_tests_generate")
    assert alert_tests.OUTPUT.read_text() == alert_tests.build(), "run: python alerts/tests/generate.py"
    dashboards = _load(DASHBOARDS / "generate.py", "meterd_dashboards_generate")
    for name, text in dashboards.render_all().items():
        assert (DASHBOARDS / name).read_text() == text, "run: python dashboards/generate.py"


def test_every_alert_has_severity_and_annotations_that_resolve() -> None:
    runbooks = (ALERTS / "RUNBOOKS.md").read_text()
    anchors = {"#" + h.strip().lower() for h in re.findall(r"^## (.+)$", runbooks, re.M)}
    uids = {b["uid"] for b in dashboards().values()}
    alerts = alert_rules()
    assert len(alerts) >= 15
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        ann = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url", "dashboard_url"):
            assert ann.get(key), f"{name}: missing annotation {key}"
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "alerts/RUNBOOKS.md" and "#" + anchor in anchors, f"{name}: runbook {ann['runbook_url']}"
        uid = ann["dashboard_url"].split("/")[2]
        assert ann["dashboard_url"].startswith("/d/") and uid in uids, f"{name}: {ann['dashboard_url']}"


def test_required_alert_topics_are_covered() -> None:
    names = {r["alert"] for r in alert_rules()}
    for required in (
        "MeterdTargetDown",
        "MeterdErrorBudgetBurn",
        "MeterdHttpLatencyHigh",
        "MeterdGrpcLatencyHigh",
        "MeterdDependencyBreakerOpen",
        "MeterdSheddingSustained",
        "MeterdConsumerLagHigh",
        "MeterdDlqGrowing",
        "MeterdWatchdogCapture",
        "MeterdHighMemory",
        "MeterdRelayNotificationsFailing",
    ):
        assert required in names


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for test_file in (ALERTS / "tests").glob("*.yml"):
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired |= {(check["alertname"], a["exp_labels"]["severity"]) for a in check["exp_alerts"]}
                else:
                    quiet.add(check["alertname"])
    for rule in alert_rules():
        key = (rule["alert"], rule["labels"]["severity"])
        assert key in fired, f"no firing test for {key}"
        assert rule["alert"] in quiet, f"no not-firing test for {rule['alert']}"


def test_burn_rate_alerts_use_multiple_windows() -> None:
    burn = [r for r in alert_rules() if r["alert"] == "MeterdErrorBudgetBurn"]
    assert {r["labels"]["severity"] for r in burn} == {"critical", "warning"}
    windows = {w for r in burn for w in re.findall(r"rate(\d+[mhd])", r["expr"])}
    assert windows == {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}
    assert "14.4" in burn[0]["expr"] + burn[1]["expr"]


# --- metric-name contract -----------------------------------------------------------------------


def test_rules_use_only_emitted_metrics() -> None:
    known = queryable_names() | recorded()
    assert unknown_metric_names(rule_expressions(), known) == []


def test_dashboards_use_only_emitted_metrics() -> None:
    known = queryable_names() | recorded()
    assert unknown_metric_names(dashboard_expressions(), known) == []
    for name, board in dashboards().items():
        for var in board["templating"]["list"]:
            if var["type"] == "datasource":
                continue  # its query is a plugin id ("prometheus"), not PromQL
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            assert template_query_names(query) <= known, (name, var["name"])


def test_the_name_check_fails_on_an_unknown_name() -> None:
    # The contract check must be able to fail: a typo'd or never-emitted name is reported.
    known = queryable_names()
    exprs = [
        ("typo", 'sum(rate(http_server_requests_total{job="x"}[5m]))'),
        ("fine", "rate(meterd_consumer_dlq_total[5m])"),
    ]
    assert unknown_metric_names(exprs, known) == ["typo: http_server_requests_total"]


def test_every_emitted_metric_is_shown_somewhere() -> None:
    # Unused metrics are allowed but should be rare: all pipeline, governance, profiling and relay
    # metrics appear on a dashboard.
    used = set().union(*(metric_names(e) for _, e in dashboard_expressions()))
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = [
        n for n in EMITTED if n.startswith(("meterd_", "governance_", "profiling_", "grpc_", "http_")) and n not in base
    ]
    assert missing == []


# --- dashboards ----------------------------------------------------------------------------------


def _datasource_refs(node: object, where: str = "") -> list[tuple[str, object]]:
    """Every `datasource` value anywhere in a dashboard (panels, targets, variables, annotations)."""
    found: list[tuple[str, object]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append((where, value))
            found += _datasource_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _datasource_refs(value, f"{where}[{i}]")
    return found


def test_dashboards_fixed_uids_and_importable_datasource() -> None:
    """Importable into any Grafana: no panel, target, variable or annotation names a fixed datasource
    uid; all go through the `datasource` variable, and `__inputs` declares the Prometheus input."""
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == {
        "meterd-overview",
        "meterd-governance",
        "meterd-ingestion",
        "meterd-runtime",
    }
    for name, board in boards.items():
        assert board.get("id") is None, f"{name}: provisioned dashboards carry no numeric id"
        [ds_input] = board["__inputs"]
        assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus"), name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        refs = _datasource_refs({k: v for k, v in board.items() if k != "__inputs"})
        assert refs, name
        for where, ref in refs:
            assert ref == DATASOURCE, (name, where, ref)  # never a fixed uid such as "meterd-prometheus"
        for p in panels(board):
            if p["type"] == "row":
                continue
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["expr"].strip(), (name, p["title"])
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (name, p["title"])
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_provisioning_matchesdashboards() -> None:
    ds = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = ds["datasources"]
    assert source["uid"] == "meterd-prometheus" and source["type"] == "prometheus"
    prov = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards" / "meterd.yml").read_text())
    [provider] = prov["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards:{provider['options']['path']}:ro" in mounts
    assert "./dashboards/provisioning:/etc/grafana/provisioning:ro" in mounts


# --- Alertmanager --------------------------------------------------------------------------------


def test_amtool_check_config() -> None:
    amtool = require_binary("amtool")
    result = _run([amtool, "check-config", str(ALERTS / "alertmanager.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=MeterdTargetDown", "service=meterd"], "dingtalk-oncall"),
        (["severity=warning", "alertname=MeterdHighMemory", "service=meterd"], "dingtalk-team"),
        (["severity=info", "alertname=MeterdWatchdogCapture", "service=meterd"], "dingtalk-info"),
        (["alertname=SomethingWithoutSeverity"], "dingtalk-team"),
    ],
)
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    amtool = require_binary("amtool")
    config = str(ALERTS / "alertmanager.yml")
    result = _run(
        [amtool, "config", "routes", "test", f"--config.file={config}", f"--verify.receivers={receiver}", *labels]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver
    wrong = "dingtalk-info" if receiver != "dingtalk-info" else "dingtalk-oncall"
    mismatch = _run(
        [amtool, "config", "routes", "test", f"--config.file={config}", f"--verify.receivers={wrong}", *labels]
    )
    assert mismatch.returncode != 0


def test_alertmanager_receivers_reach_configured_relay_robots() -> None:
    am = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    relay = yaml.safe_load((ROOT / "deploy" / "meterd.yaml").read_text())["relay"]
    for receiver in am["receivers"]:
        [hook] = receiver["webhook_configs"]
        assert hook["send_resolved"] is True
        match = re.fullmatch(r"http://relay:8060/alerts/(\w+)", hook["url"])
        assert match and match.group(1) in relay["robots"], hook["url"]
    assert am["route"]["group_by"] == ["alertname", "service"]
    [critical_over_warning, *_] = am["inhibit_rules"]
    assert critical_over_warning["source_matchers"] == ['severity="critical"']
    assert {"alertname", "instance"} <= set(critical_over_warning["equal"])


# --- docker-compose --------------------------------------------------------------------------------

COMPOSE_ENV = {"METERD_ADMIN_TOKEN": "compose-test-token-0123456789", "GRAFANA_ADMIN_PASSWORD": "compose-test-pw"}


def test_docker_compose_config_is_valid() -> None:
    compose = require_binary("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "METERD_"))}
    result = _run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT, env={**env, **COMPOSE_ENV}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the admin token the stack refuses to render: no default secret in production.
    env = {k: v for k, v in env.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    missing = _run([compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], cwd=ROOT,
                   env={**env, "GRAFANA_ADMIN_PASSWORD": "x"})
    assert missing.returncode != 0 and "METERD_ADMIN_TOKEN" in missing.stderr


def test_docker_compose_stack_shape() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in (
        "kafka",
        "postgres",
        "redis",
        "api",
        "writer",
        "consumer",
        "relay",
        "prometheus",
        "alertmanager",
        "grafana",
        "jaeger",
    ):
        assert name in services, name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for role in ("api", "writer", "consumer", "relay", "migrate"):
        svc = services[role]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["cap_add"] == ["SYS_PTRACE"]
        assert svc["command"][0] == role
        if role != "migrate":
            assert "healthcheck" in svc, role
    env = services["api"]["environment"]
    for key in (
        "METERD_DATABASE__URL",
        "METERD_KAFKA__BOOTSTRAP_SERVERS",
        "METERD_ADMIN_TOKEN",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ):
        assert key in env
    for name in ("kafka", "postgres", "redis", "prometheus", "alertmanager", "grafana"):
        assert "volumes" in services[name], name
    assert "./alerts:/etc/prometheus/meterd:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/meterd/prometheus.yml" in services["prometheus"]["command"]
    assert (ROOT / "deploy" / "Dockerfile").is_file() and (ROOT / "deploy" / "healthcheck.py").is_file()
    # Scrape jobs target the compose service names and ports.
    prom = yaml.safe_load((ALERTS / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    for job, (host, port) in {
        "meterd-api": ("api", 8080),
        "meterd-writer": ("writer", 9100),
        "meterd-consumer": ("consumer", 9100),
        "meterd-relay": ("relay", 8060),
    }.items():
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [host] and sd["port"] == port and host in services
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_deploy_config_loads_with_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.config import load_settings
    from service.relay import RelaySettings

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for key in list(os.environ):
        if key.startswith("METERD_"):
            monkeypatch.delenv(key)
    for key, value in compose["services"]["relay"]["environment"].items():
        # ${VAR:-default} -> default, as docker-compose renders it with nothing exported.
        rendered = re.sub(r"\$\{[A-Z_]+(?::-([^}]*)|:\?[^}]*)\}", lambda m: m.group(1) or "x" * 20, str(value))
        monkeypatch.setenv(key, rendered)
    settings = load_settings(ROOT / "deploy" / "meterd.yaml")
    assert settings.mode == "production"
    relay = RelaySettings.model_validate(settings.relay)
    assert set(relay.robots) == {"oncall", "team", "info"}
    assert relay.robots["oncall"].mentions.at_all_for_severities == ["critical"]
    assert relay.routes.severities == {"critical": "oncall", "warning": "team", "info": "info"}
