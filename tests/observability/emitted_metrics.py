"""THE list of metric names meterd emits: the contract between the code and dashboards/alerts.

Dashboards and rules may use only these names (plus recording-rule outputs and Prometheus'
synthetic series). A live test can compare `EMITTED` with a real /metrics page: `exposed_names()`
gives the sample names a scrape shows (histograms as _bucket/_sum/_count).
"""

from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM, INFO = "counter", "gauge", "histogram", "info"

# name (as written in PromQL; counters with _total) -> (type, labels, which role/component emits it)
EMITTED: dict[str, tuple[str, tuple[str, ...], str]] = {
    # governance/ metrics plugin: HTTP
    "http_server_request_duration_seconds": (HISTOGRAM, ("method", "route", "status_code"), "api"),
    "http_server_active_requests": (GAUGE, ("method", "route"), "api"),
    # governance/ metrics plugin: gRPC (go-grpc-prometheus names)
    "grpc_server_started_total": (COUNTER, ("grpc_type", "grpc_service", "grpc_method"), "writer"),
    "grpc_server_handled_total": (COUNTER, ("grpc_type", "grpc_service", "grpc_method", "grpc_code"), "writer"),
    "grpc_server_handling_seconds": (HISTOGRAM, ("grpc_type", "grpc_service", "grpc_method"), "writer"),
    "grpc_server_msg_received_total": (COUNTER, ("grpc_type", "grpc_service", "grpc_method"), "writer"),
    "grpc_server_msg_sent_total": (COUNTER, ("grpc_type", "grpc_service", "grpc_method"), "writer"),
    # governance/ decisions
    "governance_rejections_total": (COUNTER, ("plugin", "reason", "transport"), "api, writer"),
    "governance_adaptive_limit": (GAUGE, ("limiter",), "api, writer"),
    "governance_adaptive_inflight": (GAUGE, ("limiter",), "api, writer"),
    "governance_adaptive_latency_objective_ratio": (GAUGE, ("limiter",), "api, writer"),
    "governance_adaptive_sheds_total": (COUNTER, ("route", "priority", "reason"), "api, writer"),
    "governance_adaptive_cpu_ratio": (GAUGE, ("limiter",), "api, writer"),
    "governance_adaptive_queue_delay_seconds": (GAUGE, ("limiter",), "api, writer"),
    "governance_adaptive_overloaded": (GAUGE, ("limiter",), "api, writer"),
    "governance_breaker_state": (GAUGE, ("breaker",), "api, writer, consumer"),
    "governance_breaker_rejections_total": (COUNTER, ("breaker",), "api, writer, consumer"),
    "governance_breaker_drop_ratio": (GAUGE, ("route",), "api, writer"),
    "governance_quota_storage_errors_total": (COUNTER, ("reason",), "api, writer (quota on Redis)"),
    # profiling/
    "profiling_captures_total": (COUNTER, ("trigger",), "all roles"),
    "profiling_capture_failures_total": (COUNTER, ("reason",), "all roles"),
    "profiling_capture_in_progress": (GAUGE, (), "all roles"),
    "profiling_watchdog_cpu_ratio": (GAUGE, (), "all roles"),
    "profiling_watchdog_memory_ratio": (GAUGE, (), "all roles"),
    "profiling_watchdog_host_cpu_ratio": (GAUGE, (), "all roles"),
    "profiling_watchdog_host_memory_ratio": (GAUGE, (), "all roles"),
    # service/ ingestion pipeline
    "meterd_ingest_records_total": (COUNTER, ("transport", "result"), "api, writer"),
    "meterd_ingest_batch_records": (HISTOGRAM, (), "api, writer"),
    "meterd_kafka_produce_seconds": (HISTOGRAM, (), "api, writer"),
    "meterd_consumer_records_total": (COUNTER, (), "consumer"),
    "meterd_consumer_batches_total": (COUNTER, ("result",), "consumer"),
    "meterd_consumer_lag_messages": (GAUGE, ("partition",), "consumer"),
    "meterd_consumer_flush_seconds": (HISTOGRAM, (), "consumer"),
    "meterd_consumer_dlq_total": (COUNTER, (), "consumer"),
    "meterd_log_append_seconds": (HISTOGRAM, ("log",), "api, writer"),
    "meterd_consumer_lag_seconds": (GAUGE, (), "consumer"),
    "meterd_usage_freshness_seconds": (HISTOGRAM, (), "consumer"),
    "meterd_consumer_stale_offsets_total": (COUNTER, ("policy",), "consumer"),
    "meterd_usage_saturated_total": (COUNTER, (), "consumer"),
    "meterd_consumer_buffer_records": (GAUGE, (), "consumer"),
    "meterd_consumer_errors_total": (COUNTER, ("kind",), "consumer"),
    "meterd_consumer_poison_batches_total": (COUNTER, (), "consumer"),
    "meterd_quota_threshold_crossings_total": (COUNTER, ("threshold",), "consumer"),
    "meterd_webhook_deliveries_total": (COUNTER, ("result",), "consumer"),
    # service/relay
    "meterd_relay_notifications_total": (COUNTER, ("robot", "result"), "relay"),
    "meterd_relay_notifications_queued_total": (COUNTER, ("robot",), "relay"),
    "meterd_relay_messages_sent_total": (COUNTER, ("robot",), "relay"),
    "meterd_relay_send_failures_total": (COUNTER, ("robot", "reason"), "relay"),
    "meterd_relay_send_seconds": (HISTOGRAM, ("robot",), "relay"),
    "meterd_relay_message_bytes": (HISTOGRAM, ("robot",), "relay"),
    "meterd_relay_alerts_merged_total": (COUNTER, ("robot",), "relay"),
    "meterd_relay_truncated_total": (COUNTER, ("robot",), "relay"),
    "meterd_relay_pending_notifications": (GAUGE, ("robot",), "relay"),
    # prometheus-client default collectors (ProcessCollector, GCCollector, PlatformCollector)
    "process_cpu_seconds_total": (COUNTER, (), "all roles"),
    "process_resident_memory_bytes": (GAUGE, (), "all roles"),
    "process_virtual_memory_bytes": (GAUGE, (), "all roles"),
    "process_start_time_seconds": (GAUGE, (), "all roles"),
    "process_open_fds": (GAUGE, (), "all roles"),
    "process_max_fds": (GAUGE, (), "all roles"),
    "python_gc_objects_collected_total": (COUNTER, ("generation",), "all roles"),
    "python_gc_objects_uncollectable_total": (COUNTER, ("generation",), "all roles"),
    "python_gc_collections_total": (COUNTER, ("generation",), "all roles"),
    "python_info": (GAUGE, ("implementation", "major", "minor", "patchlevel", "version"), "all roles"),
}

# Series Prometheus creates itself for every target or alert.
SYNTHETIC: frozenset[str] = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)


def exposed_names() -> set[str]:
    """Sample names as they appear on a /metrics page."""
    names: set[str] = set()
    for name, (kind, _labels, _who) in EMITTED.items():
        if kind == HISTOGRAM:
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def queryable_names() -> set[str]:
    """Names a PromQL expression may select (before recording rules are added)."""
    return exposed_names() | SYNTHETIC
