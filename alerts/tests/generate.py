"""Builds meterd-alerts.test.yml (promtool unit tests) from the scenarios below.

promtool compares annotations exactly, so each expected alert names its expected `$value` and the
annotations are rendered here from the rule file's own templates (a small subset of Go templates:
`$labels.x`, `$value`, and the humanize functions). promtool then checks the real rules fire with
exactly those labels and that value. Every alert needs a firing and a not-firing case; the
observability tests enforce that.

Run after changing rules or scenarios:  python alerts/tests/generate.py
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parent / "rules" / "meterd-alerts.yml"
OUTPUT = HERE / "meterd-alerts.test.yml"

# Label sets of the scrape targets, as alerts/prometheus.yml attaches them.
API = {"job": "meterd-api", "instance": "10.0.0.11:8080", "service": "meterd", "role": "api"}
WRITER = {"job": "meterd-writer", "instance": "10.0.0.12:9100", "service": "meterd", "role": "writer"}
CONSUMER = {"job": "meterd-consumer", "instance": "10.0.0.13:9100", "service": "meterd", "role": "consumer"}
RELAY = {"job": "meterd-relay", "instance": "10.0.0.14:8060", "service": "meterd", "role": "relay"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def http_traffic(ok_per_min: int, errors_per_min: int, minutes: int) -> list[dict[str, str]]:
    route = {**API, "method": "POST", "route": "/v1/traffic"}
    return [
        series("http_server_request_duration_seconds_count", {**route, "status_code": "202"},
               f"0+{ok_per_min}x{minutes}"),
        series("http_server_request_duration_seconds_count", {**route, "status_code": "503"},
               f"0+{errors_per_min}x{minutes}"),
    ]


def grpc_ok(per_min: int, minutes: int) -> list[dict[str, str]]:
    labels = {**WRITER, "grpc_service": "meterd.v1.TrafficWriter", "grpc_method": "Write", "grpc_type": "unary"}
    return [series("grpc_server_handled_total", {**labels, "grpc_code": "OK"}, f"0+{per_min}x{minutes}")]


def histogram(name: str, labels: dict[str, str], counts: dict[str, int], minutes: int) -> list[dict[str, str]]:
    """Cumulative buckets; counts[le] = observations per minute at or below le."""
    return [series(f"{name}_bucket", {**labels, "le": le}, f"0+{n}x{minutes}") for le, n in counts.items()]


def alert(labels: dict[str, str], value: float) -> dict[str, Any]:
    return {"labels": labels, "value": value}


# Each scenario: input series, then (eval_time, alertname, expected alerts).
SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "target down fires after 1m; healthy target does not",
        "series": [
            series("up", API, "1 1 0 0 0 0 0"),
            series("up", WRITER, "1 1 1 1 1 1 1"),
        ],
        "checks": [
            ("1m", "MeterdTargetDown", []),
            ("5m", "MeterdTargetDown", [alert({**API, "severity": "critical"}, 0)]),
        ],
    },
    {
        "name": "a role with no target at all",
        "series": [series("up", {**r, "instance": "x"}, "1x20") for r in (API, WRITER, CONSUMER)],
        "checks": [
            ("2m", "MeterdRoleAbsent", []),
            ("10m", "MeterdRoleAbsent", [alert({"job": "meterd-relay", "severity": "critical"}, 1)]),
        ],
    },
    {
        "name": "every role present",
        "series": [series("up", r, "1x20") for r in (API, WRITER, CONSUMER, RELAY)],
        "checks": [("10m", "MeterdRoleAbsent", [])],
    },
    {
        "name": "2% HTTP errors burn the budget fast (page) and slowly (ticket); clean gRPC does not",
        "series": [*http_traffic(980, 20, 60), *grpc_ok(1000, 60)],
        "checks": [
            ("1m", "MeterdErrorBudgetBurn", []),
            ("30m", "MeterdErrorBudgetBurn", [
                alert({"job": "meterd-api", "transport": "http", "severity": "critical"}, 0.02),
                alert({"job": "meterd-api", "transport": "http", "severity": "warning"}, 0.02),
            ]),
        ],
        "promql": [
            ("10m", "meterd:sli_error_ratio:rate5m", [
                ({"job": "meterd-api", "transport": "http"}, 0.02),
                ({"job": "meterd-writer", "transport": "grpc"}, 0),
            ]),
        ],
    },
    {
        "name": "0.5% errors: ticket only",
        "series": http_traffic(995, 5, 60),
        "checks": [
            ("40m", "MeterdErrorBudgetBurn", [
                alert({"job": "meterd-api", "transport": "http", "severity": "warning"}, 0.005),
            ]),
        ],
    },
    {
        "name": "0.05% errors stay within budget",
        "series": http_traffic(9995, 5, 60),
        "checks": [("40m", "MeterdErrorBudgetBurn", [])],
    },
    {
        "name": "slow HTTP and gRPC",
        "series": [
            *histogram("http_server_request_duration_seconds",
                       {**API, "method": "GET", "route": "/v1/accounts/{id}/usage", "status_code": "200"},
                       {"0.1": 0, "0.5": 0, "1": 100, "+Inf": 100}, 30),
            *histogram("grpc_server_handling_seconds",
                       {**WRITER, "grpc_service": "meterd.v1.TrafficWriter", "grpc_method": "Write",
                        "grpc_type": "unary"},
                       {"0.1": 0, "0.5": 0, "1": 100, "+Inf": 100}, 30),
        ],
        "checks": [
            ("5m", "MeterdHttpLatencyHigh", []),
            ("20m", "MeterdHttpLatencyHigh", [alert({"job": "meterd-api", "severity": "warning"}, 0.995)]),
            ("20m", "MeterdGrpcLatencyHigh", [alert({"job": "meterd-writer", "severity": "warning"}, 0.995)]),
        ],
    },
    {
        "name": "fast HTTP and gRPC",
        "series": [
            *histogram("http_server_request_duration_seconds",
                       {**API, "method": "GET", "route": "/v1/accounts/{id}/usage", "status_code": "200"},
                       {"0.1": 100, "0.5": 100, "1": 100, "+Inf": 100}, 30),
            *histogram("grpc_server_handling_seconds",
                       {**WRITER, "grpc_service": "meterd.v1.TrafficWriter", "grpc_method": "Write",
                        "grpc_type": "unary"},
                       {"0.1": 100, "0.5": 100, "1": 100, "+Inf": 100}, 30),
        ],
        "checks": [("20m", "MeterdHttpLatencyHigh", []), ("20m", "MeterdGrpcLatencyHigh", [])],
    },
    {
        "name": "outbound breaker open vs half-open",
        "series": [
            series("governance_breaker_state", {**WRITER, "breaker": "kafka"}, "0 0 1 1 1 1 1"),
            series("governance_breaker_state", {**CONSUMER, "breaker": "database"}, "0 0 2 2 2 2 2"),
        ],
        "checks": [
            ("2m", "MeterdDependencyBreakerOpen", []),
            ("5m", "MeterdDependencyBreakerOpen", [
                alert({**WRITER, "breaker": "kafka", "severity": "critical"}, 1),
            ]),
        ],
    },
    {
        "name": "inbound breaker drops a quarter of a route, another route only 5%",
        "series": [
            series("governance_breaker_drop_ratio", {**API, "route": "/v1/traffic"}, "0.25x15"),
            series("governance_breaker_drop_ratio", {**API, "route": "/v1/accounts/{id}"}, "0.05x15"),
        ],
        "checks": [
            ("2m", "MeterdInboundBreakerShedding", []),
            ("10m", "MeterdInboundBreakerShedding", [
                alert({"job": "meterd-api", "instance": API["instance"], "route": "/v1/traffic",
                       "severity": "warning"}, 0.25),
            ]),
        ],
    },
    {
        "name": "10% of calls are shed writes",
        "series": [
            *http_traffic(1000, 0, 30),
            series("governance_adaptive_sheds_total",
                   {**API, "route": "/v1/traffic", "priority": "write", "reason": "concurrency"}, "0+100x30"),
        ],
        "checks": [
            ("5m", "MeterdSheddingSustained", []),
            ("20m", "MeterdSheddingSustained", [alert({"job": "meterd-api", "severity": "warning"}, 0.1)]),
        ],
    },
    {
        "name": "shedding exports and reads, even heavily, is by design and does not alert",
        "series": [
            *http_traffic(1000, 0, 30),
            series("governance_adaptive_sheds_total",
                   {**API, "route": "/v1/accounts/{account_id}/usage", "priority": "export", "reason": "concurrency"},
                   "0+800x30"),
            series("governance_adaptive_sheds_total",
                   {**API, "route": "/v1/accounts/{account_id}", "priority": "read", "reason": "queueing"},
                   "0+300x30"),
            series("governance_adaptive_sheds_total",
                   {**API, "route": "/v1/traffic", "priority": "write", "reason": "concurrency"}, "0+5x30"),
            series("governance_rejections_total",
                   {**API, "plugin": "quota", "reason": "limit_exceeded", "transport": "http"}, "0+500x30"),
        ],
        "checks": [("20m", "MeterdSheddingSustained", [])],
        "promql": [("20m", "meterd:governance_write_shed_ratio:rate5m", [({"job": "meterd-api"}, 0.005)])],
    },
    {
        "name": "no rejections at all: shed ratio is 0, not missing",
        "series": http_traffic(1000, 0, 10),
        "checks": [],
        "promql": [("8m", "meterd:governance_shed_ratio:rate5m", [({"job": "meterd-api"}, 0)]),
                   ("8m", "meterd:governance_write_shed_ratio:rate5m", [({"job": "meterd-api"}, 0)])],
    },
    {
        "name": "consumer lag: 50k warns, 200k pages too",
        "series": [
            series("meterd_consumer_lag_messages", {**CONSUMER, "partition": "0"}, "30000x20"),
            series("meterd_consumer_lag_messages", {**CONSUMER, "partition": "1"}, "20000x20"),
            series("meterd_consumer_lag_messages", {**CONSUMER, "job": "meterd-consumer-b", "partition": "0"},
                   "200000x20"),
            series("meterd_consumer_records_total", CONSUMER, "0+1000x20"),
            series("meterd_consumer_records_total", {**CONSUMER, "job": "meterd-consumer-b"}, "0+1000x20"),
        ],
        "checks": [
            ("5m", "MeterdConsumerLagHigh", []),
            ("15m", "MeterdConsumerLagHigh", [
                alert({"job": "meterd-consumer", "severity": "warning"}, 50000),
                alert({"job": "meterd-consumer-b", "severity": "warning"}, 200000),
                alert({"job": "meterd-consumer-b", "severity": "critical"}, 200000),
            ]),
            ("15m", "MeterdConsumerStalled", []),
        ],
    },
    {
        "name": "small lag is fine",
        "series": [
            series("meterd_consumer_lag_messages", {**CONSUMER, "partition": "0"}, "5000x20"),
            series("meterd_consumer_records_total", CONSUMER, "0+1000x20"),
        ],
        "checks": [("15m", "MeterdConsumerLagHigh", [])],
    },
    {
        "name": "lag with no progress is a stalled consumer",
        "series": [
            series("meterd_consumer_lag_messages", {**CONSUMER, "partition": "0"}, "500x25"),
            series("meterd_consumer_records_total", CONSUMER, "7x25"),
        ],
        "checks": [
            ("5m", "MeterdConsumerStalled", []),
            ("20m", "MeterdConsumerStalled", [alert({"job": "meterd-consumer", "severity": "critical"}, 500)]),
        ],
    },
    {
        "name": "accounts reaching their quota page the info robot; 80 % crossings do not",
        "series": [
            series("meterd_quota_threshold_crossings_total", {**CONSUMER, "threshold": "1"}, "0 0 0 2 2 2 2"),
            series("meterd_quota_threshold_crossings_total", {**CONSUMER, "threshold": "1.5"}, "0 0 0 0 1 1 1"),
            series("meterd_quota_threshold_crossings_total", {**CONSUMER, "threshold": "0.8"}, "0 0 5 5 5 5 5"),
        ],
        "checks": [
            ("2m", "MeterdQuotaThresholdCrossed", []),
            ("6m", "MeterdQuotaThresholdCrossed", [
                alert({"threshold": "1", "severity": "info"}, 2),
                alert({"threshold": "1.5", "severity": "info"}, 1),
            ]),
        ],
    },
    {
        "name": "webhooks given up vs retried",
        "series": [
            series("meterd_webhook_deliveries_total", {**CONSUMER, "result": "retry"}, "0+3x10"),
            series("meterd_webhook_deliveries_total", {**CONSUMER, "result": "failed"}, "0 0 0 0 0 1 1 1 1 1"),
        ],
        "checks": [
            ("3m", "MeterdWebhooksFailing", []),
            ("8m", "MeterdWebhooksFailing", [alert({"job": "meterd-consumer", "severity": "warning"}, 1)]),
        ],
    },
    {
        "name": "usage lags acknowledgements",
        "series": [
            series("meterd_consumer_lag_seconds", CONSUMER, "0x5 400x20"),
            series("meterd_consumer_lag_seconds", {**CONSUMER, "job": "meterd-api", "role": "api"}, "1x25"),
        ],
        "checks": [
            ("4m", "MeterdUsageStale", []),
            ("20m", "MeterdUsageStale", [alert({"job": "meterd-consumer", "severity": "warning"}, 400)]),
        ],
    },
    {
        "name": "a consumer failing every cycle vs one with a passing blip",
        "series": [
            series("meterd_consumer_errors_total", {**CONSUMER, "kind": "data"}, "0 0+60x15"),
            series("meterd_consumer_errors_total", {**CONSUMER, "instance": "10.0.0.99:9100", "kind": "data"},
                   "0 3x15"),
        ],
        "checks": [
            ("4m", "MeterdConsumerFailing", []),
            ("12m", "MeterdConsumerFailing", [
                alert({"job": "meterd-consumer", "instance": CONSUMER["instance"], "severity": "critical"}, 300),
            ]),
        ],
    },
    {
        "name": "dead-letter topic grows vs stays flat",
        "series": [
            series("meterd_consumer_dlq_total", CONSUMER, "0 0 0 3 3 3 3"),
            series("meterd_consumer_dlq_total", {**CONSUMER, "instance": "10.0.0.99:9100"}, "0x6"),
        ],
        "checks": [
            ("2m", "MeterdDlqGrowing", []),
            ("6m", "MeterdDlqGrowing", [
                alert({"job": "meterd-consumer", "instance": CONSUMER["instance"], "severity": "warning"}, 3),
            ]),
        ],
    },
    {
        "name": "stale offsets found after a topic was recreated",
        "series": [
            series("meterd_consumer_stale_offsets_total", {**CONSUMER, "policy": "earliest"}, "0x5 1x20"),
            series("meterd_consumer_stale_offsets_total", {**CONSUMER, "policy": "halt"}, "0x25"),
        ],
        "checks": [
            ("3m", "MeterdStaleOffsets", []),
            ("8m", "MeterdStaleOffsets", [
                alert({"job": "meterd-consumer", "instance": CONSUMER["instance"], "policy": "earliest",
                       "severity": "critical"}, 1),
            ]),
        ],
    },
    {
        "name": "slow and fast Kafka produce",
        "series": [
            *histogram("meterd_kafka_produce_seconds", WRITER, {"0.01": 0, "1": 0, "2.5": 50, "+Inf": 50}, 30),
            *histogram("meterd_kafka_produce_seconds", {**API, "job": "meterd-api"},
                       {"0.01": 50, "1": 50, "2.5": 50, "+Inf": 50}, 30),
        ],
        "checks": [
            ("5m", "MeterdKafkaProduceSlow", []),
            ("20m", "MeterdKafkaProduceSlow", [alert({"job": "meterd-writer", "severity": "warning"}, 2.485)]),
        ],
    },
    {
        "name": "memory: 90% warns, 97% pages too, 50% is fine",
        "series": [
            series("profiling_watchdog_memory_ratio", API, "0.9x20"),
            series("profiling_watchdog_memory_ratio", WRITER, "0.97x20"),
            series("profiling_watchdog_memory_ratio", CONSUMER, "0.5x20"),
        ],
        "checks": [
            ("2m", "MeterdHighMemory", []),
            ("15m", "MeterdHighMemory", [
                alert({**API, "severity": "warning"}, 0.9),
                alert({**WRITER, "severity": "warning"}, 0.97),
                alert({**WRITER, "severity": "critical"}, 0.97),
            ]),
        ],
    },
    {
        "name": "CPU pinned vs moderate",
        "series": [
            series("profiling_watchdog_cpu_ratio", API, "0.95x25"),
            series("profiling_watchdog_cpu_ratio", WRITER, "0.5x25"),
        ],
        "checks": [
            ("5m", "MeterdHighCpu", []),
            ("20m", "MeterdHighCpu", [alert({**API, "severity": "warning"}, 0.95)]),
        ],
    },
    {
        "name": "watchdog capture vs an on-call SIGTRAP capture; capture failures",
        "series": [
            series("profiling_captures_total", {**API, "trigger": "cpu"}, "0 0 1 1 1 1"),
            series("profiling_captures_total", {**WRITER, "trigger": "signal"}, "0 0 1 1 1 1"),
            series("profiling_capture_failures_total", {**CONSUMER, "reason": "ptrace_denied"}, "0 0 0 2 2 2"),
            series("profiling_capture_failures_total", {**API, "reason": "ptrace_denied"}, "0x5"),
        ],
        "checks": [
            ("1m", "MeterdWatchdogCapture", []),
            ("1m", "MeterdProfilingFailing", []),
            ("4m", "MeterdWatchdogCapture", [
                alert({"job": "meterd-api", "instance": API["instance"], "trigger": "cpu", "severity": "info"}, 1),
            ]),
            ("5m", "MeterdProfilingFailing", [
                alert({"job": "meterd-consumer", "instance": CONSUMER["instance"], "reason": "ptrace_denied",
                       "severity": "warning"}, 2),
            ]),
        ],
    },
    {
        "name": "relay: rejected notifications, failing sends, backlog",
        "series": [
            series("meterd_relay_notifications_total", {**RELAY, "robot": "oncall", "result": "rejected"},
                   "0 0 2 2 2 2"),
            series("meterd_relay_notifications_total", {**RELAY, "robot": "oncall", "result": "delivered"},
                   "0+5x30"),
            series("meterd_relay_send_failures_total", {**RELAY, "robot": "oncall", "reason": "network"},
                   "0+1x30"),
            series("meterd_relay_pending_notifications", {**RELAY, "robot": "oncall"}, "80x30"),
        ],
        "checks": [
            ("1m", "MeterdRelayNotificationsFailing", []),
            ("4m", "MeterdRelayNotificationsFailing", [
                alert({"job": "meterd-relay", "instance": RELAY["instance"], "robot": "oncall",
                       "severity": "critical"}, 2),
            ]),
            ("5m", "MeterdRelaySendRetrying", []),
            ("25m", "MeterdRelaySendRetrying", [
                alert({"job": "meterd-relay", "instance": RELAY["instance"], "robot": "oncall",
                       "severity": "warning"}, 10),
            ]),
            ("5m", "MeterdRelayBacklog", []),
            ("15m", "MeterdRelayBacklog", [alert({**RELAY, "robot": "oncall", "severity": "warning"}, 80)]),
        ],
    },
    {
        "name": "relay healthy: deliveries only, a rare send failure, a short queue",
        "series": [
            series("meterd_relay_notifications_total", {**RELAY, "robot": "oncall", "result": "delivered"},
                   "0+5x30"),
            series("meterd_relay_send_failures_total", {**RELAY, "robot": "oncall", "reason": "rate_limited"},
                   "0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"),
            series("meterd_relay_pending_notifications", {**RELAY, "robot": "oncall"}, "10x30"),
        ],
        "checks": [
            ("25m", "MeterdRelayNotificationsFailing", []),
            ("25m", "MeterdRelaySendRetrying", []),
            ("25m", "MeterdRelayBacklog", []),
        ],
    },
]


# --- a small Go text/template subset, enough for the annotations in the rule file -------------

def _go_g4(value: float) -> str:
    # Go's %.4g and Python's agree for the finite values used here.
    return f"{value:.4g}"


def humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _go_g4(v)
    if abs(v) >= 1:
        prefix = ""
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return _go_g4(v) + prefix
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return _go_g4(v) + prefix


def humanize_duration(v: float) -> str:
    if math.isnan(v) or math.isinf(v):
        return _go_g4(v)
    if v == 0:
        return "0s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        seconds = int(v)
        days, hours, minutes = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60
        seconds %= 60
        if days:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_go_g4(v)}s"
    prefix = ""
    for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_go_g4(v)}{prefix}s"


FUNCS = {
    None: lambda v: repr(float(v)).removesuffix(".0"),
    "humanize": humanize,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": lambda v: _go_g4(v * 100) + "%",
}
_ACTION = re.compile(r"\{\{\s*(?:\$labels\.(\w+)|\$value(?:\s*\|\s*(\w+))?)\s*\}\}")


def render(template: str, labels: dict[str, str], value: float) -> str:
    def sub(match: re.Match[str]) -> str:
        if match.group(1):
            return labels.get(match.group(1), "")
        return FUNCS[match.group(2)](value)

    out = _ACTION.sub(sub, template)
    if "{{" in out:
        raise ValueError(f"template action not supported by the generator: {template!r}")
    return out


def _rules() -> dict[tuple[str, str], dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    rules = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rules[(rule["alert"], rule["labels"]["severity"])] = rule
    return rules


def build() -> str:
    rules = _rules()
    tests = []
    for scenario in SCENARIOS:
        alert_tests = []
        for eval_time, name, expected in scenario["checks"]:
            exp = []
            for item in expected:
                rule = rules[(name, item["labels"]["severity"])]
                full = {**item["labels"], "alertname": name}
                annotations = {k: render(v, full, item["value"]) for k, v in rule["annotations"].items()}
                exp.append({"exp_labels": item["labels"], "exp_annotations": annotations})
            alert_tests.append({"eval_time": eval_time, "alertname": name, "exp_alerts": exp})
        test: dict[str, Any] = {
            "name": scenario["name"],
            "interval": "1m",
            "input_series": scenario["series"],
            "alert_rule_test": alert_tests,
        }
        if scenario.get("promql"):
            test["promql_expr_test"] = [
                {
                    "expr": expr,
                    "eval_time": eval_time,
                    "exp_samples": [{"labels": _selector(expr, labels), "value": value} for labels, value in samples],
                }
                for eval_time, expr, samples in scenario["promql"]
            ]
        tests.append(test)
    doc = {
        "rule_files": ["../rules/meterd-recording.yml", "../rules/meterd-alerts.yml"],
        "evaluation_interval": "30s",
        "tests": tests,
    }
    header = "# GENERATED by alerts/tests/generate.py from its scenarios and the rule templates. Do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


if __name__ == "__main__":
    OUTPUT.write_text(build())
    print(f"wrote {OUTPUT}", file=sys.stderr)
