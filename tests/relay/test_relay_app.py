"""The relay app end to end in-process: webhook in, fake DingTalk (real signature checks) out."""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.relay import RelaySettings, build_relay_app
from service.relay.store import NotificationStore
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import alert, notification, relay_client, relay_settings


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_notification_is_delivered_signed_and_answered_200(fake_robot: FakeDingTalk) -> None:
    settings = relay_settings(fake_robot, robot={"mentions": {"mobiles": ["13800000000"]}})
    async with relay_client(settings, fake_robot) as (client, _app, registry):
        r = await client.post("/alerts/oncall", json=notification(alert("MeterdApiDown", severity="critical")))
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "delivered", "robot": "oncall"}
    assert fake_robot.violations == []
    [msg] = fake_robot.messages
    assert "MeterdApiDown" in msg.text and msg.body["at"]["atMobiles"] == ["13800000000"]
    assert _value(registry, "meterd_relay_messages_sent_total", robot="oncall") == 1
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="delivered") == 1
    assert _value(registry, "meterd_relay_send_seconds_count", robot="oncall") == 1


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"{not json", "invalid-json"),
        (b'{"version": "3", "status": "firing", "alerts": []}', "unsupported-version"),
        (b"[1, 2]", "unsupported-version"),
        (b'{"version": "4", "status": "firing", "alerts": []}', "invalid-payload"),
        (b'{"version": "4", "status": "burning", "alerts": [{"status": "firing"}]}', "invalid-payload"),
    ],
)
async def test_bad_payloads_get_400_problem_json(fake_robot: FakeDingTalk, body: bytes, kind: str) -> None:
    async with relay_client(relay_settings(fake_robot), fake_robot) as (client, _app, registry):
        r = await client.post("/alerts/oncall", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 400 and problem["type"].endswith(kind) and problem["detail"]
    if kind == "invalid-payload":
        assert problem["errors"] and all("field" in e for e in problem["errors"])
    assert fake_robot.messages == []
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="invalid") == 1


async def test_unknown_robot_is_404(fake_robot: FakeDingTalk) -> None:
    async with relay_client(relay_settings(fake_robot), fake_robot) as (client, _app, _registry):
        r = await client.post("/alerts/nobody", json=notification(alert()))
    assert r.status_code == 404 and r.json()["type"].endswith("unknown-robot")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((200, {"errcode": 130101, "errmsg": "send too fast"}), "rate_limited"),
        ((500, {}), "http_5xx"),
        ((200, {"errcode": -1, "errmsg": "system busy"}), "busy"),
    ],
)
async def test_retryable_dingtalk_errors_answer_503(fake_robot: FakeDingTalk, answer, reason: str) -> None:
    fake_robot.scripted.append(answer)
    async with relay_client(relay_settings(fake_robot), fake_robot) as (client, _app, registry):
        r = await client.post("/alerts/oncall", json=notification(alert()))
        assert r.status_code == 503
        assert r.headers["retry-after"] and r.json()["type"].endswith(":retry")
        assert _value(registry, "meterd_relay_send_failures_total", robot="oncall", reason=reason) == 1
        assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="retry") == 1
    # Nothing stays queued: Alertmanager owns the retry.
    assert fake_robot.messages == []


async def test_network_error_answers_503(fake_robot: FakeDingTalk) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    registry = CollectorRegistry()
    app = build_relay_app(relay_settings(fake_robot), registry=registry, transport=httpx.MockTransport(refuse))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
            r = await client.post("/alerts/oncall", json=notification(alert()))
    assert r.status_code == 503
    assert _value(registry, "meterd_relay_send_failures_total", robot="oncall", reason="network") == 1


