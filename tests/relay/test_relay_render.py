"""Markdown rendering: content, mentions, merging and truncation under the byte limit."""

from __future__ import annotations

import json
import re

from service.relay.payload import WebhookMessage
from service.relay.render import Renderer, encode_body, merge_alerts
from service.relay.settings import MentionSettings, RelaySettings
from tests.relay.helpers import alert, notification

LIMIT = 20_000


def _settings(**kw: object) -> RelaySettings:
    base: dict[str, object] = {
        "robots": {"oncall": {"webhook_url": "https://robot.test/send?access_token=t"}},
        "alertmanager_url": "http://am.example:9093",
        "dashboard_url": "http://grafana.example:3000",
        "runbook_base_url": "https://git.example/meterd/alerts/RUNBOOKS.md",
    }
    base.update(kw)
    return RelaySettings.model_validate(base)


def _msg(*alerts: dict, **kw: object) -> WebhookMessage:
    return WebhookMessage.model_validate(notification(*alerts, **kw))


def _truncated_count(text: str) -> int:
    match = re.search(r"… (\d+) more alerts truncated", text)
    return int(match.group(1)) if match else 0


def test_firing_message_has_header_labels_annotations_links_and_times() -> None:
    renderer = Renderer(_settings(timezone="Asia/Shanghai"))
    out = renderer.render(
        [_msg(alert("MeterdApiDown", severity="critical", instance="api:8080", job="meterd-api"))],
        MentionSettings(),
    )
    body = out.body
    assert body["msgtype"] == "markdown"
    title, text = body["markdown"]["title"], body["markdown"]["text"]
    assert title.startswith("[meterd] ") and "FIRING 1" in title and "MeterdApiDown" in title
    assert "FIRING · CRITICAL · MeterdApiDown" in text
    assert "> MeterdApiDown summary" in text and "MeterdApiDown description" in text
    assert "- instance: `api:8080`" in text and "- job: `meterd-api`" in text
    # 03:04:05Z is 11:04:05 in Shanghai.
    assert "started: 2025-01-02 11:04:05 CST" in text
    assert "[Runbook](https://runbooks.example/MeterdApiDown)" in text
    assert "[Dashboard](http://grafana.example:3000/d/meterd-overview/meterd-overview)" in text
    assert "[Source](http://prometheus.example:9090/graph?g0.expr=MeterdApiDown)" in text
    assert "[Silence](http://am.example:9093/#/silences/new?filter=%7Balertname%3D%22MeterdApiDown%22" in text
    assert out.firing == 1 and out.resolved == 0 and out.truncated == 0
    assert json.loads(out.encoded) == body


def test_relative_runbook_joins_base_and_resolved_shows_end_and_duration() -> None:
    a = alert("MeterdDlqGrowing", status="resolved")
    a["annotations"]["runbook_url"] = "#meterddlqgrowing"
    out = Renderer(_settings()).render([_msg(a, status="resolved")], MentionSettings(mobiles=["13800000000"]))
    text = out.body["markdown"]["text"]
    assert "RESOLVED 1" in out.body["markdown"]["title"] and "FIRING" not in out.body["markdown"]["title"]
    assert "[Runbook](https://git.example/meterd/alerts/RUNBOOKS.md/#meterddlqgrowing)" in text
    assert "resolved: 2025-01-02 03:14:05 UTC (lasted 9m59s)" in text
    assert "[Silence]" not in text  # nothing to silence any more
    # Resolved-only messages do not page anybody by default.
    assert out.body["at"] == {"atMobiles": [], "atUserIds": [], "isAtAll": False}
    assert "@13800000000" not in text


