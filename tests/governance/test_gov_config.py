"""Building the chain from plain dicts: defaults, user plugins, overrides, and errors that name the key."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from governance import Governance, GovernanceConfigError

DENY = "tests.governance.gov_plugins:DenyList"


def build(cfg: object) -> Governance:
    return Governance.from_config(cfg, registry=CollectorRegistry())  # type: ignore[arg-type]


def plan_names(gov: Governance, method: str, route: str, transport: str = "http") -> list[str]:
    return [p.name for p in gov.chain.plan(transport, method, route).plugins]


def test_default_chain() -> None:
    gov = build(None)
    assert plan_names(gov, "GET", "/x") == ["metrics", "tracing", "adaptive", "breaker"]


def test_order_enabled_and_user_plugin_settings() -> None:
    gov = build({"plugins": [
        {"type": DENY, "settings": {"keys": ["a"]}},
        {"type": "metrics", "enabled": False},
        {"type": "breaker", "k": 1.5},
    ]})
    assert plan_names(gov, "GET", "/x") == ["denylist", "breaker"]
    assert gov.plugin("denylist").keys == {"a"}
    assert gov.plugin("breaker").settings.k == 1.5


def test_route_globs_first_match_wins_and_match_method_or_route() -> None:
    gov = build({"plugins": [
        {"type": "quota", "limit": "10/second", "routes": {
            "POST /v1/traffic": {"limit": "1/second"},
            "/v1/*": {"enabled": False},
            "/meterd.v1.TrafficWriter/*": {"limit": "5/second"},
        }},
    ]})
    traffic = gov.chain.plan("http", "POST", "/v1/traffic").plugins[0]
    assert traffic.settings.limit == "1/second"
    assert gov.chain.plan("http", "GET", "/v1/accounts/{id}").plugins == ()
    grpc_variant = gov.chain.plan("grpc", "unary", "/meterd.v1.TrafficWriter/Write").plugins[0]
    assert grpc_variant.settings.limit == "5/second"
    assert gov.chain.plan("http", "GET", "/healthz").plugins[0].settings.limit == "10/second"


def test_same_instances_for_every_transport_without_overrides() -> None:
    gov = build({"plugins": [{"type": "adaptive"}, {"type": DENY, "keys": []}]})
    assert gov.chain.plan("http", "GET", "/a").plugins == gov.chain.plan("grpc", "unary", "/s.S/M").plugins


@pytest.mark.parametrize("cfg, fragment", [
    ({"plugins": [{"type": "quota"}]}, "plugins[0].limit"),
    ({"plugins": [{"type": "quota", "limit": "ten"}]}, "plugins[0].limit"),
    ({"plugins": [{"type": "adaptive", "cpu_threshhold": 0.9}]}, "plugins[0].cpu_threshhold"),
    ({"plugins": [{"type": "metrics"}, {"type": "breaker", "k": 0.5}]}, "plugins[1].k"),
    ({"plugins": [{"type": "quota", "limit": "1/second", "routes": {"/x": {"limit": "x"}}}]},
     "plugins[0].routes['/x'].limit"),
    ({"plugins": [{"type": "adaptive", "routes": {"/x": {"enabled": "no"}}}]}, "plugins[0].routes['/x'].enabled"),
    ({"plugins": [{"type": "nonsense"}]}, "plugins[0].type: unknown plugin type 'nonsense'"),
    ({"plugins": [{"type": "no.such.module:Thing"}]}, "plugins[0].type: cannot import module 'no.such.module'"),
    ({"plugins": [{"type": "tests.governance.gov_plugins:Missing"}]}, "plugins[0].type: module"),
    ({"plugins": [{"type": "tests.governance.gov_plugins:NotAPlugin"}]}, "needs a `name` and `admit(call)`"),
    ({"plugins": [{"type": DENY, "settings": {"keyz": []}}]}, "plugins[0]: bad settings"),
    ({"plugins": [{"enabled": True}]}, "plugins[0].type"),
    ({"plugin": []}, "plugin: Extra inputs are not permitted"),
    ([{"type": "metrics"}], "must be a mapping"),
])
def test_bad_config_names_the_key(cfg: object, fragment: str) -> None:
    with pytest.raises(GovernanceConfigError) as info:
        build(cfg)
    assert fragment in str(info.value)


def test_outbound_breaker_settings_are_validated() -> None:
    gov = build({"plugins": []})
    with pytest.raises(GovernanceConfigError, match="fail_max"):
        gov.outbound_breaker("db", fail_max=0)
    assert gov.outbound_breaker("db") is gov.outbound_breaker("db")


def test_two_governance_objects_can_share_one_registry() -> None:
    reg = CollectorRegistry()
    Governance.from_config(None, registry=reg)
    Governance.from_config({"plugins": [{"type": "metrics"}, {"type": "adaptive"}]}, registry=reg)
