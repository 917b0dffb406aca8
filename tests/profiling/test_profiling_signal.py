"""SIGTRAP against a real process: the first signal starts a capture within a second, the second
stops it, and the files are complete, private and name the busy function."""

from __future__ import annotations

import stat
import time

import pytest

from tests.profiling.profiling_helpers import (
    assert_capture_files,
    list_captures,
    process_alive,
    wait_for_capture,
    wait_until,
)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigtrap_toggles_a_real_capture(profiled_app, loop):
    if loop == "uvloop":
        import uvloop  # noqa: F401  a dependency of meterd: missing is a failure, not a skip
    app = profiled_app({"watchdog": {"enabled": False}}, busy=True, loop=loop)
    assert not app.directory.exists()  # created at the first capture, under $TMPDIR

    sent = time.monotonic()
    app.trap()
    running = wait_for_capture(app.directory, lambda c: c.status == "running", service=app.service, timeout=1.0)
    latency = time.monotonic() - sent
    assert latency < 1.0
    assert running.trigger == "signal" and running.pid == app.pid

    time.sleep(1.5)  # let py-spy take ~150 samples of the busy thread
    app.trap()
    done = wait_for_capture(
        app.directory, lambda c: c.id == running.id and c.status == "completed", service=app.service, timeout=15
    )
    assert done.stop_reason == "requested"
    assert done.samples and done.samples > 20
    assert_capture_files(app.directory, done, "recognisable_busy_function")
    # The directory moved with TMPDIR and is private.
    assert app.directory.parent == app.tmpdir
    assert stat.S_IMODE(app.directory.stat().st_mode) == 0o700
    threads = (app.directory / done.files["threads"]).read_text()
    assert "recognisable_busy_function" in threads  # the dump at the start saw the busy thread
    alloc = (app.directory / done.files["alloc"]).read_text()
    assert "Memory summary" in alloc and "rss" in alloc  # signal captures: the cheap report
    # The log line with the paths follows the meta file that says "completed".
    assert wait_until(lambda: done.files["flamegraph"] in app.log_text(), timeout=5)
    [line] = [x for x in app.output if done.files["flamegraph"] in x]
    assert "completed" in line and str(app.directory / done.files["folded"]) in line

    # A third TRAP starts a new capture: the toggle keeps working, and the process is alive.
    app.trap()
    again = wait_for_capture(
        app.directory, lambda c: c.id != running.id and c.status == "running", service=app.service, timeout=2
    )
    assert again.trigger == "signal"
    assert process_alive(app.pid)


def test_capture_stops_by_itself_after_its_duration(profiled_app):
    app = profiled_app({"duration_s": 1.0, "watchdog": {"enabled": False}}, busy=True)
    app.trap()
    done = wait_for_capture(app.directory, lambda c: c.status == "completed", service=app.service, timeout=15)
    assert done.stop_reason == "duration"
    assert 0.9 <= (done.duration_s or 0) < 10
    assert_capture_files(app.directory, done, "recognisable_busy_function")


def test_second_trap_during_the_start_still_stops_it(profiled_app):
    app = profiled_app({"watchdog": {"enabled": False}}, busy=True)
    app.trap()
    time.sleep(0.02)  # the start is most likely still in progress
    app.trap()
    done = wait_for_capture(app.directory, lambda c: c.status == "completed", service=app.service, timeout=15)
    assert done.stop_reason == "requested" and done.trigger == "signal"
    time.sleep(0.5)
    assert [c.status for c in list_captures(app.directory, app.service)] == ["completed"]
    assert process_alive(app.pid)
