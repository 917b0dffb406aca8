"""What every route module receives: the process's dependencies, the caller's identity, the JSON reply.

Each route module exports ``routes(ctx: ApiContext) -> list[BaseRoute]`` whose handlers close over
``ctx``; this module is where the Authorization header of an HTTP request is turned into a principal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from service.api.problems import forbidden, not_found, unauthorized
from service.api.readiness import ReadinessCheck
from service.auth import Authenticator, Principal
from service.ingest.writer import IngestService
from service.storage import Repository
from service.storage.ledger import Ledger


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


@dataclass
class ApiContext:
    repo: Repository
    ledger: Ledger  # batch claims and the log: batch lookup
    auth: Authenticator
    ingest: IngestService | None
    registry: CollectorRegistry
    max_body_bytes: int
    body_timeout: float = 10.0
    readiness: list[ReadinessCheck] = field(default_factory=list)
    extra_routes: Sequence[BaseRoute] = ()
    default_region: str = "default"  # config billing.default_region
    max_nodes_per_account: int = 10_000  # config ingest.max_nodes_per_account: adjustments register nodes too

    async def principal(self, request: Request) -> Principal:
        p = await self.auth.authenticate(request.headers.get("authorization"))
        if p is None:
            raise unauthorized()
        request.state.principal = p
        return p

    async def admin(self, request: Request) -> Principal:
        p = await self.principal(request)
        if not p.is_admin:
            raise forbidden()
        return p

    async def readable_account(self, request: Request) -> dict:
        p = await self.principal(request)
        account_id = request.path_params["account_id"]
        # Another account's id answers 404, not 403: a key must not learn which ids exist.
        row = await self.repo.get_account(account_id) if p.may_read(account_id) else None
        if row is None:
            raise not_found("account")
        return row
