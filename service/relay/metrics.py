"""The relay's own Prometheus metrics (names listed in tests/observability/emitted_metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Final fate of one webhook notification.
NOTIFICATION_RESULTS = ("delivered", "retry", "rejected", "dropped", "overloaded", "invalid", "unauthorized")
SEND_FAILURE_REASONS = (
    "rate_limited",
    "busy",
    "network",
    "timeout",
    "http_5xx",
    "http_429",
    "http_4xx",
    "bad_response",
    "api_error",
    "internal",
)
# Label value for requests that name no configured robot (keeps the label set bounded).
UNKNOWN_ROBOT = "unknown"


@dataclass(frozen=True)
class RelayMetrics:
    notifications: Counter
    queued: Counter
    messages_sent: Counter
    send_failures: Counter
    send_seconds: Histogram
    message_bytes: Histogram
    alerts_merged: Counter
    truncated: Counter
    pending: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, robots: Iterable[str]) -> RelayMetrics:
        m = cls(
            notifications=Counter(
                "meterd_relay_notifications_total",
                "Alertmanager notifications by final result: delivered, retry (answered 5xx so "
                "Alertmanager retries), rejected (DingTalk refused for good), dropped (queued, then "
                "given up), overloaded (queue full, answered 503), invalid (bad payload), unauthorized (401).",
                ["robot", "result"],
                registry=registry,
            ),
            queued=Counter(
                "meterd_relay_notifications_queued_total",
                "Notifications answered 202: the rate budget was spent, the relay delivers them later.",
                ["robot"],
                registry=registry,
            ),
            messages_sent=Counter(
                "meterd_relay_messages_sent_total",
                "DingTalk messages accepted by the robot (errcode 0).",
                ["robot"],
                registry=registry,
            ),
            send_failures=Counter(
                "meterd_relay_send_failures_total",
                "Failed DingTalk sends by reason.",
                ["robot", "reason"],
                registry=registry,
            ),
            send_seconds=Histogram(
                "meterd_relay_send_seconds",
                "Duration of one DingTalk send.",
                ["robot"],
                registry=registry,
                buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ),
            message_bytes=Histogram(
                "meterd_relay_message_bytes",
                "Size of the JSON body of sent DingTalk messages.",
                ["robot"],
                registry=registry,
                buckets=(500, 1000, 2000, 5000, 10000, 15000, 20000),
            ),
            alerts_merged=Counter(
                "meterd_relay_alerts_merged_total",
                "Notifications folded into a message together with other notifications "
                "(n - 1 for a message built from n notifications).",
                ["robot"],
                registry=registry,
            ),
            truncated=Counter(
                "meterd_relay_truncated_total",
                "Messages in which alerts were cut to stay under the byte limit.",
                ["robot"],
                registry=registry,
            ),
            pending=Gauge(
                "meterd_relay_pending_notifications",
                "Notifications waiting to be sent.",
                ["robot"],
                registry=registry,
            ),
        )
        # Create every series up front so rates and alerts see zeros instead of missing series.
        for robot in robots:
            for result in NOTIFICATION_RESULTS:
                m.notifications.labels(robot, result)
            for reason in SEND_FAILURE_REASONS:
                m.send_failures.labels(robot, reason)
            for metric in (
                m.queued,
                m.messages_sent,
                m.send_seconds,
                m.message_bytes,
                m.alerts_merged,
                m.truncated,
                m.pending,
            ):
                metric.labels(robot)
        m.notifications.labels(UNKNOWN_ROBOT, "invalid")
        m.notifications.labels(UNKNOWN_ROBOT, "unauthorized")
        return m
