"""Quota plugins: the sync one on in-process fixed windows, the async one on `limits` storages;
per-key/per-route counting and RateLimit fields."""

from __future__ import annotations

import inspect

import pytest
from prometheus_client import CollectorRegistry

from governance.core import NOOP, Call, Rejection, Token
from governance.plugins import PluginContext
from governance.plugins.quota import QuotaPlugin, QuotaSettings, SharedQuotaPlugin, create


def plugin(label: str = "default", ctx: PluginContext | None = None, **kw: object) -> QuotaPlugin | SharedQuotaPlugin:
    return create(dict(kw), ctx or PluginContext(CollectorRegistry(), "t"), label)


def call(key: str | None = "alice", route: str = "/v1/traffic") -> Call:
    return Call("http", route, "POST", key, 0.0)


async def admit(q: QuotaPlugin | SharedQuotaPlugin, c: Call) -> Token | Rejection:
    result = q.admit(c)
    return await result if inspect.isawaitable(result) else result  # type: ignore[return-value]


def reply_headers(c: Call) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in c.response_headers or []}


def test_memory_fixed_window_is_the_sync_plugin_and_others_are_async() -> None:
    assert isinstance(plugin(limit="1/second"), QuotaPlugin)
    assert not inspect.iscoroutinefunction(plugin(limit="1/second").admit)
    shared = plugin(limit="1/second", strategy="moving-window")
    assert isinstance(shared, SharedQuotaPlugin) and inspect.iscoroutinefunction(shared.admit)


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
async def test_limit_per_client_key_with_headers(strategy: str) -> None:
    q = plugin(limit="3/minute;100/hour", strategy=strategy)
    for expected_remaining in (2, 1, 0):
        c = call()
        assert await admit(q, c) is NOOP
        headers = reply_headers(c)
        assert headers["ratelimit-policy"] == '"3-per-minute";q=3;w=60, "100-per-hour";q=100;w=3600'
        assert headers["ratelimit"].startswith(f'"3-per-minute";r={expected_remaining};t=')
    rej = await admit(q, call())
    assert isinstance(rej, Rejection)
    assert (rej.plugin, rej.reason, rej.status) == ("quota", "limit_exceeded", "rate_limited")
    assert 1 <= rej.retry_after <= 60
    assert dict(rej.headers)["RateLimit"].startswith('"3-per-minute";r=0;t=')
    assert await admit(q, call("bob")) is NOOP  # other keys have their own bucket


async def test_anonymous_calls_share_one_bucket() -> None:
    q = plugin(limit="1/minute")
    assert await admit(q, call(None)) is NOOP
    assert isinstance(await admit(q, call(None)), Rejection)


async def test_per_route_counts_all_clients_together() -> None:
    q = plugin(limit="2/minute", per="route", headers=False)
    assert await admit(q, call("a")) is NOOP
    assert await admit(q, call("b")) is NOOP
    assert isinstance(await admit(q, call("c")), Rejection)
    assert await admit(q, call("c", route="/other")) is NOOP


async def test_route_variant_has_its_own_namespace_and_limit() -> None:
    ctx = PluginContext(CollectorRegistry(), "t")
    base = plugin(limit="1/minute", ctx=ctx)
    variant = plugin("POST /v1/traffic", ctx=ctx, limit="2/minute")
    assert variant.storage is base.storage
    assert await admit(base, call()) is NOOP
    assert await admit(variant, call()) is NOOP
    assert await admit(variant, call()) is NOOP
    assert isinstance(await admit(variant, call()), Rejection)


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window", "fixed-window"])
async def test_every_strategy_enforces(strategy: str) -> None:
    q = plugin(limit="2/minute", strategy=strategy, headers=False)
    assert await admit(q, call()) is NOOP
    assert await admit(q, call()) is NOOP
    assert isinstance(await admit(q, call()), Rejection)


async def test_unreachable_storage_fails_open_or_closed() -> None:
    # A port nothing listens on; connection errors must not turn into 500s.
    open_q = plugin(limit="1/second", storage="redis://127.0.0.1:1", headers=False,
                    storage_options={"socket_connect_timeout": 0.2})
    assert await admit(open_q, call()) is NOOP
    closed_q = plugin(limit="1/second", storage="redis://127.0.0.1:1", fail_open=False, headers=False,
                      storage_options={"socket_connect_timeout": 0.2})
    refused = await admit(closed_q, call())
    assert isinstance(refused, Rejection) and refused.status == "unavailable"


def test_bad_limit_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="limits string"):
        QuotaSettings(limit="lots")
