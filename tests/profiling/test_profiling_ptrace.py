"""The PR_SET_PTRACER bookkeeping when py-spy children overlap (logic only: prctl is recorded)."""

from __future__ import annotations

import pytest

from profiling import ptrace


@pytest.fixture
def calls(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(ptrace, "_prctl", lambda option, arg: seen.append(arg) or True)
    monkeypatch.setattr(ptrace, "_holders", set())
    return seen


def test_single_child_is_narrowed_then_cleared(calls):
    ptrace.before_spawn()
    ptrace.spawned(101)
    ptrace.released(101)
    assert calls == [ptrace.PR_SET_PTRACER_ANY, 101, 0]


def test_overlapping_children_keep_any_until_one_is_left(calls):
    ptrace.before_spawn()
    ptrace.spawned(101)  # the record
    ptrace.before_spawn()
    ptrace.spawned(202)  # a dump while the record runs: stays "any"
    ptrace.released(202)  # back to the record alone
    ptrace.released(101)
    assert calls == [ptrace.PR_SET_PTRACER_ANY, 101, ptrace.PR_SET_PTRACER_ANY, 101, 0]


def test_failed_spawn_restores_the_previous_grant(calls):
    ptrace.before_spawn()
    ptrace.spawned(101)
    ptrace.before_spawn()
    ptrace.released(None)  # the second spawn failed
    assert calls[-1] == 101


def test_real_prctl_call_does_not_raise():
    # On a kernel without Yama this returns False (EINVAL); with Yama, True. Never an exception.
    assert ptrace.clear_tracer() in (True, False)
