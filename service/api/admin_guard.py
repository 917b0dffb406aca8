"""Admin-only sub-applications (the profiling index): the same 401/403 answers as the account API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

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
        principal = await self.auth.authenticate(request.headers.get("authorization"))
        if principal is None or not principal.is_admin:
            problem = unauthorized() if principal is None else forbidden()
            await problem_response(problem, request.url.path)(scope, receive, send)
            return
        await self.app(scope, receive, send)
