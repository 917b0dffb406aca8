"""Issue 23 / audit N10: the shipped production config (deploy/meterd.yaml) is the default chain with
overrides, so it keeps the principal (`auth`) plugin and the WriteStream exemption: checked on the
plans the chain builds from the file as shipped, and on how overrides merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from governance import Governance, GovernanceConfigError, GovernanceSettings
from service.config import load_settings
from service.governance_setup import DEFAULT_PLUGINS, build_governance

ROOT = Path(__file__).resolve().parents[2]
STREAM = ("grpc", "bidi_stream", "/meterd.v1.TrafficWriter/WriteStream")
STREAM_MESSAGE = ("grpc", "message", "/meterd.v1.TrafficWriter/WriteStream")
UNARY = ("grpc", "unary", "/meterd.v1.TrafficWriter/Write")
HTTP_WRITE = ("http", "POST", "/v1/traffic")


def names(gov: Governance, where: tuple[str, str, str]) -> list[str]:
    return [p.name for p in gov.chain.plan(*where).plugins]


@pytest.fixture(scope="module")
def shipped() -> Governance:
    cfg = load_settings(ROOT / "deploy" / "meterd.yaml").governance
    cfg = cfg.model_copy(update={"tracing": None})  # no OTLP exporter in a unit test
    return build_governance(cfg, registry=CollectorRegistry(), service_name="deploy-chain-test")


def test_shipped_chain_authenticates_before_quota_on_every_write_path(shipped: Governance) -> None:
    for where in (HTTP_WRITE, UNARY, STREAM_MESSAGE, ("http", "GET", "/v1/accounts/{id}")):
        plan = names(shipped, where)
        assert "auth" in plan and "quota" in plan, (where, plan)
        assert plan.index("auth") < plan.index("adaptive") < plan.index("quota"), (where, plan)


def test_shipped_chain_exempts_the_stream_and_the_probes(shipped: Governance) -> None:
    assert names(shipped, STREAM) == ["metrics", "tracing"]
    for route in ("/healthz", "/readyz", "/metrics"):
        assert names(shipped, ("http", "GET", route)) == ["metrics", "tracing"], route


def test_shipped_chain_keeps_its_production_overrides(shipped: Governance) -> None:
    quota = shipped.plugin("quota")
    assert quota.settings.storage.startswith("redis://")  # type: ignore[union-attr]
    assert quota.settings.limit == "200/second;10000/minute"  # type: ignore[union-attr]


def test_override_merges_into_the_default_and_its_routes_come_first() -> None:
    cfg = GovernanceSettings(overrides={"quota": {"limit": "7/second", "routes": {"/x": {"limit": "1/second"}}}})
    gov = build_governance(cfg, registry=CollectorRegistry(), service_name="t")
    assert names(gov, STREAM) == ["metrics", "tracing"]  # the default's routes are kept
    assert gov.plugin("quota").settings.limit == "7/second"  # type: ignore[union-attr]
    variant = next(p for p in gov.chain.plan("http", "GET", "/x").plugins if p.name == "quota")
    assert variant.settings.limit == "1/second"  # type: ignore[union-attr]
    default_types = [p["type"] for p in DEFAULT_PLUGINS]
    assert [p.name for p in gov.chain.plugins] == ["metrics", "tracing", "auth", "adaptive", "quota", "breaker"]
    assert len(default_types) == 6


def test_override_can_drop_a_plugin() -> None:
    gov = build_governance(GovernanceSettings(overrides={"breaker": {"enabled": False}}),
                           registry=CollectorRegistry(), service_name="t")
    assert "breaker" not in names(gov, HTTP_WRITE)


def test_override_of_a_plugin_not_in_the_chain_is_a_config_error() -> None:
    with pytest.raises(GovernanceConfigError, match=r"overrides\.qouta: no plugin of type 'qouta'"):
        build_governance(GovernanceSettings(overrides={"qouta": {"limit": "1/second"}}),
                         registry=CollectorRegistry(), service_name="t")


def test_bad_override_setting_names_the_key() -> None:
    with pytest.raises(GovernanceConfigError, match=r"plugins\[4\]"):
        build_governance(GovernanceSettings(overrides={"quota": {"limit": "lots"}}),
                         registry=CollectorRegistry(), service_name="t")
