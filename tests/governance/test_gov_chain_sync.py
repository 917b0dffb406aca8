"""The chain's coroutine-free path for plans whose plugins are all synchronous."""

from __future__ import annotations

import pytest

from governance.core import REJECTED, SUCCESS, Call, Chain, Outcome, Rejection


class Recorder:
    def __init__(self, name: str, log: list[str], reject: bool = False, fail_after: bool = False) -> None:
        self.name, self.log, self.reject, self.fail_after = name, log, reject, fail_after

    def before_sync(self, call: Call) -> None:
        self.log.append(f"before {self.name}")
        if self.reject:
            raise Rejection(self.name, "no", "overloaded")

    def after_sync(self, call: Call, outcome: Outcome) -> None:
        self.log.append(f"after {self.name} {outcome.kind}")
        if self.fail_after:
            raise RuntimeError(self.name)

    async def before(self, call: Call) -> None:
        self.before_sync(call)

    async def after(self, call: Call, outcome: Outcome) -> None:
        self.after_sync(call, outcome)


class AsyncOnly:
    name = "async"

    async def before(self, call: Call) -> None:
        return None

    async def after(self, call: Call, outcome: Outcome) -> None:
        return None


def call() -> Call:
    return Call("http", "/r", "GET", None, 0.0)


def test_a_plan_is_sync_only_when_every_plugin_is() -> None:
    log: list[str] = []
    assert Chain([Recorder("a", log), Recorder("b", log)]).plan("http", "GET", "/r").sync
    assert not Chain([Recorder("a", log), AsyncOnly()]).plan("http", "GET", "/r").sync


def test_rejection_unwinds_only_the_plugins_already_admitted() -> None:
    log: list[str] = []
    rejected: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, reject=True), Recorder("c", log)],
                  on_reject=lambda c, rej: rejected.append(rej.plugin))
    plan = chain.plan("http", "GET", "/r")
    with pytest.raises(Rejection):
        chain.admit_sync(call(), plan)
    assert log == ["before a", "before b", f"after a {REJECTED}"]
    assert rejected == ["b"]


def test_a_failing_after_does_not_skip_the_others_and_is_raised() -> None:
    log: list[str] = []
    chain = Chain([Recorder("a", log), Recorder("b", log, fail_after=True), Recorder("c", log)])
    plan = chain.plan("http", "GET", "/r")
    c = call()
    chain.admit_sync(c, plan)
    with pytest.raises(RuntimeError, match="b"):
        chain.release_sync(c, plan, Outcome(SUCCESS, 200, 0.01))
    assert log[3:] == [f"after c {SUCCESS}", f"after b {SUCCESS}", f"after a {SUCCESS}"]


class RouteBound(Recorder):
    """Offers hooks bound to one route, except for routes it does not specialise (None)."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, log)
        self.binds: list[tuple[str, str, str]] = []

    def bind_sync(self, transport: str, method: str, route: str) -> tuple[object, object] | None:
        self.binds.append((transport, method, route))
        if route == "/plain":
            return None
        return (lambda c: self.log.append(f"bound before {route}"),
                lambda c, o: self.log.append(f"bound after {route} {o.kind}"))


def test_plans_use_route_bound_hooks_bound_once_per_plan() -> None:
    log: list[str] = []
    bound = RouteBound("b", log)
    chain = Chain([Recorder("a", log), bound])
    for _ in range(2):  # the second call reuses the cached plan: no second bind
        plan = chain.plan("grpc", "unary", "/s.S/M")
        c = call()
        chain.admit_sync(c, plan)
        chain.release_sync(c, plan, Outcome(SUCCESS, "OK", 0.01))
    assert bound.binds == [("grpc", "unary", "/s.S/M")]
    assert log[:4] == ["before a", "bound before /s.S/M", f"bound after /s.S/M {SUCCESS}", f"after a {SUCCESS}"]
    log.clear()
    plain = chain.plan("http", "GET", "/plain")  # bind_sync said None: the plugin's plain hooks
    c = call()
    chain.admit_sync(c, plain)
    chain.release_sync(c, plain, Outcome(SUCCESS, 200, 0.01))
    assert log == ["before a", "before b", f"after b {SUCCESS}", f"after a {SUCCESS}"]


class Refuser(Recorder):
    """Refuses by returning one shared Rejection (what the adaptive limiter does under overload)."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name, log)
        self.refusal = Rejection(name, "full", "overloaded", 2.0, [("x-why", "full")])

    def before_sync(self, call: Call) -> Rejection | None:  # type: ignore[override]
        self.log.append(f"before {self.name}")
        return self.refusal

    async def before(self, call: Call) -> None:
        raise AssertionError("the chain calls before_sync")


