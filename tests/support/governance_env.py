"""Environment for a meterd under test that sends many calls without valid credentials from one
address on purpose (the authorization matrix, the fuzzers): meterd's default chain with a per-peer
budget for unauthenticated calls high enough that those calls get their 401s, not 429s."""

from __future__ import annotations

import copy
import json

from service.governance_setup import DEFAULT_PLUGINS


def roomy_unauthenticated_budget() -> dict[str, str]:
    plugins = copy.deepcopy(DEFAULT_PLUGINS)
    for p in plugins:
        if p["type"].endswith(":PrincipalKey"):
            p["settings"] = {"unauthenticated_limit": "100000/second"}
    return {"METERD_GOVERNANCE__PLUGINS": json.dumps(plugins)}
