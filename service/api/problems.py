"""RFC 9457 problem details."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_TYPE = "https://meterd.dev/problems/"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extra = extra


def problem_response(p: Problem, instance: str | None = None) -> Response:
    body: dict[str, Any] = {"type": PROBLEM_TYPE + p.slug, "title": p.title, "status": p.status,
                            "detail": p.detail}
    if instance:
        body["instance"] = instance
    body.update(p.extra)
    return Response(orjson.dumps(body), status_code=p.status, headers=p.headers,
                    media_type="application/problem+json")


def unauthorized() -> Problem:
    return Problem(401, "Unauthorized", "missing or invalid credentials: send 'Authorization: Bearer <token>'",
                   headers={"WWW-Authenticate": 'Bearer realm="meterd"'})


def forbidden(detail: str = "this endpoint needs the admin token") -> Problem:
    return Problem(403, "Forbidden", detail)


def not_found(what: str) -> Problem:
    return Problem(404, "Not Found", f"{what} not found")


def invalid(errors: list[dict[str, str]], detail: str | None = None) -> Problem:
    first = errors[0]
    return Problem(400, "Invalid Request", detail or f"{first['field']}: {first['detail']}",
                   slug="invalid-request", errors=errors)
