"""A user plugin loaded by dotted path from config ("tests.governance.gov_plugins:DenyList")."""

from __future__ import annotations

from governance import NOOP, Call, Outcome, Rejection, Token


class _Seen:
    def __init__(self, plugin: DenyList) -> None:
        self.plugin = plugin

    def release(self, outcome: Outcome) -> None:
        self.plugin.outcomes.append((outcome.call.transport, outcome.kind.value))


class DenyList:
    """Rejects calls whose client key is listed; records what it saw (to prove one shared instance)."""

    name = "denylist"

    def __init__(self, keys: list[str], status: str = "rate_limited", retry_after: float = 7.0) -> None:
        self.keys = set(keys)
        self.status = status
        self.retry_after = retry_after
        self.seen: list[tuple[str, str]] = []
        self.outcomes: list[tuple[str, str]] = []

    def admit(self, call: Call) -> Token | Rejection:
        self.seen.append((call.transport, call.route))
        if call.client_key in self.keys:
            return Rejection(self.name, "denied_key", self.status, self.retry_after)  # type: ignore[arg-type]
        return _Seen(self)


class AsyncAudit:
    """The async variant of the protocol: admits everything after awaiting."""

    name = "audit"

    def __init__(self) -> None:
        self.admitted = 0

    async def admit(self, call: Call) -> Token | Rejection:
        self.admitted += 1
        return NOOP


class NotAPlugin:
    def __init__(self) -> None:
        pass

    def before(self, call: Call) -> None:  # no `admit`: config must refuse it
        return None