async def test_permanent_rejection_answers_424_and_is_counted(
    fake_robot: FakeDingTalk, caplog: pytest.LogCaptureFixture
) -> None:
    # A robot configured with the wrong secret: DingTalk answers 310000 and retrying cannot help.
    settings = relay_settings(fake_robot, robot={"secret": "SECthe-wrong-one"})
    caplog.set_level(logging.DEBUG)
    async with relay_client(settings, fake_robot) as (client, _app, registry):
        r = await client.post("/alerts/oncall", json=notification(alert()))
    assert r.status_code == 424
    assert "310000" in r.json()["detail"]
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="rejected") == 1
    assert _value(registry, "meterd_relay_send_failures_total", robot="oncall", reason="api_error") == 1
    # Never log secrets, the access token or the signed URL.
    assert "310000" in caplog.text
    for secret in ("SECthe-wrong-one", fake_robot.access_token, "sign="):
        assert secret not in caplog.text
        assert secret not in r.text


async def test_burst_is_merged_within_the_rate_limit(fake_robot: FakeDingTalk) -> None:
    # A short window stands in for DingTalk's 60 s: 3 messages per 1.5 s.
    fake_robot.max_per_minute, fake_robot.window_s = 3, 1.5
    settings = relay_settings(fake_robot, max_messages_per_minute=3, ack_timeout_s=0.3)
    async with relay_client(settings, fake_robot, window_s=1.5) as (client, app, registry):
        # Spend the budget first, so the burst meets an exhausted robot.
        for i in range(3):
            r = await client.post("/alerts/oncall", json=notification(alert(f"Early{i}", fingerprint=f"e{i}")))
            assert r.status_code == 200
        payloads = [notification(alert(f"Burst{i:02d}", fingerprint=f"b{i}")) for i in range(50)]
        responses = await asyncio.gather(*(client.post("/alerts/oncall", json=p) for p in payloads))
        # No budget within ack_timeout: the relay took every one of them over.
        assert [r.status_code for r in responses] == [202] * 50
        relay = app.state.relay
        for _ in range(100):
            if relay.dispatchers["oncall"].pending == 0 and _delivered(registry) == 53:
                break
            await asyncio.sleep(0.1)
    assert fake_robot.violations == []
    assert fake_robot.max_in_window() <= 3
    burst_messages = fake_robot.messages[3:]
    seen = [name for m in burst_messages for name in _names(m.text)]
    assert sorted(seen) == [f"Burst{i:02d}" for i in range(50)]  # each exactly once
    assert 1 <= len(burst_messages) <= 3  # merged, not one message per alert
    assert all(m.size <= 20_000 for m in burst_messages)
    assert not any("truncated" in m.text for m in burst_messages)  # split over messages, not cut
    assert _value(registry, "meterd_relay_alerts_merged_total", robot="oncall") == 50 - len(burst_messages)
    assert _value(registry, "meterd_relay_notifications_queued_total", robot="oncall") == 50


def _delivered(registry: CollectorRegistry) -> float:
    return _value(registry, "meterd_relay_notifications_total", robot="oncall", result="delivered")


def _names(text: str) -> list[str]:
    # Each alert's heading names it once ("… · WARNING · Burst07").
    return re.findall(r"· (Burst\d\d)\n", text)


async def test_queued_notifications_survive_a_rate_limited_send(fake_robot: FakeDingTalk) -> None:
    # Budget of 1: the second notification is queued (202); DingTalk then says "too fast" once;
    # the relay retries on its own and delivers.
    fake_robot.window_s = 0.5
    settings = relay_settings(fake_robot, max_messages_per_minute=1, ack_timeout_s=0.1, retry_backoff_initial_s=0.2)
    async with relay_client(settings, fake_robot, window_s=0.5) as (client, _app, registry):
        first = await client.post("/alerts/oncall", json=notification(alert("First", fingerprint="1")))
        assert first.status_code == 200
        fake_robot.scripted.append((200, {"errcode": 130101, "errmsg": "send too fast"}))
        second = await client.post("/alerts/oncall", json=notification(alert("Second", fingerprint="2")))
        assert second.status_code == 202
        for _ in range(50):
            if len(fake_robot.messages) == 2:
                break
            await asyncio.sleep(0.1)
    assert [("First" in m.text, "Second" in m.text) for m in fake_robot.messages] == [(True, False), (False, True)]
    assert _value(registry, "meterd_relay_send_failures_total", robot="oncall", reason="rate_limited") == 1
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="delivered") == 2


