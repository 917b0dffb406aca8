"""Quota plugin against the `limits` memory storage: per-key/per-route counting and RateLimit fields."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from governance.asgi import encode_headers
from governance.core import Call, Rejection
from governance.plugins import PluginContext
from governance.plugins.quota import QuotaPlugin, QuotaSettings


def plugin(**kw: object) -> QuotaPlugin:
    return QuotaPlugin(PluginContext(CollectorRegistry(), "t"), QuotaSettings(**kw))


def call(key: str | None = "alice", route: str = "/v1/traffic") -> Call:
    return Call("http", route, "POST", key, 0.0)


def reply_headers(c: Call) -> dict[str, str]:
    """The call's response headers as the ASGI adapter will send them, decoded."""
    return {k.decode(): v.decode() for k, v in encode_headers(c.response_headers or [])}


async def test_limit_per_client_key_with_headers() -> None:
    q = plugin(limit="3/minute;100/hour")
    for expected_remaining in (2, 1, 0):
        c = call()
        await q.before(c)
        headers = reply_headers(c)
        assert headers["ratelimit-policy"] == '"3-per-minute";q=3;w=60, "100-per-hour";q=100;w=3600'
        assert headers["ratelimit"].startswith(f'"3-per-minute";r={expected_remaining};t=')
    with pytest.raises(Rejection) as info:
        await q.before(call())
    rej = info.value
    assert (rej.plugin, rej.reason, rej.status) == ("quota", "limit_exceeded", "rate_limited")
    assert 1 <= rej.retry_after <= 60
    assert dict(rej.headers or [])["RateLimit"].startswith('"3-per-minute";r=0;t=')
    await q.before(call("bob"))  # other keys have their own bucket


async def test_anonymous_calls_share_one_bucket() -> None:
    q = plugin(limit="1/minute")
    await q.before(call(None))
    with pytest.raises(Rejection):
        await q.before(call(None))


async def test_per_route_counts_all_clients_together() -> None:
    q = plugin(limit="2/minute", per="route", headers=False)
    await q.before(call("a"))
    await q.before(call("b"))
    with pytest.raises(Rejection):
        await q.before(call("c"))
    await q.before(call("c", route="/other"))


async def test_route_variant_has_its_own_namespace_and_limit() -> None:
    base = plugin(limit="1/minute")
    variant = base.derive({"limit": "2/minute"}, "POST /v1/traffic")
    assert variant.storage is base.storage
    await base.before(call())
    await variant.before(call())
    await variant.before(call())
    with pytest.raises(Rejection):
        await variant.before(call())


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window", "fixed-window"])
async def test_every_strategy_enforces(strategy: str) -> None:
    q = plugin(limit="2/minute", strategy=strategy, headers=False)
    await q.before(call())
    await q.before(call())
    with pytest.raises(Rejection):
        await q.before(call())


async def test_unreachable_storage_fails_open_or_closed() -> None:
    # A port nothing listens on; connection errors must not turn into 500s.
    open_q = plugin(limit="1/second", storage="redis://127.0.0.1:1", headers=False,
                    storage_options={"socket_connect_timeout": 0.2})
    await open_q.before(call())
    closed_q = plugin(limit="1/second", storage="redis://127.0.0.1:1", fail_open=False, headers=False,
                      storage_options={"socket_connect_timeout": 0.2})
    with pytest.raises(Rejection) as info:
        await closed_q.before(call())
    assert info.value.status == "unavailable"


def test_bad_limit_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="limits string"):
        QuotaSettings(limit="lots")