def test_a_returned_refusal_unwinds_like_a_raised_one_and_raises_nothing() -> None:
    log: list[str] = []
    outcomes: list[Outcome] = []
    rejected: list[Rejection] = []

    class Watch(Recorder):
        def after_sync(self, call: Call, outcome: Outcome) -> None:
            outcomes.append(outcome)
            super().after_sync(call, outcome)

    refuser = Refuser("r", log)
    chain = Chain([Watch("a", log), refuser, Recorder("c", log)], on_reject=lambda c, rej: rejected.append(rej))
    plan = chain.plan("http", "GET", "/r")
    assert chain.try_admit_sync(call(), plan) is refuser.refusal  # handed back, no exception
    assert log == ["before a", "before r", f"after a {REJECTED}"]
    assert outcomes[0].status == 503 and rejected == [refuser.refusal]
    # the raising variant raises a copy: same decision, never the shared instance
    with pytest.raises(Rejection) as raised:
        chain.admit_sync(call(), plan)
    assert raised.value is not refuser.refusal
    assert (raised.value.plugin, raised.value.reason, raised.value.status, raised.value.retry_after,
            raised.value.headers) == ("r", "full", "overloaded", 2.0, [("x-why", "full")])
    assert refuser.refusal.__traceback__ is None  # never raised, so nothing accumulates on it


async def test_a_returned_refusal_in_a_mixed_plan_is_raised_as_a_copy() -> None:
    log: list[str] = []
    refuser = Refuser("r", log)
    chain = Chain([Recorder("a", log), AsyncOnly(), refuser])
    plan = chain.plan("grpc", "unary", "/s.S/M")
    assert not plan.sync
    for _ in range(3):
        with pytest.raises(Rejection) as raised:
            await chain.admit(call(), plan)
        assert raised.value is not refuser.refusal and raised.value.reason == "full"
    assert log.count(f"after a {REJECTED}") == 3
    assert refuser.refusal.__traceback__ is None


def test_a_before_hook_returning_anything_but_a_rejection_admits() -> None:
    # Before hooks used to have their return value ignored; only a Rejection means "refused".
    log: list[str] = []

    class Chatty(Recorder):
        def before_sync(self, call: Call) -> object:  # type: ignore[override]
            super().before_sync(call)
            return True

    chain = Chain([Chatty("a", log), Recorder("b", log)])
    plan = chain.plan("http", "GET", "/r")
    assert chain.try_admit_sync(call(), plan) is None
    assert log == ["before a", "before b"]


class EarlyRefuser(Recorder):
    """A plugin with the early hook (the adaptive limiter's kind): refuses before the call starts."""

    def __init__(self, name: str, log: list[str], refuse: bool = True) -> None:
        super().__init__(name, log)
        self.refuse = refuse

    def refuse_early(self) -> Rejection | None:
        self.log.append(f"early {self.name}")
        return Rejection(self.name, "queueing", "overloaded", 2.0) if self.refuse else None


def test_an_early_refusal_is_accounted_like_one_in_before() -> None:
    log: list[str] = []
    rejected: list[str] = []
    chain = Chain([Recorder("a", log), EarlyRefuser("e", log), Recorder("c", log)],
                  on_reject=lambda c, rej: rejected.append(rej.plugin))
    plan = chain.plan("http", "GET", "/r")
    assert plan.early is not None and plan.early[0] == 1
    refusal = plan.early[1]()
    assert refusal is not None
    got = chain.refuse_early(call(), plan, refusal)
    assert got is refusal
    # the plugin ahead sees the call admitted and then REJECTED; the refuser and the ones after it
    # see nothing (as when a before refuses); the refusal is counted once
    assert log == ["early e", "before a", f"after a {REJECTED}"]
    assert rejected == ["e"]


def test_a_plugin_ahead_of_the_early_one_refusing_first_wins() -> None:
    log: list[str] = []
    rejected: list[str] = []
    chain = Chain([Recorder("a", log, reject=True), EarlyRefuser("e", log)],
                  on_reject=lambda c, rej: rejected.append(rej.plugin))
    plan = chain.plan("http", "GET", "/r")
    got = chain.refuse_early(call(), plan, plan.early[1]())  # type: ignore[index]
    assert got.plugin == "a" and rejected == ["a"]
    assert log == ["early e", "before a"]  # a refused in its own before: its after is not run


def test_no_early_hook_behind_an_async_plugin() -> None:
    # the plugins ahead are run and unwound synchronously for an early refusal, so they must be sync
    log: list[str] = []
    assert Chain([AsyncOnly(), EarlyRefuser("e", log)]).plan("http", "GET", "/r").early is None
    plan = Chain([EarlyRefuser("e", log), AsyncOnly()]).plan("http", "GET", "/r")
    assert plan.early is not None and not plan.sync  # what follows it does not matter
    assert Chain([Recorder("a", log)]).plan("http", "GET", "/r").early is None
