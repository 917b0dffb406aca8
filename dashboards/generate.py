"""Builds the Grafana dashboards (JSON next to this file) from the panel lists below.

Fixed dashboard uids; the Prometheus datasource is the `datasource` template variable (no fixed
datasource uid), with Grafana's export-format `__inputs`, so a dashboard imports into any Grafana
(the import asks for a Prometheus datasource; the variable starts on the default one and switches
between any Prometheus datasources) and provisioning still works (docker-compose: the variable
resolves to its only, default, Prometheus). One `job` variable. Every expression uses only metrics
meterd emits (checked by tests/observability).
Run after editing:  python dashboards/generate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
INPUT = "DS_PROMETHEUS"
J = 'job=~"$job"'
RI = "$__rate_interval"


def q(expr: str, legend: str = "", *, exemplar: bool = False) -> dict[str, Any]:
    return {"expr": expr, "legend": legend, "exemplar": exemplar}


def panel(title: str, targets: list[dict[str, Any]], unit: str = "short", *, kind: str = "timeseries",
          description: str = "", width: int = 12, height: int = 8, mappings: list[Any] | None = None,
          stack: bool = False, max_value: float | None = None) -> dict[str, Any]:
    return {"title": title, "targets": targets, "unit": unit, "kind": kind, "description": description,
            "width": width, "height": height, "mappings": mappings or [], "stack": stack, "max": max_value}


def row(title: str) -> dict[str, Any]:
    return {"row": title}


def quantiles(metric: str, by: str, selector: str = J, qs: tuple[float, ...] = (0.5, 0.99),
              exemplars: bool = False) -> list[dict[str, Any]]:
    """exemplars: show the histogram's exemplars (trace ids of sampled calls) on the panel."""
    legend_by = "".join(f"{{{{{label}}}}} " for label in by.split(", ") if label != "le")
    return [
        q(f"histogram_quantile({x}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[{RI}])))",
          f"{legend_by}p{int(x * 100)}", exemplar=exemplars)
        for x in qs
    ]


BREAKER_STATES = [
    {"type": "value", "options": {
        "0": {"text": "closed", "color": "green"},
        "1": {"text": "open", "color": "red"},
        "2": {"text": "half-open", "color": "orange"},
    }}
]

