"""Poison-proof flushing, shared by both consumers.

A flush that fails the same way several times in a row is not going to succeed by itself: some
batch in it cannot be applied (a writer-side bug, a value the database refuses). Instead of
retrying it for ever, which stops metering for every account behind it, the consumer splits the
work in halves, in log order, until the batch that fails alone is found; only that batch goes to
the dead letters, with the error as its reason. Errors that say the database is unreachable or
busy are never blamed on the data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

U = TypeVar("U")
# Exceptions a caller handles itself (lost ownership races): passed through, never isolated.
PassThrough = tuple[type[BaseException], ...]


# PostgreSQL SQLSTATE classes that say nothing about the data: connection, transaction rollback
# (serialization failure, deadlock), insufficient resources, operator intervention, system error.
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")


def is_transient(exc: BaseException) -> bool:
    """The database or the network failing, not the batch: retried, never dead-lettered."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if exc.connection_invalidated or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
            return True
    return isinstance(exc, (OSError, TimeoutError, OperationalError, InterfaceError))


def error_kind(exc: BaseException) -> str:
    """The bounded label of meterd_consumer_errors_total."""
    return "transient" if is_transient(exc) else "data"


def poison_reason(exc: BaseException, attempts: int) -> str:
    # Printable only: the reason is stored in a text column that may refuse what the batch held.
    text = f"apply failed {attempts} times alone: {type(exc).__name__}: {exc}"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:1000]


class FailureStreak:
    """Counts failures of the same work with the same error type, in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._last: tuple[Hashable, str] | None = None
        self.count = 0

    def failed(self, work: Hashable, exc: BaseException) -> bool:
        """Records a failure; True once the same work failed `limit` times the same way."""
        if is_transient(exc):
            self.succeeded()
            return False
        signature = (work, type(exc).__name__)
        self.count = self.count + 1 if signature == self._last else 1
        self._last = signature
        return self.count >= self.limit

    def succeeded(self) -> None:
        self._last, self.count = None, 0


async def settle(units: Sequence[U], apply: Callable[[Sequence[U]], Awaitable[object]],
                 quarantine: Callable[[U, str], Awaitable[None]], attempts: int,
                 passthrough: PassThrough = ()) -> None:
    """Applies `units` in order, halving any group whose apply fails; a single unit that fails
    `attempts` times in a row goes to `quarantine`. Transient errors propagate (nothing is blamed)."""
    if not units:
        return
    try:
        await apply(units)
        return
    except passthrough:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(units) == 1:
            return await _retry_alone(units[0], exc, apply, quarantine, attempts, passthrough)
    mid = len(units) // 2
    await settle(units[:mid], apply, quarantine, attempts, passthrough)
    await settle(units[mid:], apply, quarantine, attempts, passthrough)


async def _retry_alone(unit: U, first: Exception, apply: Callable[[Sequence[U]], Awaitable[object]],
                       quarantine: Callable[[U, str], Awaitable[None]], attempts: int,
                       passthrough: PassThrough) -> None:
    last: Exception = first
    for _ in range(attempts - 1):
        try:
            await apply([unit])
            return
        except passthrough:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            last = exc
    await quarantine(unit, poison_reason(last, attempts))

