"""Alertmanager notifications -> one DingTalk markdown message that fits the byte limit.

Several notifications (possibly from different Alertmanager groups) merge into one message; the
same alert seen twice keeps its latest state. Alerts are ordered by importance (firing before
resolved, critical before warning before info), so when the body would exceed the limit the least
important alerts are the ones replaced by a "… N more alerts truncated" line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from service.relay.payload import Alert, WebhookMessage, severity_rank
from service.relay.settings import MentionSettings, RelaySettings

# Labels shown in the heading rather than in the label list.
_HEADING_LABELS = ("alertname", "severity")
# Labels that identify an alert well enough for a pre-filled silence.
_SILENCE_LABELS = ("alertname", "service", "job", "instance")
_ICON = {"firing": "🔥", "resolved": "✅"}


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent to DingTalk; sizes are measured on this encoding."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_len(text: str) -> int:
    # JSON escaping is per character, so the encoded size of a concatenation is the sum of the
    # encoded sizes of its parts: blocks can be measured once and added up.
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _cut(text: str, max_bytes: int) -> str:
    """Longest prefix of text (plus an ellipsis) whose JSON-encoded size is at most max_bytes."""
    if _json_len(text) <= max_bytes:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _json_len(text[:mid] + "…") <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…" if lo or _json_len("…") <= max_bytes else ""


@dataclass(frozen=True)
class RenderedMessage:
    body: dict[str, Any]
    encoded: bytes
    alerts_total: int
    alerts_shown: int
    firing: int
    resolved: int

    @property
    def truncated(self) -> int:
        return self.alerts_total - self.alerts_shown


def merge_alerts(notifications: Iterable[WebhookMessage]) -> list[Alert]:
    """All alerts, latest state per alert, most important first."""
    latest: dict[str, Alert] = {}
    for notification in notifications:
        for alert in notification.alerts:
            latest.pop(alert.identity, None)  # re-insert so the later state wins
            latest[alert.identity] = alert
    return sorted(
        latest.values(),
        key=lambda a: (
            a.status != "firing",
            severity_rank(a.severity),
            a.name,
            a.startsAt.timestamp() if a.startsAt else 0.0,
        ),
    )


class Renderer:
    def __init__(self, settings: RelaySettings) -> None:
        self._settings = settings
        self._tz = ZoneInfo(settings.timezone)

    def render(self, notifications: Sequence[WebhookMessage], mentions: MentionSettings) -> RenderedMessage:
        s = self._settings
        alerts = merge_alerts(notifications)
        firing = sum(1 for a in alerts if a.status == "firing")
        resolved = len(alerts) - firing
        am_url = (s.alertmanager_url or (notifications[-1].externalURL if notifications else "")).rstrip("/")
        omitted_upstream = sum(n.truncatedAlerts for n in notifications)

        title = self._title(alerts, firing, resolved)
        head = f"### {title}\n\n"
        if omitted_upstream:
            head += f"Alertmanager left out {omitted_upstream} more alerts (webhook max_alerts).\n\n"

        at_mobiles, at_user_ids, at_all = self._mentions(alerts, mentions)
        footer = self._footer(am_url, at_mobiles, at_user_ids)
        at = {"atMobiles": at_mobiles, "atUserIds": at_user_ids, "isAtAll": at_all}

        def body_for(text: str) -> dict[str, Any]:
            return {"msgtype": "markdown", "markdown": {"title": title, "text": text}, "at": at}

        blocks = [self._block(a, am_url) for a in alerts]
        budget = s.max_message_bytes
        fixed = len(encode_body(body_for(head + footer)))
        sizes = [_json_len(b) for b in blocks]
        if fixed + sum(sizes) <= budget:
            shown = len(blocks)
            text = head + "".join(blocks) + footer
        else:
            # Reserve room for the longest truncation line this message could need.
            worst_line = self._truncation_line(len(blocks), am_url)
            room = budget - fixed - _json_len(worst_line)
            shown, used = 0, 0
            for size in sizes:
                if used + size > room:
                    break
                used += size
                shown += 1
            kept = blocks[:shown]
            if shown == 0 and blocks and room > 0:
                # One alert alone is too big (huge labels): show what fits of it rather than nothing.
                kept = [_cut(blocks[0], room)]
                shown = 1
            text = head + "".join(kept) + self._truncation_line(len(blocks) - shown, am_url) + footer

        body = body_for(text)
        encoded = encode_body(body)
        if len(encoded) > budget:
            # Last resort (e.g. an enormous mention list): cut the text itself.
            overflow = len(encoded) - budget
            body = body_for(_cut(text, _json_len(text) - overflow))
            encoded = encode_body(body)
        return RenderedMessage(body, encoded, len(alerts), shown, firing, resolved)

    def _title(self, alerts: Sequence[Alert], firing: int, resolved: int) -> str:
        counts = []
        if firing:
            counts.append(f"{_ICON['firing']} FIRING {firing}")
        if resolved:
            counts.append(f"{_ICON['resolved']} RESOLVED {resolved}")
        names = sorted({a.name for a in alerts})
        subject = names[0] if len(names) == 1 else f"{len(names)} alert names"
        prefix = f"{self._settings.title_prefix} " if self._settings.title_prefix else ""
        return f"{prefix}{' · '.join(counts)} · {subject}"

    def _block(self, alert: Alert, am_url: str) -> str:
        s = self._settings
        severity = (alert.severity or "none").upper()
        lines = [f"#### {_ICON[alert.status]} {alert.status.upper()} · {severity} · {_inline(alert.name)}"]
        ann = alert.annotations
        if summary := ann.get("summary"):
            lines.append(f"> {_inline(summary)[: s.max_annotation_chars]}")
        if description := ann.get("description"):
            lines.append(_clip(description.strip(), s.max_annotation_chars))
        for key, value in sorted(alert.labels.items()):
            if key not in _HEADING_LABELS:
                lines.append(f"- {_inline(key)}: `{_inline(value)}`")
        if alert.startsAt:
            lines.append(f"- started: {self._time(alert.startsAt)}")
        if alert.status == "resolved" and alert.endsAt:
            lasted = f" (lasted {_duration(alert.endsAt - alert.startsAt)})" if alert.startsAt else ""
            lines.append(f"- resolved: {self._time(alert.endsAt)}{lasted}")
        for key, value in sorted(ann.items()):
            if key not in ("summary", "description", "runbook_url", "dashboard_url"):
                lines.append(f"- {_inline(key)}: {_clip(_inline(value), s.max_annotation_chars)}")
        links = []
        if runbook := ann.get("runbook_url"):
            links.append(f"[Runbook]({_join(s.runbook_base_url, runbook)})")
        if dashboard := ann.get("dashboard_url"):
            links.append(f"[Dashboard]({_join(s.dashboard_url, dashboard)})")
        if alert.generatorURL:
            links.append(f"[Source]({alert.generatorURL})")
        if am_url and alert.status == "firing":
            links.append(f"[Silence]({am_url}/#/silences/new?filter={_silence_filter(alert)})")
        if links:
            lines.append(" | ".join(links))
        return _paragraphs(lines) + "\n\n"

    def _truncation_line(self, count: int, am_url: str) -> str:
        where = f" — see [Alertmanager]({am_url})" if am_url else ""
        return f"**… {count} more alerts truncated**{where}\n\n"

    def _footer(self, am_url: str, mobiles: Sequence[str], user_ids: Sequence[str]) -> str:
        links = []
        if am_url:
            links.append(f"[Alertmanager]({am_url})")
        if self._settings.dashboard_url:
            links.append(f"[Grafana]({self._settings.dashboard_url})")
        footer = " | ".join(links)
        # DingTalk highlights a mention only when "@<mobile>" / "@<userId>" also appears in the text.
        ats = " ".join(f"@{m}" for m in [*mobiles, *user_ids])
        return "\n\n".join(part for part in (footer, ats) if part)

    def _mentions(self, alerts: Sequence[Alert], mentions: MentionSettings) -> tuple[list[str], list[str], bool]:
        firing = [a for a in alerts if a.status == "firing"]
        if not firing and not mentions.on_resolved:
            return [], [], False
        at_all_for = {s.lower() for s in mentions.at_all_for_severities}
        at_all = any(a.severity.lower() in at_all_for for a in firing)
        return list(mentions.mobiles), list(mentions.user_ids), at_all

    def _time(self, moment: datetime) -> str:
        return moment.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _paragraphs(lines: Sequence[str]) -> str:
    # Consecutive list items stay one list ("\n"); everything else is its own paragraph ("\n\n"),
    # which DingTalk's markdown needs for a visible line break.
    out = ""
    for i, line in enumerate(lines):
        if i:
            out += "\n" if line.startswith("- ") and lines[i - 1].startswith("- ") else "\n\n"
        out += line
    return out


def _inline(value: str) -> str:
    # Keep one label or summary on one markdown line.
    return " ".join(value.split())


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def _join(base: str | None, link: str) -> str:
    if base and not link.startswith(("http://", "https://")):
        return base.rstrip("/") + "/" + link.lstrip("/")
    return link


def _silence_filter(alert: Alert) -> str:
    matchers = ",".join(f'{k}="{alert.labels[k]}"' for k in _SILENCE_LABELS if k in alert.labels)
    return quote("{" + matchers + "}", safe="")


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
