"""The chain: admission order, the one unwinding path (refusal, plugin error, failing release), and
the async variant adapted once per plan."""

from __future__ import annotations

import pytest

from governance.core import FAILURE, REJECTED, SUCCESS, Call, Chain, Outcome, Rejection, Token


class _Logged:
    def __init__(self, plugin: Recorder) -> None:
        self.plugin = plugin

    def release(self, outcome: Outcome) -> None:
        self.plugin.log.append(f"release {self.plugin.name} {outcome.kind.value}")
        if self.plugin.fail_release:
            raise RuntimeError(self.plugin.name)


class Recorder:
    def __init__(self, name: str, log: list[str], reject: bool = False, fail_release: bool = False,
                 explode: bool = False) -> None:
        self.name, self.log, self.reject, self.fail_release, self.explode = name, log, reject, fail_release, explode

    def admit(self, call: Call) -> Token | Rejection:
        self.log.append(f"admit {self.name}")
        if self.explode:
            raise KeyError(self.name)
        return Rejection(self.name, "no", "overloaded") if self.reject else _Logged(self)


class AsyncRecorder(Recorder):
    async def admit(self, call: Call) -> Token | Rejection:  # type: ignore[override]
        return super().admit(call)


def call() -> Call:
    return Call("http", "/r", "GET", None, 0.0)


def test_a_plan_is_sync_only_when_every_plugin_is() -> None:
    log: list[str] = []
    assert Chain([Recorder("a", log), Recorder("b", log)]).plan("http", "GET", "/r").sync
    assert not Chain([Recorder("a", log), AsyncRecorder("b", log)]).plan("http", "GET", "/r").sync


def test_rejection_unwinds_only_the_plugins_already_admitted() -> None:
    log: list[str] = []
    rejected: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, reject=True), Recorder("c", log)],
                  on_reject=lambda c, rej: rejected.append(rej.plugin))
    result = chain.admit(call(), chain.plan("http", "GET", "/r"))
    assert isinstance(result, Rejection) and result.plugin == "b"
    assert log == ["admit a", "admit b", f"release a {REJECTED.value}"]
    assert rejected == ["b"]


def test_tokens_release_last_first_and_a_failing_release_does_not_skip_the_others() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, fail_release=True), Recorder("c", log)])
    c = call()
    tokens = chain.admit(c, chain.plan("http", "GET", "/r"))
    assert isinstance(tokens, list)
    with pytest.raises(RuntimeError, match="b"):
        chain.unwind(tokens, Outcome(SUCCESS, 200, 0.01, c))
    assert log[3:] == ["release c success", "release b success", "release a success"]


def test_a_plugin_that_raises_unwinds_the_others_as_a_failure() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, explode=True)])
    with pytest.raises(KeyError):
        chain.admit(call(), chain.plan("http", "GET", "/r"))
    assert log == ["admit a", "admit b", f"release a {FAILURE.value}"]


async def test_async_plugins_are_awaited_in_order_and_unwound_the_same_way() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), AsyncRecorder("b", log), AsyncRecorder("c", log, reject=True)])
    result = await chain.admit_async(call(), chain.plan("http", "GET", "/r"))
    assert isinstance(result, Rejection) and result.plugin == "c"
    assert log == ["admit a", "admit b", "admit c", "release b rejected", "release a rejected"]


def test_plans_are_resolved_once_per_route() -> None:
    log: list[str] = []
    asked: list[str] = []
    a, b = Recorder("a", log), Recorder("b", log)

    def resolve(transport: str, method: str, route: str) -> list[Recorder]:
        asked.append(route)
        return [a] if route == "/ops" else [a, b]

    chain = Chain([a, b], resolver=resolve)
    assert chain.plan("http", "GET", "/ops").plugins == (a,)
    assert chain.plan("http", "GET", "/ops") is chain.plan("http", "GET", "/ops")
    assert len(chain.plan("http", "GET", "/r")) == 2
    assert asked == ["/ops", "/r"]
