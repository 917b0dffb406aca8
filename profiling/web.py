"""Starlette routes for the capture index, downloads and start/stop, relative to a mount point.

The application mounts them (meterd uses /debug/profiles) and supplies `authorize(request)`.
Links are built from the mount's root_path, so the same routes work under any prefix.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from governance.problem import problem_body

from .errors import ProfilingError
from .info import KINDS, CaptureInfo

if TYPE_CHECKING:
    from . import Profiler

Authorize = Callable[[Request], bool]
Handler = Callable[[Request], Any]

PROBLEM = "application/problem+json"
_TYPES = {".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8", ".json": "application/json"}
# The SVG carries its own small script (zoom, search); nothing else may load or run.
_SVG_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
_HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"
_MAX_DURATION_S = 3600.0


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> Response:
    """An RFC 9457 problem document, from the one renderer (governance.problem: one `type` convention)."""
    body = problem_body(status, detail, title=title, slug=f"profiling-{slug}", **extra)
    return Response(body, status_code=status, media_type=PROBLEM, headers={"Cache-Control": "no-store"})


def _error_response(err: ProfilingError) -> Response:
    titles = {409: "Conflict", 503: "Profiling unavailable", 500: "Profiling failed"}
    return problem(
        err.http_status,
        titles.get(err.http_status, "Profiling error"),
        str(err),
        err.reason.replace("_", "-"),
        fix=err.fix,
    )


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _same_origin(request: Request) -> bool:
    # Browsers label every request with where it came from; any site but this one is refused.
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None  # non-browser clients send none; "null" comes from sandboxed pages
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _wants_html(request: Request) -> bool:
    # A browser form post (the index page's buttons) gets a redirect back to the page.
    return request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")


def routes(profiler: Profiler, authorize: Authorize) -> list[BaseRoute]:
    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                allowed = authorize(request)
            except Exception:  # a broken check must fail closed
                allowed = False
            if not allowed:
                if not request.headers.get("authorization") and not request.headers.get("cookie"):
                    response = problem(401, "Unauthorized", "admin credentials are required", "unauthorized")
                    response.headers["WWW-Authenticate"] = "Bearer"
                    return response
                return problem(403, "Forbidden", "these credentials may not use profiling", "forbidden")
            if request.method == "POST" and not _same_origin(request):
                # A cross-site form post riding on a browser's cookies: refuse it.
                return problem(403, "Forbidden", "cross-origin requests may not start or stop captures", "forbidden")
            handled: Response = await handler(request)
            return handled

        return endpoint

    async def index_html(request: Request) -> Response:
        captures = profiler.list_captures()
        body = render_index(profiler, captures, _base(request))
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": _HTML_CSP}
        return HTMLResponse(body, headers=headers)

    async def index_json(request: Request) -> Response:
        base = str(request.url.replace(query=None, fragment=None)).rsplit("/", 1)[0]
        captures = []
        for info in profiler.list_captures():
            data = info.to_dict()
            data["links"] = {kind: f"{base}/files/{name}" for kind, name in info.files.items()}
            captures.append(data)
        current = profiler.current_capture()
        return JSONResponse(
            {
                "service": profiler.settings.service_name,
                "directory": str(profiler.directory),
                "running": current.to_dict() if current else None,
                "captures": captures,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        path = profiler.resolve_file(name)  # only names that the listing holds
        if path is None:
            return problem(404, "Not Found", f"no capture file named {name!r}", "not-found")
        media_type = _TYPES.get(path.suffix, "application/octet-stream")
        headers = {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'inline; filename="{path.name}"',
        }
        if path.suffix == ".svg":
            headers["Content-Security-Policy"] = _SVG_CSP
        return FileResponse(path, media_type=media_type, headers=headers)

    async def start(request: Request) -> Response:
        try:
            duration, tracemalloc = await _start_params(request)
        except ValueError as exc:
            return problem(400, "Bad Request", str(exc), "bad-request")
        try:
            info = await profiler.start_capture(trigger="api", duration_s=duration, tracemalloc=tracemalloc)
        except ProfilingError as err:
            return _error_response(err)
        if _wants_html(request):
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return JSONResponse(info.to_dict(), status_code=201)

    async def stop(request: Request) -> Response:
        try:
            info = await profiler.stop_capture()
        except ProfilingError as err:
            return _error_response(err)
        if _wants_html(request):
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return JSONResponse(info.to_dict())

    return [
        Route("/", guarded(index_html), methods=["GET"], name="profiling_index"),
        Route("/index.json", guarded(index_json), methods=["GET"], name="profiling_index_json"),
        Route("/files/{name}", guarded(download), methods=["GET"], name="profiling_file"),
        Route("/start", guarded(start), methods=["POST"], name="profiling_start"),
        Route("/stop", guarded(stop), methods=["POST"], name="profiling_stop"),
    ]


async def _start_params(request: Request) -> tuple[float | None, bool | None]:
    """(duration_s, tracemalloc) from the query, a form or a JSON body; None means the default."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    if body and ctype.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ValueError("the body is not valid JSON") from exc
        if isinstance(data, dict):
            params.update(data)
    elif body and ctype.startswith("application/x-www-form-urlencoded"):
        params.update({k: v[0] for k, v in parse_qs(body.decode()).items()})
    return _duration(params.get("duration_s")), _flag(params.get("tracemalloc"))


