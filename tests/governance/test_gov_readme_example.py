"""The example plugin in governance/README.md runs as written, through a real chain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from governance import NOOP, Call, Chain, Outcome, OutcomeKind, Rejection

README = Path(__file__).resolve().parents[2] / "governance" / "README.md"


def example() -> dict[str, Any]:
    section = README.read_text().split("## The plugin protocol", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), str(README), "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_the_readme_plugin_admits_refuses_and_releases() -> None:
    plugin = example()["SlowCallLog"](slow=0.0, deny=["mallory"])
    chain = Chain([plugin])
    plan = chain.plan("http", "GET", "/v1/usage")
    call = Call("http", "/v1/usage", "GET", "alice", 0.0)
    tokens = chain.admit(call, plan)
    assert isinstance(tokens, list) and tokens[0] is not NOOP
    chain.unwind(tokens, Outcome(OutcomeKind.SUCCESS, 200, 0.01, call))
    assert plugin.slow_calls == {"/v1/usage": 1}
    refused = chain.admit(Call("http", "/v1/usage", "GET", "mallory", 0.0), plan)
    assert isinstance(refused, Rejection) and refused.reason == "denied"
    ops = chain.admit(Call("http", "/healthz", "GET", "alice", 0.0), chain.plan("http", "GET", "/healthz"))
    assert ops == [NOOP]
