"""Prometheus metrics of the profiler and the watchdog's last readings."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class ProfilingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.captures = Counter(
            "profiling_captures",
            "Profiling captures started, by what started them (signal, api, cpu, memory).",
            ["trigger"],
            registry=registry,
        )
        self.failures = Counter(
            "profiling_capture_failures",
            "Profiling captures that could not start or finish, by reason.",
            ["reason"],
            registry=registry,
        )
        self.in_progress = Gauge(
            "profiling_capture_in_progress", "1 while a profiling capture is running.", registry=registry
        )
        self.cpu_ratio = Gauge(
            "profiling_watchdog_cpu_ratio",
            "Process CPU use as a share of the CPUs it may use (cgroup quota or affinity), last sample.",
            registry=registry,
        )
        self.memory_ratio = Gauge(
            "profiling_watchdog_memory_ratio",
            "Process RSS as a share of its memory limit (setting, cgroup, else host), last sample.",
            registry=registry,
        )
        self.host_cpu_ratio = Gauge(
            "profiling_watchdog_host_cpu_ratio", "Host CPU use (0-1), last sample.", registry=registry
        )
        self.host_memory_ratio = Gauge(
            "profiling_watchdog_host_memory_ratio", "Host memory use (0-1), last sample.", registry=registry
        )
        # Pre-create the usual label values so dashboards show zeros rather than "no data".
        for trigger in ("signal", "api", "cpu", "memory"):
            self.captures.labels(trigger)
        # Failure reasons too: a series born at 1 has no increase() until its second failure.
        for reason in ("py_spy_missing", "permission_denied", "py_spy_failed", "unsafe_directory",
                       "write_failed", "upload_failed"):
            self.failures.labels(reason)
