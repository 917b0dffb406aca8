"""/docs: the Swagger UI page, its script and the package files it may load."""

from __future__ import annotations

from functools import cache

# /docs is Swagger UI from the swagger-ui-bundle-v2 package, served by meterd itself: the page
# works without internet, and its Content-Security-Policy lets it load nothing from elsewhere.
DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>meterd API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head><body><div id="docs">Loading the interactive API docs; the raw description is at
<a href="/openapi.json">/openapi.json</a>.</div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>"""
DOCS_INIT_JS = b'window.onload = () => { window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs"}); };\n'
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# The only package files /docs serves (name -> media type): a fixed list, not a directory.
DOCS_ASSETS = {"swagger-ui.css": "text/css; charset=utf-8",
               "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
               "favicon-32x32.png": "image/png"}


@cache
def docs_asset(name: str) -> bytes | None:
    if name == "init.js":
        return DOCS_INIT_JS
    if name not in DOCS_ASSETS:
        return None
    from swagger_ui_bundle import swagger_ui_path  # imported here: only /docs needs it

    return (swagger_ui_path / name).read_bytes()
