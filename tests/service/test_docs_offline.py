"""/docs on a real `meterd up`, rendered by headless Chromium with every non-loopback request
blocked: Swagger UI and the document both come from meterd, and every operation shows."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.profiling.test_profiling_chromium import chromium
from tests.service.conftest import Meterd
from tests.support.require import require_binary

# Anything not on loopback goes to a proxy that is not there, and no host name resolves.
OFFLINE = ["--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           "--virtual-time-budget=20000"]


def test_docs_page_names_only_its_own_files(meterd: Meterd) -> None:
    page = httpx.get(meterd.proc.http + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/") for r in refs), refs
    for ref in refs:
        resp = httpx.get(meterd.proc.http + ref)
        assert resp.status_code == 200 and resp.content, ref
    assert httpx.get(meterd.proc.http + "/docs/index.html").status_code == 404  # a fixed list, not a directory
    assert httpx.get(meterd.proc.http + "/docs/..%2Fopenapi.py").status_code == 404


def test_docs_render_offline_in_chromium(meterd: Meterd, tmp_path: Path) -> None:
    browser = require_binary("chromium", "chromium-browser")
    url = meterd.proc.http + "/docs"
    doc = httpx.get(meterd.proc.http + "/openapi.json").json()
    operations = [(m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"]
    dom = chromium(browser, tmp_path / "profile-dom", *OFFLINE, "--dump-dom", url)
    assert "swagger-ui" in dom and "Loading the interactive API docs" not in dom
    shown = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {p for _, p in operations} <= shown, sorted({p for _, p in operations} - shown)
    assert len(re.findall(r'class="opblock opblock-(?:get|post|put|patch|delete)', dom)) == len(operations)
    shot = tmp_path / "docs.png"
    chromium(browser, tmp_path / "profile-shot", *OFFLINE, f"--screenshot={shot}", "--window-size=1280,2600", url)
    assert shot.stat().st_size > 20_000  # the rendered operations list, not a blank page


def test_docs_would_be_blank_without_meterd_serving_the_files(meterd: Meterd, tmp_path: Path) -> None:
    """The offline setting is real: the same page pointing at a CDN renders nothing."""
    browser = require_binary("chromium", "chromium-browser")
    cdn = tmp_path / "cdn.html"
    cdn.write_text('<html><body><div id="docs">blank</div>'
                   '<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>'
                   '<script>SwaggerUIBundle({url: "' + meterd.proc.http + '/openapi.json", dom_id: "#docs"})</script>'
                   '</body></html>')
    dom = chromium(browser, tmp_path / "profile-cdn", *OFFLINE, "--dump-dom", cdn.as_uri())
    assert "opblock" not in dom and "blank" in dom


def test_docs_group_operations_by_area_and_show_no_lock_on_open_endpoints(meterd: Meterd, tmp_path: Path) -> None:
    browser = require_binary("chromium", "chromium-browser")
    doc = httpx.get(meterd.proc.http + "/openapi.json").json()
    dom = chromium(browser, tmp_path / "profile-tags", *OFFLINE, "--dump-dom", meterd.proc.http + "/docs")
    shown_tags = set(re.findall(r'data-tag="([^"]+)"', dom))
    assert shown_tags == {t["name"] for t in doc["tags"]}, shown_tags
    assert "default" not in shown_tags
    blocks = re.split(r'(?=<div class="opblock opblock-)', dom)
    by_path = {m.group(1): block for block in blocks if (m := re.search(r'data-path="([^"]+)"', block))}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert "authorization__btn" not in by_path[path], path  # no lock on an open endpoint
    assert "authorization__btn" in by_path["/v1/accounts/{account_id}/usage"]
