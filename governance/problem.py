"""RFC 9457 problem details for governance rejections, rendered once per distinct shape."""

from __future__ import annotations

import json
import math
from http import HTTPStatus

from governance.core import Rejection

PROBLEM_TYPE = "application/problem+json"
# (plugin, reason, status, retry) -> the reply's body and its fixed HTTP headers. Rejections come in
# bursts (hundreds per second under overload, each costing loop time the admitted calls need), so
# everything about one that does not vary per call is built once.
_cache: dict[tuple[str, str, int, int], tuple[bytes, tuple[tuple[bytes, bytes], ...]]] = {}


def retry_after_seconds(retry_after: float) -> int:
    """HTTP Retry-After is whole seconds; never advertise 0 (clients would hammer)."""
    return max(1, math.ceil(retry_after))


def problem_body(status: int, title: str | None, detail: str, **extra: object) -> bytes:
    doc = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status,
           "detail": detail, **extra}
    return json.dumps(doc, separators=(",", ":")).encode()


def problem_headers(body: bytes, retry_after: int) -> tuple[tuple[bytes, bytes], ...]:
    """The HTTP headers of a problem reply, as ASGI sends them."""
    return ((b"content-type", PROBLEM_TYPE.encode()), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after).encode()))


def rejection_reply(rej: Rejection, status: int) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """(body, headers) of a rejection's HTTP reply; the plugin's own headers (rej.headers) not included."""
    retry = retry_after_seconds(rej.retry_after)
    key = (rej.plugin, rej.reason, status, retry)
    reply = _cache.get(key)
    if reply is None:
        if len(_cache) > 512:  # reasons are a closed set; this only guards against odd retry values
            _cache.clear()
        body = problem_body(
            status, None, f"{rej.status.replace('_', ' ')}: {rej.plugin} ({rej.reason}); retry after {retry}s",
            plugin=rej.plugin, reason=rej.reason, retry_after=retry)
        reply = _cache[key] = body, problem_headers(body, retry)
    return reply
