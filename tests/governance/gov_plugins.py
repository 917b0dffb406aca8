"""A user plugin loaded by dotted path from config ("tests.governance.gov_plugins:DenyList")."""

from __future__ import annotations

from governance import Call, Outcome, Rejection


class DenyList:
    """Rejects calls whose client key is listed; records what it saw (to prove one shared instance)."""

    name = "denylist"

    def __init__(self, keys: list[str], status: str = "rate_limited", retry_after: float = 7.0) -> None:
        self.keys = set(keys)
        self.status = status
        self.retry_after = retry_after
        self.seen: list[tuple[str, str]] = []
        self.outcomes: list[tuple[str, str]] = []

    async def before(self, call: Call) -> None:
        self.seen.append((call.transport, call.route))
        if call.client_key in self.keys:
            raise Rejection(self.name, "denied_key", self.status, self.retry_after)  # type: ignore[arg-type]

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.outcomes.append((call.transport, outcome.kind))


class NotAPlugin:
    def __init__(self) -> None:
        pass

    def before(self, call: Call) -> None:  # not async: config must refuse it
        return None