async def test_full_queue_answers_503_overloaded(fake_robot: FakeDingTalk) -> None:
    settings = relay_settings(fake_robot, max_messages_per_minute=1, ack_timeout_s=0.05, max_pending_notifications=2)
    async with relay_client(settings, fake_robot) as (client, _app, registry):
        assert (await client.post("/alerts/oncall", json=notification(alert("A", fingerprint="a")))).status_code == 200
        for name in ("B", "C"):
            r = await client.post("/alerts/oncall", json=notification(alert(name, fingerprint=name)))
            assert r.status_code == 202
        r = await client.post("/alerts/oncall", json=notification(alert("D", fingerprint="d")))
        assert r.status_code == 503 and r.json()["type"].endswith("overloaded")
        assert _value(registry, "meterd_relay_pending_notifications", robot="oncall") == 2
    # Shutting down with queued, relay-owned notifications and no budget: they stay stored, not dropped.
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="dropped") == 0
    assert settings.data_dir is not None
    assert [r.robot for r in NotificationStore(settings.data_dir).load()] == ["oncall", "oncall"]
    # The next start (same data_dir, fresh budget) sends them, and the store empties.
    restarted = relay_settings(fake_robot, max_messages_per_minute=20)
    async with relay_client(restarted, fake_robot) as (_client, app, registry):
        for _ in range(50):
            if len(fake_robot.messages) == 2 and app.state.relay.dispatchers["oncall"].pending == 0:
                break
            await asyncio.sleep(0.1)
    assert "B" in fake_robot.messages[1].text and "C" in fake_robot.messages[1].text
    assert NotificationStore(settings.data_dir).load() == []
    assert _value(registry, "meterd_relay_notifications_total", robot="oncall", result="delivered") == 2


async def test_a_restarted_relay_keeps_the_send_budget_spent_before(fake_robot: FakeDingTalk) -> None:
    # Budget 1 per 2 s: A spends it, B is stored; the relay restarts at once. B must wait for A's
    # send to leave the window, as it would have without the restart (DingTalk throttles a robot
    # that goes over its budget).
    fake_robot.window_s = 2.0
    fake_robot.max_per_minute = 1
    settings = relay_settings(fake_robot, max_messages_per_minute=1, ack_timeout_s=0.05)
    async with relay_client(settings, fake_robot, window_s=2.0) as (client, _app, _registry):
        assert (await client.post("/alerts/oncall", json=notification(alert("A", fingerprint="a")))).status_code == 200
        r = await client.post("/alerts/oncall", json=notification(alert("B", fingerprint="b")))
        assert r.status_code == 202
    async with relay_client(settings, fake_robot, window_s=2.0) as (_client, app, _registry):
        dispatcher = app.state.relay.dispatchers["oncall"]
        assert dispatcher.limiter.remaining() == 0  # A's send, from the store
        for _ in range(60):
            if len(fake_robot.messages) == 2:
                break
            await asyncio.sleep(0.1)
    first, second = fake_robot.messages
    assert "A" in first.text and "B" in second.text
    assert second.at - first.at >= 2.0
    assert fake_robot.violations == []


async def test_without_data_dir_the_relay_answers_503_instead_of_202(fake_robot: FakeDingTalk) -> None:
    # No store: the relay cannot keep a promise across a restart, so Alertmanager keeps the notification.
    settings = relay_settings(fake_robot, max_messages_per_minute=1, ack_timeout_s=0.05, data_dir=None)
    async with relay_client(settings, fake_robot) as (client, app, registry):
        assert (await client.post("/alerts/oncall", json=notification(alert("A", fingerprint="a")))).status_code == 200
        r = await client.post("/alerts/oncall", json=notification(alert("B", fingerprint="b")))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert app.state.relay.dispatchers["oncall"].pending == 0  # not sent behind Alertmanager's back
    assert _value(registry, "meterd_relay_notifications_queued_total", robot="oncall") == 0
    assert [("A" in m.text) for m in fake_robot.messages] == [True]