DASHBOARDS: dict[str, dict[str, Any]] = {
    "overview": {
        "uid": "meterd-overview",
        "title": "meterd / Overview",
        "description": "RED view of meterd: rate, errors and duration for HTTP and gRPC, and the SLO.",
        "panels": [
            row("Service"),
            panel("Targets up", [q('sum by (job) (up{service="meterd", job=~"$job"})', "{{job}}")],
                  kind="stat", width=6, height=5,
                  description="Scraped replicas per role that answer."),
            panel("Error ratio, last 1h (SLO 99.9%)",
                  [q('meterd:sli_error_ratio:rate1h{job=~"$job"}', "{{job}} {{transport}}")],
                  "percentunit", kind="stat", width=6, height=5,
                  description="Failed calls / all calls over 1h; the budget is 0.1%."),
            panel("Error budget burn rate (1h)",
                  [q('meterd:sli_error_ratio:rate1h{job=~"$job"} / 0.001', "{{job}} {{transport}}")],
                  kind="stat", width=6, height=5,
                  description="1 = spending exactly the 30-day budget; 14.4 pages."),
            panel("In-flight HTTP requests", [q(f"sum by (job) (http_server_active_requests{{{J}}})", "{{job}}")],
                  width=6, height=5),
            row("HTTP"),
            panel("HTTP requests/s by route",
                  [q(f"sum by (route) (rate(http_server_request_duration_seconds_count{{{J}}}[{RI}]))",
                     "{{route}}")], "reqps", stack=True),
            panel("HTTP requests/s by status",
                  [q(f"sum by (status_code) (rate(http_server_request_duration_seconds_count{{{J}}}[{RI}]))",
                     "{{status_code}}")], "reqps", stack=True),
            panel("HTTP error ratio (5xx)", [q(
                f'sum by (route) (rate(http_server_request_duration_seconds_count{{{J}, status_code=~"5.."}}[{RI}]))'
                f" / sum by (route) (rate(http_server_request_duration_seconds_count{{{J}}}[{RI}]))",
                "{{route}}")], "percentunit"),
            panel("HTTP latency by route", quantiles("http_server_request_duration_seconds", "route, le",
                                                     qs=(0.5, 0.95, 0.99), exemplars=True), "s",
                  description="Dots are exemplars: the trace id of a sampled request in that bucket."),
            row("gRPC"),
            panel("RPCs/s by method and code",
                  [q(f"sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{J}}}[{RI}]))",
                     "{{grpc_method}} {{grpc_code}}")], "reqps", stack=True),
            panel("gRPC error ratio (server faults)", [q(
                f'sum by (grpc_method) (rate(grpc_server_handled_total{{{J}, grpc_code=~"Unknown|Internal|'
                f'Unavailable|DataLoss|DeadlineExceeded"}}[{RI}])) / sum by (grpc_method) '
                f"(rate(grpc_server_handled_total{{{J}}}[{RI}]))", "{{grpc_method}}")], "percentunit"),
            panel("gRPC latency by method", quantiles("grpc_server_handling_seconds", "grpc_method, le",
                                                      qs=(0.5, 0.95, 0.99), exemplars=True), "s",
                  description="Dots are exemplars: the trace id of a sampled RPC in that bucket."),
            panel("Started RPCs and stream messages/s", [
                q(f"sum by (grpc_method) (rate(grpc_server_started_total{{{J}}}[{RI}]))", "started {{grpc_method}}"),
                q(f"sum by (grpc_method) (rate(grpc_server_msg_received_total{{{J}}}[{RI}]))",
                  "received {{grpc_method}}"),
                q(f"sum by (grpc_method) (rate(grpc_server_msg_sent_total{{{J}}}[{RI}]))", "sent {{grpc_method}}"),
            ], "ops"),
        ],
    },
    "governance": {
        "uid": "meterd-governance",
        "title": "meterd / Governance",
        "description": "Adaptive limiter, quota limiter and circuit breakers: what was refused and why.",
        "panels": [
            row("Adaptive limiter"),
            panel("Limit vs in-flight vs shed", [
                q(f"governance_adaptive_limit{{{J}}}", "limit {{instance}}"),
                q(f"governance_adaptive_inflight{{{J}}}", "in-flight {{instance}}"),
                q(f"sum by (instance) (rate(governance_adaptive_sheds_total{{{J}}}[{RI}]))", "shed/s {{instance}}"),
            ], description="The limit is 0 (none) until a standing queue grows or admitted latency passes the "
                           "route's objective; then in-flight is held at it and the excess is shed."),
            panel("Sheds/s by route, priority and reason", [
                q(f"sum by (route, priority, reason) (rate(governance_adaptive_sheds_total{{{J}}}[{RI}]))",
                  "{{priority}} {{route}} {{reason}}"),
            ], "reqps", stack=True, description="Exports go first, reads next, writes last."),
            panel("Admitted latency vs objective and overload state", [
                q(f"governance_adaptive_latency_objective_ratio{{{J}}}", "latency/objective {{instance}}"),
                q(f"governance_adaptive_overloaded{{{J}}}", "overloaded {{instance}}"),
                q(f"governance_adaptive_cpu_ratio{{{J}}}", "cpu {{instance}}"),
            ], "percentunit"),
            panel("Queueing ahead of the middleware", [
                q(f"governance_adaptive_queue_delay_seconds{{{J}}}", "delay {{instance}}")], "s",
                description="Mean sojourn of admitted calls in the event loop before the limiter saw them."),
            row("Rejections"),
            panel("Rejections/s by plugin and reason", [
                q(f"sum by (plugin, reason) (rate(governance_rejections_total{{{J}}}[{RI}]))", "{{plugin}} {{reason}}"),
            ], "reqps", stack=True),
            panel("Shed ratio (adaptive + breaker)", [
                q('meterd:governance_shed_ratio:rate5m{job=~"$job"}', "{{job}}")], "percentunit"),
            panel("Rejections/s by transport", [
                q(f"sum by (transport) (rate(governance_rejections_total{{{J}}}[{RI}]))", "{{transport}}"),
            ], "reqps"),
            row("Circuit breakers"),
            panel("Outbound breaker state", [q(f"max by (breaker) (governance_breaker_state{{{J}}})", "{{breaker}}")],
                  kind="stat", width=8, mappings=BREAKER_STATES),
            panel("Outbound calls refused by open breakers/s", [
                q(f"sum by (breaker) (rate(governance_breaker_rejections_total{{{J}}}[{RI}]))", "{{breaker}}")],
                "reqps", width=8),
            panel("Inbound breaker drop probability by route", [
                q(f"max by (route) (governance_breaker_drop_ratio{{{J}}})", "{{route}}")], "percentunit", width=8),
            panel("Quota storage (Redis) failures/s by reason", [
                q(f"sum by (reason) (rate(governance_quota_storage_errors_total{{{J}}}[{RI}]))", "{{reason}}")],
                "reqps", width=24,
                description="Each failure admits the call (quota fail_open: true, the default) or refuses it "
                            "with 503 (fail_open: false); the quota_storage breaker opens after 5 in a row."),
        ],
    },
    "ingestion": {
        "uid": "meterd-ingestion",
        "title": "meterd / Ingestion pipeline",
        "description": "Writers to the log (Kafka or the database log) to the aggregating consumer: throughput, "
                       "batch sizes, latency, lag, dead letters.",
        "panels": [
            row("Writers"),
            panel("Records/s by transport and result", [
                q(f"sum by (transport, result) (rate(meterd_ingest_records_total{{{J}}}[{RI}]))",
                  "{{transport}} {{result}}")], "rps", stack=True),
            panel("Batch size (records)", [
                *quantiles("meterd_ingest_batch_records", "le"),
                q(f"sum(rate(meterd_ingest_batch_records_sum{{{J}}}[{RI}])) / "
                  f"sum(rate(meterd_ingest_batch_records_count{{{J}}}[{RI}]))", "mean"),
            ]),
            panel("Kafka produce latency (to acks=all)", quantiles("meterd_kafka_produce_seconds", "le",
                                                                   qs=(0.5, 0.95, 0.99)), "s"),
            panel("Durable append latency (batch id claim + log), by log", quantiles("meterd_log_append_seconds",
                                                                                "log, le", qs=(0.5, 0.99)), "s"),
            panel("Accepted batches/s", [
                q(f"sum by (job) (rate(meterd_ingest_batch_records_count{{{J}}}[{RI}]))", "{{job}}")], "ops"),
            row("Consumer"),
            panel("Records aggregated/s", [
                q(f"sum by (instance) (rate(meterd_consumer_records_total{{{J}}}[{RI}]))", "{{instance}}")], "rps"),
            panel("Kafka messages/s by outcome", [
                q(f"sum by (result) (rate(meterd_consumer_batches_total{{{J}}}[{RI}]))", "{{result}}")],
                "ops", stack=True),
            panel("Consumer lag by partition (messages)", [
                q(f"sum by (partition) (meterd_consumer_lag_messages{{{J}}})", "partition {{partition}}")],
                stack=True),
            panel("Freshness: acknowledged to queryable", quantiles("meterd_usage_freshness_seconds", "le",
                                                                    qs=(0.5, 0.99)), "s",
                  description="From the writer receiving a batch to the commit that makes its usage queryable."),
            panel("Consumer lag (seconds)", [
                q(f"max by (instance) (meterd_consumer_lag_seconds{{{J}}})", "{{instance}}")], "s",
                description="Database log: age of the oldest uncounted batch. Kafka: time since the consumer "
                            "last had nothing left to read."),
            panel("Dead-lettered batches", [
                q(f"sum by (instance) (increase(meterd_consumer_dlq_total{{{J}}}[{RI}]))", "{{instance}}"),
                q(f"sum by (instance) (increase(meterd_consumer_poison_batches_total{{{J}}}[{RI}]))",
                  "poison {{instance}}")],
                description="Batches the consumer could not count (undecodable, a batch_id reused for other "
                            "records, or poison: its apply failed alone): meterd.traffic.v1.dlq or the "
                            "dead_letters table."),
            panel("Consumer errors by kind", [
                q(f"sum by (kind) (increase(meterd_consumer_errors_total{{{J}}}[{RI}]))", "{{kind}}")],
                description="Failed consumer cycles: transient (database or broker unreachable or busy) or "
                            "data (anything else). See MeterdConsumerFailing."),
            panel("Stale offsets found and saturated usage sums", [
                q(f"sum by (policy) (increase(meterd_consumer_stale_offsets_total{{{J}}}[{RI}]))",
                  "stale offsets ({{policy}})"),
                q(f"sum(increase(meterd_usage_saturated_total{{{J}}}[{RI}]))", "sums stopped at 2^63-1")],
                description="Both should stay at 0: see the MeterdStaleOffsets runbook and the overflow rule."),
            panel("Flush latency (one DB transaction)", quantiles("meterd_consumer_flush_seconds", "le",
                                                                  qs=(0.5, 0.95, 0.99)), "s"),
            panel("Records buffered, not yet flushed", [
                q(f"sum by (instance) (meterd_consumer_buffer_records{{{J}}})", "{{instance}}")]),
            row("Quota alerts"),
            panel("Quota thresholds crossed by threshold", [
                q(f"sum by (threshold) (increase(meterd_quota_threshold_crossings_total{{{J}}}[{RI}]))",
                  "{{threshold}} of quota")],
                description="Accounts whose month-to-date usage reached an alert threshold (once per period)."),
            panel("Webhook deliveries/s by result", [
                q(f"sum by (result) (rate(meterd_webhook_deliveries_total{{{J}}}[{RI}]))", "{{result}}")],
                "ops", stack=True,
                description="retry: the receiver failed and the outbox will try again; failed: given up."),
        ],
    },
    "runtime": {
        "uid": "meterd-runtime",
        "title": "meterd / Runtime & profiling",
        "description": "Process resources, garbage collection, self-profiling and the DingTalk relay.",
        "panels": [
            row("Process"),
            panel("CPU (cores)", [q(f"rate(process_cpu_seconds_total{{{J}}}[{RI}])", "{{job}} {{instance}}")]),
            panel("Resident memory", [q(f"process_resident_memory_bytes{{{J}}}", "{{job}} {{instance}}")], "bytes"),
            panel("Open file descriptors", [
                q(f"process_open_fds{{{J}}}", "{{instance}}"),
                q(f"process_max_fds{{{J}}}", "max {{instance}}"),
            ]),
            panel("GC collections/s by generation", [
                q(f"sum by (generation) (rate(python_gc_collections_total{{{J}}}[{RI}]))", "gen {{generation}}"),
                q(f"sum by (generation) (rate(python_gc_objects_collected_total{{{J}}}[{RI}]))",
                  "collected gen {{generation}}"),
            ], "ops"),
            row("Watchdog and profiling"),
            panel("Watchdog: process CPU and memory (share of limit)", [
                q(f"profiling_watchdog_cpu_ratio{{{J}}}", "cpu {{instance}}"),
                q(f"profiling_watchdog_memory_ratio{{{J}}}", "memory {{instance}}"),
            ], "percentunit", max_value=1),
            panel("Watchdog: host CPU and memory", [
                q(f"profiling_watchdog_host_cpu_ratio{{{J}}}", "host cpu {{instance}}"),
                q(f"profiling_watchdog_host_memory_ratio{{{J}}}", "host memory {{instance}}"),
            ], "percentunit", max_value=1),
            panel("Captures by trigger (last 1h)", [
                q(f"sum by (trigger) (increase(profiling_captures_total{{{J}}}[1h]))", "{{trigger}}")],
                kind="bargauge", width=8),
            panel("Capture in progress", [
                q(f"max by (instance) (profiling_capture_in_progress{{{J}}})", "{{instance}}")],
                kind="stat", width=8),
            panel("Capture failures by reason (last 1h)", [
                q(f"sum by (reason) (increase(profiling_capture_failures_total{{{J}}}[1h]))", "{{reason}}")],
                kind="bargauge", width=8),
            row("DingTalk relay"),
            panel("Notifications/s by result", [
                q(f"sum by (robot, result) (rate(meterd_relay_notifications_total{{{J}}}[{RI}]))",
                  "{{robot}} {{result}}"),
                q(f"sum by (robot) (rate(meterd_relay_notifications_queued_total{{{J}}}[{RI}]))", "{{robot}} queued"),
            ], "ops", width=8),
            panel("Messages sent and failed sends/s", [
                q(f"sum by (robot) (rate(meterd_relay_messages_sent_total{{{J}}}[{RI}]))", "sent {{robot}}"),
                q(f"sum by (robot, reason) (rate(meterd_relay_send_failures_total{{{J}}}[{RI}]))",
                  "failed {{robot}} {{reason}}"),
            ], "ops", width=8),
            panel("Queued notifications", [
                q(f"sum by (robot) (meterd_relay_pending_notifications{{{J}}})", "{{robot}}")], width=8),
            panel("Send latency", quantiles("meterd_relay_send_seconds", "le", qs=(0.5, 0.99)), "s", width=8),
            panel("Merged notifications and truncated messages/s", [
                q(f"sum by (robot) (rate(meterd_relay_alerts_merged_total{{{J}}}[{RI}]))", "merged {{robot}}"),
                q(f"sum by (robot) (rate(meterd_relay_truncated_total{{{J}}}[{RI}]))", "truncated {{robot}}"),
            ], "ops", width=8),
            panel("Message size p99", quantiles("meterd_relay_message_bytes", "le", qs=(0.99,)), "bytes", width=8),
        ],
    },
}


