"""The capture index and the flamegraph it links to, rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from profiling import CaptureStore
from tests.profiling.profiling_helpers import assert_capture_files
from tests.support.require import require_binary

# Set PROFILING_SCREENSHOTS=<dir> to keep the screenshots and look at them.
SHOTS = os.environ.get("PROFILING_SCREENSHOTS")


def chromium(binary: str, profile: Path, *args: str) -> str:
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    # Its own process group: on a timeout the renderer/GPU children die too (otherwise they keep
    # the output pipes open and reading them would block forever).
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"chromium did not finish within 60 s: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-2000:]
    return out


def test_index_and_flamegraph_render_in_chromium(profiled_app, tmp_path):
    browser = require_binary("chromium", "chromium-browser")
    app = profiled_app({"watchdog": {"enabled": False}}, busy=True, open_access=True)
    with app.client() as client:
        assert client.post("/debug/profiles/start", json={"duration_s": 30}).status_code == 201
        time.sleep(1.5)
        stopped = client.post("/debug/profiles/stop")
        assert stopped.status_code == 200, stopped.text
    info = stopped.json()
    index_url = f"{app.url}/debug/profiles/"

    dom = chromium(browser, tmp_path / "profile1", "--dump-dom", index_url)
    row = re.search(rf'<tr class="capture completed" id="{info["id"]}">(.*?)</tr>', dom, re.S)
    assert row, dom[:3000]
    assert ">api<" in row.group(1) and ">completed<" in row.group(1)
    href = re.search(r'href="([^"]+_flamegraph\.svg)"', row.group(1))
    assert href, row.group(1)
    assert "Start capture" in dom

    shot = tmp_path / "index.png"
    chromium(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,600", index_url)
    assert shot.stat().st_size > 5000  # a rendered page, not a blank image

    svg_url = app.url + href.group(1)
    svg_dom = chromium(browser, tmp_path / "profile3", "--dump-dom", svg_url)
    assert "<svg" in svg_dom and "recognisable_busy_function" in svg_dom
    svg_shot = tmp_path / "flamegraph.png"
    chromium(browser, tmp_path / "profile4", f"--screenshot={svg_shot}", "--window-size=1250,500", svg_url)
    assert svg_shot.stat().st_size > 5000

    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        for path in (shot, svg_shot):
            (Path(SHOTS) / path.name).write_bytes(path.read_bytes())
    listed = CaptureStore(app.directory, app.service).read(info["id"])
    assert listed is not None
    assert_capture_files(app.directory, listed, "recognisable_busy_function")
