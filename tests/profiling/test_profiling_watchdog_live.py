"""The watchdog in a real process: CPU pressure from a busy thread triggers exactly one capture and
the cooldown holds; a low memory limit triggers a memory-labelled capture."""

from __future__ import annotations

import time

from tests.profiling.profiling_helpers import list_captures, metric_value, wait_for_capture


def test_cpu_pressure_triggers_exactly_one_capture_and_honours_cooldown(profiled_app):
    app = profiled_app(
        {
            "watchdog": {
                "interval_s": 0.2,
                "consecutive": 3,
                # One busy thread is up to 50% of a 2-CPU machine; with other work sharing the CPUs
                # it may get a third of a core. Idle, the process stays near 0.
                "cpu_threshold": 0.08,
                "memory_threshold": 50.0,
                "cooldown_s": 60,
                "capture_duration_s": 1.0,
            }
        },
        busy=True,
    )
    done = wait_for_capture(app.directory, lambda c: c.status == "completed", service=app.service, timeout=20)
    assert done.trigger == "cpu"
    assert "samples in a row" in (done.trigger_detail or "") or "jump" in (done.trigger_detail or "")
    assert done.samples and done.samples > 10
    assert "recognisable_busy_function" in (app.directory / done.files["folded"]).read_text()
    assert done.allocation_sites is False  # CPU captures skip the costly tracing
    assert "not traced" in (app.directory / done.files["alloc"]).read_text()
    # Pressure continues for ~15 more samples; the cooldown must keep it at one capture.
    time.sleep(3.0)
    captures = list_captures(app.directory, app.service)
    assert [(c.trigger, c.status) for c in captures] == [("cpu", "completed")]
    with app.client() as client:
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "profiling_captures_total", 'trigger="cpu"') == 1.0
    assert (metric_value(metrics, "profiling_watchdog_cpu_ratio") or 0) >= 0.08
    assert 0 < (metric_value(metrics, "profiling_watchdog_host_memory_ratio") or 0) <= 1
    assert metric_value(metrics, "profiling_capture_in_progress") == 0.0
    assert "pressure" in app.log_text()


def test_low_memory_limit_triggers_a_memory_capture(profiled_app):
    app = profiled_app(
        {
            "watchdog": {
                "interval_s": 0.2,
                "consecutive": 3,
                "cpu_threshold": 50.0,
                "memory_threshold": 0.8,
                "memory_limit_bytes": 16 * 1024 * 1024,  # the interpreter alone holds more
                "cooldown_s": 60,
                "capture_duration_s": 1.0,
            }
        },
        hold_mib=8,
    )
    done = wait_for_capture(app.directory, lambda c: c.status == "completed", service=app.service, timeout=20)
    assert done.trigger == "memory"
    assert {"alloc", "threads", "meta", "folded", "flamegraph"} <= set(done.files)
    assert done.allocation_sites is True  # memory captures trace allocation sites
    assert "Allocation sites that grew" in (app.directory / done.files["alloc"]).read_text()
    with app.client() as client:
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "profiling_captures_total", 'trigger="memory"') == 1.0
    assert (metric_value(metrics, "profiling_watchdog_memory_ratio") or 0) > 1.0