def _panel_json(spec: dict[str, Any], pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + i), "datasource": DS, "expr": t["expr"], "legendFormat": t["legend"] or "__auto",
         "range": True, "exemplar": t.get("exemplar", False)}
        for i, t in enumerate(spec["targets"])
    ]
    defaults: dict[str, Any] = {"unit": spec["unit"], "mappings": spec["mappings"]}
    if spec["max"] is not None:
        defaults["max"], defaults["min"] = spec["max"], 0
    if spec["kind"] == "timeseries":
        defaults["custom"] = {"stacking": {"mode": "normal" if spec["stack"] else "none", "group": "A"},
                              "fillOpacity": 10 if spec["stack"] else 0, "showPoints": "never"}
    options: dict[str, Any] = {}
    if spec["kind"] == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif spec["kind"] in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return {
        "id": pid,
        "type": spec["kind"],
        "title": spec["title"],
        "description": spec["description"],
        "datasource": DS,
        "gridPos": {"h": spec["height"], "w": spec["width"], "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }


def build(key: str) -> dict[str, Any]:
    board = DASHBOARDS[key]
    panels, pid, x, y, row_height = [], 1, 0, 0, 0
    for spec in board["panels"]:
        if "row" in spec:
            if x:
                y, x = y + row_height, 0
            panels.append({"id": pid, "type": "row", "title": spec["row"], "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            pid, y, row_height = pid + 1, y + 1, 0
            continue
        if x + spec["width"] > 24:
            y, x, row_height = y + row_height, 0, 0
        panels.append(_panel_json(spec, pid, x, y))
        pid, x, row_height = pid + 1, x + spec["width"], max(row_height, spec["height"])
    return {
        "__inputs": [{"name": INPUT, "label": "Prometheus", "description": "the Prometheus that scrapes meterd",
                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "uid": board["uid"],
        "title": board["title"],
        "description": board["description"],
        "tags": ["meterd"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["meterd"], "asDropdown": True, "title": "meterd dashboards"}],
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            # Empty: Grafana selects the default Prometheus. A "${DS_PROMETHEUS}" value here would be
            # substituted on import but left as a literal, unknown name by file provisioning.
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "includeAll": False,
            "multi": False,
        }, {
            "name": "job",
            "label": "Role",
            "type": "query",
            "datasource": DS,
            "query": {"query": 'label_values(up{service="meterd"}, job)', "refId": "job"},
            "definition": 'label_values(up{service="meterd"}, job)',
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".+",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }]},
        "annotations": {"list": [{
            "name": "Alerts", "datasource": DS, "enable": True, "iconColor": "red",
            "expr": 'ALERTS{alertstate="firing", service="meterd"}', "titleFormat": "{{alertname}}",
            "textFormat": "{{severity}}", "useValueForTime": False, "step": "60s",
        }]},
        "panels": panels,
    }


def render_all() -> dict[str, str]:
    return {f"meterd-{key}.json": json.dumps(build(key), indent=2, ensure_ascii=False) + "\n" for key in DASHBOARDS}


if __name__ == "__main__":
    for name, text in render_all().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}", file=sys.stderr)