def _duration(raw: Any) -> float | None:
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"duration_s must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or not 0 < value <= _MAX_DURATION_S:
        raise ValueError(f"duration_s must be between 0 and {_MAX_DURATION_S:.0f} seconds")
    return value


def _flag(raw: Any) -> bool | None:
    if raw in (None, ""):
        return None
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"tracemalloc must be true or false, not {raw!r}")


def _fmt_duration(info: CaptureInfo) -> str:
    if info.duration_s is not None:
        return f"{info.duration_s:.1f} s"
    if info.status == "running" and info.requested_duration_s:
        return f"running (max {info.requested_duration_s:.0f} s)"
    return "–"


def render_index(profiler: Profiler, captures: list[CaptureInfo], base: str) -> str:
    e = html.escape
    settings = profiler.settings
    current = profiler.current_capture()
    rows = []
    for info in captures:
        links = " ".join(
            f'<a href="{e(base)}/files/{e(info.files[kind])}"'
            f'{" target=_blank" if kind == "flamegraph" else ""} class="file {e(kind)}">{e(kind)}</a>'
            for kind in KINDS
            if kind in info.files
        )
        samples = "" if info.samples is None else str(info.samples)
        notes = []
        if info.trigger_detail:
            notes.append(info.trigger_detail)
        if info.allocation_sites:
            notes.append("allocation sites traced")
        if info.py_spy_summary:
            notes.append(info.py_spy_summary)
        if info.stop_reason and info.status != "running":
            notes.append(f"stopped: {info.stop_reason}")
        rows.append(
            f'<tr class="capture {e(info.status)}" id="{e(info.id)}">'
            f"<td>{e(info.started_at.strftime('%Y-%m-%d %H:%M:%S'))}</td>"
            f"<td>{e(info.trigger)}</td><td>{e(_fmt_duration(info))}</td>"
            f'<td><span class="status">{e(info.status)}</span></td><td class="num">{samples}</td>'
            f"<td>{e(str(info.pid))}</td><td>{links}</td><td class=\"notes\">{e('; '.join(notes))}</td></tr>"
        )
        if info.error:
            rows.append(f'<tr class="error"><td></td><td colspan="7">{e(info.error)}</td></tr>')
    table = (
        "<table><thead><tr><th>Started (UTC)</th><th>Trigger</th><th>Duration</th><th>Status</th>"
        "<th>Samples</th><th>PID</th><th>Files</th><th>Notes</th></tr></thead><tbody>"
        + ("".join(rows) or '<tr><td colspan="8" class="none">No captures yet.</td></tr>')
        + "</tbody></table>"
    )
    if current is not None:
        control = (
            f'<form method="post" action="{e(base)}/stop"><p class="running">Capture '
            f"<b>{e(current.id)}</b> ({e(current.trigger)}) is running since "
            f"{e(current.started_at.strftime('%H:%M:%S'))} UTC. "
            '<button type="submit">Stop capture</button></p></form>'
        )
        refresh = '<meta http-equiv="refresh" content="5">'
    else:
        control = (
            f'<form method="post" action="{e(base)}/start"><p><label>Duration (s) '
            f'<input name="duration_s" type="number" min="1" max="{_MAX_DURATION_S:.0f}" '
            f'value="{settings.duration_s:.0f}"></label> <label><input type="checkbox" name="tracemalloc" '
            f'value="true"> trace allocation sites (slower)</label> <button type="submit">Start capture</button>'
            f"</p></form>"
        )
        refresh = ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>{e(settings.service_name)} profiles</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f}}
h1{{font-size:20px;margin:0 0 4px}} .hint{{color:#555;margin:0 0 16px}}
table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #ddd}}
th{{background:#f3f3f3}} td.num{{text-align:right}} a.file{{margin-right:8px}}
tr.running .status{{color:#b35c00;font-weight:bold}} tr.completed .status{{color:#1a7f37}}
tr.failed .status,tr.interrupted .status{{color:#c62828;font-weight:bold}} tr.error td{{color:#c62828;font-size:12px}}
p.running{{background:#fff4e5;padding:8px;border-left:4px solid #b35c00}} button{{padding:4px 12px}}
code{{background:#f3f3f3;padding:1px 4px}} .none{{color:#777}} td.notes{{color:#555;font-size:12px}}
</style></head><body>
<h1>{e(settings.service_name)} profiles</h1>
<p class="hint">Captures in <code>{e(str(profiler.directory))}</code>. Send <code>kill -TRAP &lt;pid&gt;</code>
to start or stop a capture. <a href="{e(base)}/index.json">JSON</a></p>
{control}
{table}
</body></html>
"""
