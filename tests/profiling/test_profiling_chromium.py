"""The capture index and the flamegraph it links to, rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from profiling import CaptureStore
from tests.profiling.profiling_helpers import assert_capture_files
from tests.support.cdp import chromium_page
from tests.support.meterd import running_meterd
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


def _evil_site(directory: Path, target: str) -> tuple[ThreadingHTTPServer, str]:
    """Another origin whose page posts the profiler's start form on load: a cross-site request forgery."""
    (directory / "index.html").write_text(
        f'<html><body><form id="f" method="post" action="{target}/debug/profiles/start">'
        '<input name="duration_s" value="30"></form><script>document.getElementById("f").submit()</script>'
        "</body></html>")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/index.html"


def test_meterd_profiles_page_in_a_browser_with_the_admin_token_as_basic(tmp_path: Path) -> None:
    """On a real `meterd up`: the browser is challenged for Basic credentials, opens the page with the
    admin token as password, starts and stops a capture with the page's buttons, opens the flamegraph;
    a page of another origin cannot start a capture with the browser's remembered credentials."""
    browser = require_binary("chromium", "chromium-browser")
    with running_meterd(tmp_path, "up") as m:
        assert m.http is not None
        challenge = httpx.get(f"{m.http}/debug/profiles/", headers={"accept": "text/html"})
        assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic ")
        api = httpx.get(f"{m.http}/debug/profiles/index.json")
        assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Bearer")
        wrong = base64.b64encode(b"admin:not-the-token").decode()
        assert httpx.get(f"{m.http}/debug/profiles/", headers={"authorization": f"Basic {wrong}"}).status_code == 401

        host = m.http.removeprefix("http://")
        with chromium_page(browser, tmp_path / "profile-basic") as page:
            page.navigate(f"http://admin:{m.admin_token}@{host}/debug/profiles/")
            assert "profiles" in page.js("document.title"), page.js("document.body.innerText")
            page.js("document.querySelector('form[action$=\"/start\"] button').click()")
            page.wait_for("document.body.innerText.includes('is running since')", what="a running capture")
            time.sleep(1.5)
            page.js("document.querySelector('form[action$=\"/stop\"] button').click()")
            href = page.wait_for("(document.querySelector('tr.capture.completed a.file.flamegraph') || {}).href",
                                 what="a completed capture with a flamegraph")
            page.navigate(href)
            assert page.js("document.documentElement.tagName.toLowerCase()") == "svg"
            assert "meterd" in page.js("document.documentElement.textContent")

            evil, evil_url = _evil_site(tmp_path, m.http)
            try:
                page.navigate(evil_url)
                page.wait_for("document.body.innerText.includes('cross-origin')", what="the forged POST's answer")
            finally:
                evil.shutdown()
        with m.client() as c:
            index = c.get("/debug/profiles/index.json").json()
        assert index["running"] is None, index  # the forged start did not start anything
        assert [x["trigger"] for x in index["captures"]] == ["api"]
