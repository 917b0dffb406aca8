"""Unit tests of the poison-isolation logic (service/pipeline/poison.py): only the unit that fails
alone is set aside, in log order, and an error that says the database is down never blames data."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from service.pipeline.poison import FailureStreak, is_transient, settle


class Log:
    """Applies groups of ints; any group holding a poison value fails, as one transaction would."""

    def __init__(self, poison: set[int], error: Exception | None = None) -> None:
        self.poison = poison
        self.error = error or ValueError("cannot apply")
        self.applied: list[int] = []
        self.quarantined: list[tuple[int, str]] = []
        self.calls = 0

    async def apply(self, group: Sequence[int]) -> None:
        self.calls += 1
        if self.poison & set(group):
            raise self.error
        self.applied.extend(group)

    async def quarantine(self, unit: int, reason: str) -> None:
        self.quarantined.append((unit, reason))


async def test_only_the_units_that_fail_alone_are_set_aside_in_order() -> None:
    log = Log(poison={3, 11})
    await settle(list(range(16)), log.apply, log.quarantine, attempts=3)
    assert log.applied == [u for u in range(16) if u not in {3, 11}]
    assert [u for u, _ in log.quarantined] == [3, 11]
    assert log.quarantined[0][1] == "apply failed 3 times alone: ValueError: cannot apply"
    assert log.calls < 16 + 2 * 3  # halving, not one transaction per unit


async def test_the_reason_is_printable_whatever_the_error_holds() -> None:
    log = Log(poison={1}, error=ValueError("node 'edge\x00one'\nbad"))
    await settle([1], log.apply, log.quarantine, attempts=2)
    assert log.quarantined == [(1, "apply failed 2 times alone: ValueError: node 'edge\\x00one'\\nbad")]


async def test_a_transient_error_propagates_and_nothing_is_set_aside() -> None:
    down = OperationalError("INSERT ...", {}, ConnectionRefusedError("database is down"))
    log = Log(poison={5}, error=down)
    with pytest.raises(OperationalError):
        await settle(list(range(8)), log.apply, log.quarantine, attempts=3)
    assert log.quarantined == []


async def test_an_ownership_error_passes_through() -> None:
    class Lost(Exception):
        pass

    log = Log(poison={2}, error=Lost())
    with pytest.raises(Lost):
        await settle([1, 2, 3], log.apply, log.quarantine, attempts=3, passthrough=(Lost,))
    assert log.quarantined == []


def test_the_streak_trips_on_identical_failures_only() -> None:
    streak = FailureStreak(3)
    assert not streak.failed(1, ValueError())
    assert not streak.failed(1, ValueError())
    assert not streak.failed(2, ValueError())  # other work: a new streak
    assert not streak.failed(2, KeyError())  # another error: a new streak
    assert not streak.failed(2, KeyError())
    assert streak.failed(2, KeyError())
    down = OperationalError("SELECT 1", {}, ConnectionRefusedError())
    assert not any(streak.failed(2, down) for _ in range(10))


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("sqlstate", "transient"), [("40P01", True), ("40001", True), ("08006", True),
                                                     ("53300", True), ("22021", False), ("22003", False)])
def test_postgres_errors_are_classified_by_sqlstate(sqlstate: str, transient: bool) -> None:
    # 40P01 deadlock, 40001 serialization, 08006 connection, 53300 too many connections;
    # 22021 invalid byte sequence (NUL), 22003 numeric out of range: the data's fault.
    assert is_transient(DBAPIError("UPDATE ...", {}, PgError(sqlstate))) is transient