def test_mentions_are_in_at_and_in_text_and_at_all_only_for_listed_severities() -> None:
    mentions = MentionSettings(mobiles=["13800000000"], user_ids=["manager01"], at_all_for_severities=["critical"])
    renderer = Renderer(_settings())
    warn = renderer.render([_msg(alert("W", severity="warning"))], mentions)
    assert warn.body["at"] == {"atMobiles": ["13800000000"], "atUserIds": ["manager01"], "isAtAll": False}
    assert warn.body["markdown"]["text"].rstrip().endswith("@13800000000 @manager01")
    crit = renderer.render([_msg(alert("C", severity="critical"))], mentions)
    assert crit.body["at"]["isAtAll"] is True
    resolved_too = renderer.render(
        [_msg(alert("C", status="resolved", severity="critical"), status="resolved")],
        MentionSettings(mobiles=["13800000000"], on_resolved=True, at_all_for_severities=["critical"]),
    )
    assert resolved_too.body["at"]["atMobiles"] == ["13800000000"]
    assert resolved_too.body["at"]["isAtAll"] is False  # @all is for firing alerts only


def test_merge_keeps_latest_state_and_orders_by_importance() -> None:
    first = _msg(alert("A", severity="warning", fingerprint="a"), alert("B", severity="info", fingerprint="b"))
    later = _msg(
        alert("A", status="resolved", severity="warning", fingerprint="a"),
        alert("C", severity="critical", fingerprint="c"),
        status="firing",
    )
    merged = merge_alerts([first, later])
    assert [(a.name, a.status) for a in merged] == [("C", "firing"), ("B", "firing"), ("A", "resolved")]
    out = Renderer(_settings()).render([first, later], MentionSettings())
    assert (out.firing, out.resolved, out.alerts_total) == (2, 1, 3)
    assert "FIRING 2" in out.body["markdown"]["title"] and "RESOLVED 1" in out.body["markdown"]["title"]
    assert "3 alert names" in out.body["markdown"]["title"]


def test_truncates_to_byte_limit_with_count_and_keeps_most_important() -> None:
    alerts = []
    for i in range(300):
        a = alert(f"Storm{i:03d}", severity="critical" if i < 5 else "info", fingerprint=f"s{i}", instance=f"node-{i}")
        a["annotations"]["description"] = "流量异常 traffic anomaly " * 30  # multi-byte UTF-8 text
        alerts.append(a)
    out = Renderer(_settings()).render([_msg(*alerts)], MentionSettings(mobiles=["13800000000"]))
    assert len(out.encoded) <= LIMIT
    assert len(encode_body(out.body)) == len(out.encoded)
    text = out.body["markdown"]["text"]
    assert 0 < out.alerts_shown < 300
    assert _truncated_count(text) == 300 - out.alerts_shown == out.truncated
    # The critical ones are never the ones cut, and the mention survives truncation.
    for i in range(5):
        assert f"Storm{i:03d}" in text
    assert out.body["at"]["atMobiles"] == ["13800000000"] and "@13800000000" in text
    # Dense enough: the truncation leaves little unused room.
    assert len(out.encoded) > LIMIT - 2_000


def test_single_huge_alert_is_cut_rather_than_dropped() -> None:
    a = alert("Huge", fingerprint="h")
    a["labels"].update({f"label{i}": "x" * 900 for i in range(40)})
    out = Renderer(_settings()).render([_msg(a)], MentionSettings())
    assert len(out.encoded) <= LIMIT
    assert "Huge" in out.body["markdown"]["text"]


def test_every_limit_is_respected_for_many_sizes() -> None:
    # Property-style sweep: any number of alerts and any configured limit stays within the limit.
    renderer_limits = (1000, 5000, 20_000)
    for limit in renderer_limits:
        renderer = Renderer(_settings(max_message_bytes=limit))
        for count in (1, 2, 7, 40, 120):
            alerts = [alert(f"A{i}", fingerprint=f"f{i}", pod=f"p{i}" * 20) for i in range(count)]
            out = renderer.render([_msg(*alerts)], MentionSettings(mobiles=["13800000000"]))
            assert len(out.encoded) <= limit, (limit, count, len(out.encoded))
            assert out.alerts_shown + _truncated_count(out.body["markdown"]["text"]) == count


def test_upstream_truncation_is_mentioned() -> None:
    out = Renderer(_settings()).render([_msg(alert("A"), truncatedAlerts=12)], MentionSettings())
    assert "left out 12 more alerts" in out.body["markdown"]["text"]
