"""A headless Chromium driven over the DevTools protocol: navigate, run a line of JavaScript, wait.

Only what the browser tests need (the profiles page's buttons); the protocol is Chromium's own,
spoken over the `websockets` client."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.servers import free_port


class Page:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.3)
        self.wait_for("document.readyState === 'complete'", what=f"load of {url}")

    def wait_for(self, expression: str, timeout: float = 20.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):  # a navigation destroys the context mid-call
                value = self.js(expression)
                if value:
                    return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what or expression}; page: {self.js('location.href')}")


@contextlib.contextmanager
def chromium_page(binary: str, profile: Path) -> Iterator[Page]:
    port = free_port()
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                             f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromium's DevTools endpoint did not come up")
            time.sleep(0.2)
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            page = Page(ws)
            page.call("Page.enable")
            yield page
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
