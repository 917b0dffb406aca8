"""Admin-only sub-applications (the profiling index): the same 401/403 answers as the account API.

A browser cannot send a Bearer header, so these pages also take the admin token as the password of
HTTP Basic (any user name), and a 401 to a browser carries a Basic challenge so it asks for it. Basic
credentials ride along like cookies, so the profiler's POSTs keep their same-origin check (CSRF)."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from governance import Rejection
from governance.problem import rejection_reply
from service.api.problems import forbidden, problem_response, unauthorized
from service.auth import Authenticator

BASIC_CHALLENGE = 'Basic realm="meterd admin", charset="UTF-8"'


def as_bearer(authorization: str | None) -> str | None:
    """`Basic base64(user:token)` -> `Bearer token`; any other header unchanged."""
    if not authorization:
        return authorization
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return authorization
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return f"Bearer {password}" if sep and password else None


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


class AdminOnly:
    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        principal = await self.auth.check(as_bearer(request.headers.get("authorization")), _peer(scope))
        if isinstance(principal, Rejection):  # this peer's failed checks are over budget (audit N9)
            await budget_refusal(principal)(scope, receive, send)
            return
        if principal is None or not principal.is_admin:
            problem = unauthorized() if principal is None else forbidden()
            if principal is None and wants_html(request):
                problem.headers["WWW-Authenticate"] = BASIC_CHALLENGE  # the browser asks for the token
            await problem_response(problem, request.url.path)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def budget_refusal(rejection: Rejection) -> Response:
    """The 429 the `auth` plugin answers for the same refusal (governance's problem renderer)."""
    body, headers = rejection_reply(rejection, 429)
    return Response(body, 429, headers={k.decode(): v.decode() for k, v in headers})
