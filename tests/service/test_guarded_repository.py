"""A database connection lost in the middle of a statement (PostgreSQL killed or restarted) is the
database being unavailable (UNAVAILABLE / 503, retried), not an unknown error; any other database
error still surfaces as itself. Unit test of the wrapper's logic (stand-in breaker and repository)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy.exc

from governance import DependencyUnavailable
from service.governance_setup import GuardedRepository


class PassThroughBreaker:
    name = "database"

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)


class FailingRepo:
    def __init__(self, invalidated: bool) -> None:
        self.invalidated = invalidated

    async def register_nodes(self) -> None:
        raise sqlalchemy.exc.DBAPIError("INSERT ...", {}, Exception("connection was closed in the middle of operation"),
                                        connection_invalidated=self.invalidated)


async def test_a_lost_connection_is_dependency_unavailable() -> None:
    guarded = GuardedRepository(FailingRepo(invalidated=True), PassThroughBreaker())  # type: ignore[arg-type]
    with pytest.raises(DependencyUnavailable):
        await guarded.register_nodes()


async def test_other_database_errors_are_not_hidden() -> None:
    guarded = GuardedRepository(FailingRepo(invalidated=False), PassThroughBreaker())  # type: ignore[arg-type]
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        await guarded.register_nodes()
