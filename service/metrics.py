"""meterd's own pipeline metrics (governance/ and profiling/ define theirs).

Names and labels are part of the contract with dashboards/ and alerts/: change them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DEFAULT_THRESHOLD_LABELS = ("0.8", "1")  # the default alert_thresholds, as count_crossings writes them
_FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 900)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ingest_records = Counter(
            "meterd_ingest_records", "Records received by the writer, by outcome",
            ["transport", "result"], registry=registry)
        self.ingest_batch_records = Histogram(
            "meterd_ingest_batch_records", "Records per accepted batch", buckets=_BATCH_BUCKETS,
            registry=registry)
        self.produce_seconds = Histogram(
            "meterd_kafka_produce_seconds", "Time from produce to broker acknowledgement",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.consumer_records = Counter(
            "meterd_consumer_records", "Records aggregated by the consumer", registry=registry)
        self.consumer_batches = Counter(
            "meterd_consumer_batches", "Kafka messages handled by the consumer, by outcome",
            ["result"], registry=registry)
        self.consumer_lag = Gauge(
            "meterd_consumer_lag_messages", "High-water mark minus position, per assigned partition",
            ["partition"], registry=registry)
        self.flush_seconds = Histogram(
            "meterd_consumer_flush_seconds", "Duration of one aggregate flush transaction",
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.dlq = Counter(
            "meterd_consumer_dlq", "Batches moved to the dead letters (topic or table): undecodable, "
            "batch_id conflict, or poison", registry=registry)
        self.buffer_records = Gauge(
            "meterd_consumer_buffer_records", "Records aggregated in memory and not yet flushed",
            registry=registry)
        self.log_append_seconds = Histogram(
            "meterd_log_append_seconds", "Time from a validated batch to its durable append (claim "
            "and database row, or claim and Kafka acknowledgement), by log", ["log"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        self.consumer_lag_seconds = Gauge(
            "meterd_consumer_lag_seconds", "Age of the oldest acknowledged batch not yet counted "
            "(database log) or since the consumer last caught up (Kafka)", registry=registry)
        self.stale_offsets = Counter(
            "meterd_consumer_stale_offsets", "Stored partition offsets found not to fit their log (past "
            "its end, or a different message before them: topic recreated or broker reset), "
            "by the policy applied", ["policy"], registry=registry)
        for policy in ("earliest", "halt"):  # zero series from the start, so alerts see an increase
            self.stale_offsets.labels(policy)
        self.consumer_errors = Counter(
            "meterd_consumer_errors", "Consumer cycles that failed, by kind (transient: the database or "
            "broker unreachable or busy; data: anything else, a poison candidate)", ["kind"], registry=registry)
        self.consumer_poison = Counter(
            "meterd_consumer_poison_batches", "Batches whose apply failed consumer.poison_attempts times "
            "alone, moved to the dead letters so the batches behind them are counted", registry=registry)
        for kind in ("transient", "data"):
            self.consumer_errors.labels(kind)
        self.usage_saturated = Counter(
            "meterd_usage_saturated", "Usage sums (in a flush or in a stored row) that reached 2^63-1 "
            "and stopped there instead of overflowing",
            registry=registry)
        # Observed by both consumers once per batch, when the flush that counted it commits.
        self.freshness_seconds = Histogram(
            "meterd_usage_freshness_seconds", "Time from the writer receiving a batch to the commit that "
            "makes its usage queryable", buckets=_FRESHNESS_BUCKETS, registry=registry)
        self.quota_crossings = Counter(
            "meterd_quota_threshold_crossings", "Quota thresholds crossed (one per account, period and "
            "threshold), by threshold as a fraction of the quota", ["threshold"], registry=registry)
        self.webhook_deliveries = Counter(
            "meterd_webhook_deliveries", "Quota-alert webhook delivery attempts, by result "
            "(delivered, retry, failed: given up after the last attempt)", ["result"], registry=registry)
        # Known label values start at 0, so dashboards and alert rules read a series before the
        # first crossing or delivery (absent is not zero to PromQL).
        for threshold in DEFAULT_THRESHOLD_LABELS:
            self.quota_crossings.labels(threshold)
        for result in ("delivered", "retry", "failed"):
            self.webhook_deliveries.labels(result)

    def count_crossings(self, crossings: Sequence[Any]) -> None:
        for c in crossings:
            self.quota_crossings.labels(f"{c.threshold:g}").inc()
