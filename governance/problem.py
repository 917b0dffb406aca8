"""The one RFC 9457 problem+json renderer: governance's refusals, the HTTP server's own errors and
the host API's errors all go through `problem_body`, so every `type` is `TYPE_BASE + slug`."""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any

from governance.core import Rejection
from governance.outbound import DependencyUnavailable

MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE = MEDIA_TYPE  # the older name, kept for imports
TYPE_BASE = "https://meterd.dev/problems/"

Headers = list[tuple[bytes, bytes]]
# (plugin, reason, status, retry) -> the reply's body and headers. Refusals come in bursts under
# overload, so what does not vary per call is built once.
_cache: dict[tuple[str, str, str, int, int], tuple[bytes, Headers]] = {}


def slug_of(title: str) -> str:
    return title.lower().replace(" ", "-").replace("_", "-")


def problem_document(status: int, detail: str, *, title: str | None = None, slug: str | None = None,
                     instance: str | None = None, **extra: Any) -> dict[str, Any]:
    """The problem object: `type` is TYPE_BASE + slug (slug defaults to the title's)."""
    title = title or HTTPStatus(status).phrase
    doc: dict[str, Any] = {"type": TYPE_BASE + (slug or slug_of(title)), "title": title, "status": status,
                           "detail": detail}
    if instance:
        doc["instance"] = instance
    doc.update(extra)
    return doc


def problem_body(status: int, detail: str, **kwargs: Any) -> bytes:
    return json.dumps(problem_document(status, detail, **kwargs), separators=(",", ":")).encode()


def problem_headers(body: bytes, retry_after: int | None = None) -> Headers:
    """The HTTP headers of a problem reply, as ASGI sends them."""
    headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return headers


def retry_after_seconds(retry_after: float) -> int:
    """HTTP Retry-After is whole seconds; never advertise 0 (clients would hammer)."""
    return max(1, math.ceil(retry_after))


def rejection_reply(rej: Rejection, status: int) -> tuple[bytes, Headers]:
    """(body, headers) of a refusal's HTTP reply; the plugin's own headers (rej.headers) not included."""
    retry = retry_after_seconds(rej.retry_after)
    key = (rej.plugin, rej.reason, rej.status, status, retry)
    reply = _cache.get(key)
    if reply is None:
        if len(_cache) > 512:  # reasons are a closed set; this only guards against odd retry values
            _cache.clear()
        body = problem_body(
            status, f"{rej.status.replace('_', ' ')}: {rej.plugin} ({rej.reason}); retry after {retry}s",
            slug=slug_of(rej.status), plugin=rej.plugin, reason=rej.reason, retry_after=retry)
        reply = _cache[key] = body, problem_headers(body, retry)
    return reply[0], list(reply[1])


def dependency_reply(exc: DependencyUnavailable) -> tuple[Headers, bytes]:
    """(headers, body) of the 503 for "a dependency is down" (service.api renders the same shape)."""
    retry = retry_after_seconds(exc.retry_after)
    body = problem_body(503, str(exc), title="Dependency Unavailable", dependency=exc.name, retry_after=retry)
    return problem_headers(body, retry), body
