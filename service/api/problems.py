"""RFC 9457 problem details, rendered by the one renderer in governance.problem (one `type` URI
convention for the API, the governance adapters and the HTTP server)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from governance.problem import MEDIA_TYPE, TYPE_BASE, problem_body, slug_of

PROBLEM_TYPE = TYPE_BASE


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, *, slug: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug or slug_of(title)
        self.headers = headers or {}
        self.extra = extra


def problem_response(p: Problem, instance: str | None = None) -> Response:
    body = problem_body(p.status, p.detail, title=p.title, slug=p.slug, instance=instance, **p.extra)
    return Response(body, status_code=p.status, headers=p.headers, media_type=MEDIA_TYPE)


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