async def test_default_path_routes_by_receiver_then_severity_then_default() -> None:
    fakes = {name: FakeDingTalk(secret=f"SEC-{name}", access_token=f"tok-{name}") for name in ("ops", "dev", "all")}
    # One fake app serves all three robots (it checks token and secret per robot).
    robots = {name: {"webhook_url": f.webhook_url, "secret": f.secret} for name, f in fakes.items()}
    settings = RelaySettings.model_validate(
        {
            "robots": robots,
            "merge_window_s": 0,
            "routes": {"receivers": {"team-dev": "dev"}, "severities": {"critical": "ops"}, "default": "all"},
        }
    )

    async def route(request: httpx.Request) -> httpx.Response:
        token = request.url.params["access_token"]
        fake = next(f for f in fakes.values() if f.access_token == token)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as c:
            upstream = await c.post(str(request.url), content=request.content)
        return httpx.Response(upstream.status_code, content=upstream.content)

    app = build_relay_app(settings, registry=CollectorRegistry(), transport=httpx.MockTransport(route))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
            cases = [
                (notification(alert("ToDev", severity="critical"), receiver="team-dev"), "dev"),
                (notification(alert("ToOps", severity="critical"), receiver="other"), "ops"),
                (notification(alert("ToAll", severity="info"), receiver="other"), "all"),
            ]
            for payload, robot in cases:
                r = await client.post("/alerts", json=payload)
                assert r.status_code == 200 and r.json()["robot"] == robot
    for name, expected in (("dev", "ToDev"), ("ops", "ToOps"), ("all", "ToAll")):
        assert [expected in m.text for m in fakes[name].messages] == [True]
        assert fakes[name].violations == []


async def test_health_ready_and_metrics(fake_robot: FakeDingTalk) -> None:
    async with relay_client(relay_settings(fake_robot), fake_robot) as (client, _app, _registry):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["pending"] == {"oncall": 0}
        metrics = (await client.get("/metrics")).text
    for name in (
        'meterd_relay_notifications_total{result="delivered",robot="oncall"} 0.0',
        'meterd_relay_messages_sent_total{robot="oncall"} 0.0',
        "meterd_relay_send_seconds_bucket",
        "meterd_relay_alerts_merged_total",
        "meterd_relay_truncated_total",
        "meterd_relay_pending_notifications",
    ):
        assert name in metrics
    empty = build_relay_app(RelaySettings(), registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=empty), base_url="http://relay") as client:
        assert (await client.get("/readyz")).status_code == 503


def test_settings_secrets_from_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    # How meterd's config embeds the section: a BaseSettings with METERD_ prefix and "__" nesting.
    class Outer(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="METERD_", env_nested_delimiter="__")
        relay: dict = {}

    monkeypatch.setenv(
        "METERD_RELAY__ROBOTS__ONCALL__WEBHOOK_URL", "https://oapi.dingtalk.com/robot/send?access_token=x"
    )
    monkeypatch.setenv("METERD_RELAY__ROBOTS__ONCALL__SECRET", "SECfromenv")
    monkeypatch.setenv("METERD_RELAY__MAX_MESSAGES_PER_MINUTE", "10")
    settings = RelaySettings.model_validate(Outer().relay)
    robot = settings.robots["oncall"]
    assert robot.secret is not None and robot.secret.get_secret_value() == "SECfromenv"
    assert settings.robot_rate("oncall") == 10
    assert "SECfromenv" not in repr(settings) and "access_token" not in repr(settings)

    with pytest.raises(ValidationError, match="unknown robots: nope"):
        RelaySettings.model_validate({"robots": {}, "routes": {"default": "nope"}})
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"max_messages_per_minute": 21})
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"max_message_bytes": 20_001})
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"timezone": "Mars/Olympus"})
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"robots": {"x": {"webhook_url": "ftp://x"}}})
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"robotz": {}})
