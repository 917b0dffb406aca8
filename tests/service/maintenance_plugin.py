"""A user-written governance plugin, loaded by dotted path from meterd's config in the tests.

It rejects every call while a flag file exists (a maintenance switch), naming its own instance in
the reason so a test can prove that one instance governs both HTTP and gRPC.
"""

from __future__ import annotations

import os
from typing import Any

from governance import Call, Outcome, Rejection


class MaintenanceSwitch:
    name = "maintenance"

    def __init__(self, flag_path: str, exempt_prefixes: list[str] | None = None) -> None:
        self.flag_path = flag_path
        self.exempt = tuple(exempt_prefixes or ("/metrics", "/healthz", "/readyz"))

    async def before(self, call: Call) -> None:
        if call.route.startswith(self.exempt):
            return
        if os.path.exists(self.flag_path):  # noqa: ASYNC240 - one stat(), cheaper than a thread hop
            raise Rejection(self.name, f"maintenance window (plugin instance {id(self):x})", "unavailable",
                            retry_after=7)

    async def after(self, call: Call, outcome: Outcome) -> Any:
        return None
