"""What the docker-compose stack exposes, checked on the file as docker-compose renders it:
admin surfaces (Prometheus, Alertmanager, the relay) unpublished, no lifecycle API, Grafana's admin
password required, and Alertmanager authenticating to the relay with the token the relay reads."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.observability.artifacts import ALERTS, ROOT
from tests.support.require import require_binary

ENV = {"METERD_ADMIN_TOKEN": "compose-test-token-0123456789", "GRAFANA_ADMIN_PASSWORD": "compose-test-grafana-pw"}
# service -> the host ports it may publish, as (host address, host port); "" = all addresses.
ALLOWED_PORTS = {
    "api": {("", 8080)},  # authenticated (bearer tokens)
    "writer": {("", 50051)},  # authenticated (bearer tokens)
    "grafana": {("127.0.0.1", 3000)},
    "jaeger": {("127.0.0.1", 16686)},
}
TOKEN_FILE = "/run/secrets/relay_webhook_token"


def _compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = require_binary("docker-compose")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DINGTALK_", "METERD_", "GRAFANA_"))}
    return subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    result = _compose(ENV)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _published(port: Any) -> tuple[str, int]:
    """(host address, host port) of one `ports:` entry in either of docker-compose's renderings."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(port["published"])
    match = re.fullmatch(r"(?:(?P<ip>[\d.]+):)?(?P<host>\d+):(?P<target>\d+)(?:/\w+)?", str(port))
    assert match, f"unparsed ports entry {port!r}"
    return match["ip"] or "", int(match["host"])


def test_only_authenticated_or_loopback_ports_are_published(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    for name, service in services.items():
        published = {_published(p) for p in service.get("ports", [])}
        assert published <= ALLOWED_PORTS.get(name, set()), (name, published)
    for name in ("prometheus", "alertmanager", "relay"):
        assert not services[name].get("ports"), name


def test_no_lifecycle_api(rendered: dict[str, Any]) -> None:
    for name, service in rendered["services"].items():
        assert "--web.enable-lifecycle" not in " ".join(service.get("command") or []), name


def test_grafana_admin_password_is_required() -> None:
    missing = _compose({"METERD_ADMIN_TOKEN": ENV["METERD_ADMIN_TOKEN"]})
    assert missing.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in missing.stderr
    empty = _compose({**ENV, "GRAFANA_ADMIN_PASSWORD": ""})
    assert empty.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in empty.stderr


def test_grafana_gets_the_password_from_the_environment(rendered: dict[str, Any]) -> None:
    grafana = rendered["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == ENV["GRAFANA_ADMIN_PASSWORD"]


def test_alertmanager_authenticates_to_the_relay_with_the_shared_secret(rendered: dict[str, Any]) -> None:
    services = rendered["services"]
    relay_env = services["relay"]["environment"]
    assert relay_env["METERD_RELAY__AUTH__BEARER_TOKEN_FILE"] == TOKEN_FILE
    assert relay_env["METERD_RELAY__DATA_DIR"]
    targets = [v["target"] if isinstance(v, dict) else str(v).split(":")[1] for v in services["relay"]["volumes"]]
    assert relay_env["METERD_RELAY__DATA_DIR"] in targets  # on a volume: survives a container restart
    for name in ("relay", "alertmanager"):
        assert [s["source"] for s in services[name]["secrets"]] == ["relay_webhook_token"], name
    assert "relay_webhook_token" in rendered["secrets"]
    am = yaml.safe_load((ALERTS / "alertmanager.yml").read_text())
    for receiver in am["receivers"]:
        for hook in receiver["webhook_configs"]:
            if "relay:8060" in hook["url"]:
                auth = hook["http_config"]["authorization"]
                assert auth == {"type": "Bearer", "credentials_file": TOKEN_FILE}, receiver["name"]
