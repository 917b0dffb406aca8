"""Admin-only sub-applications (the profiling index): the same 401/403 answers as the account API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from governance import Rejection
from governance.problem import rejection_reply
from service.api.problems import forbidden, problem_response, unauthorized
from service.auth import Authenticator


class AdminOnly:
    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        principal = await self.auth.check(request.headers.get("authorization"), _peer(scope))
        if isinstance(principal, Rejection):  # this peer's failed checks are over budget (audit N9)
            await budget_refusal(principal)(scope, receive, send)
            return
        if principal is None or not principal.is_admin:
            problem = unauthorized() if principal is None else forbidden()
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
