"""RFC 9457 problem details for governance rejections, rendered once per distinct shape."""

from __future__ import annotations

import json
import math
from http import HTTPStatus

from governance.core import Rejection

PROBLEM_TYPE = "application/problem+json"
_cache: dict[tuple[str, str, int, int], bytes] = {}


def retry_after_seconds(retry_after: float) -> int:
    """HTTP Retry-After is whole seconds; never advertise 0 (clients would hammer)."""
    return max(1, math.ceil(retry_after))


def problem_body(status: int, title: str | None, detail: str, **extra: object) -> bytes:
    doc = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status,
           "detail": detail, **extra}
    return json.dumps(doc, separators=(",", ":")).encode()


def rejection_body(rej: Rejection, status: int) -> bytes:
    retry = retry_after_seconds(rej.retry_after)
    key = (rej.plugin, rej.reason, status, retry)
    body = _cache.get(key)
    if body is None:
        if len(_cache) > 512:  # reasons are a closed set; this only guards against odd retry values
            _cache.clear()
        body = _cache[key] = problem_body(
            status, None, f"{rej.status.replace('_', ' ')}: {rej.plugin} ({rej.reason}); retry after {retry}s",
            plugin=rej.plugin, reason=rej.reason, retry_after=retry)
    return body
