"""Bearer-token authentication shared by HTTP and gRPC."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from service.storage import Repository


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str | None  # None: the admin

    @property
    def is_admin(self) -> bool:
        return self.account_id is None

    @property
    def name(self) -> str:
        return "admin" if self.account_id is None else self.account_id

    def may_read(self, account_id: str) -> bool:
        return self.account_id is None or self.account_id == account_id


ADMIN = Principal(None)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    def __init__(self, repo: Repository, admin_token: str) -> None:
        self._repo = repo
        self._admin = admin_token.encode()

    async def authenticate(self, authorization: str | None) -> Principal | None:
        token = bearer_token(authorization)
        if token is None:
            return None
        if hmac.compare_digest(token.encode(), self._admin):
            return ADMIN
        if not token.startswith("mk_") or len(token) > 200:
            return None
        account_id = await self._repo.account_for_key(token)
        return Principal(account_id) if account_id else None
