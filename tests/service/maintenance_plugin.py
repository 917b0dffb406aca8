"""A user-written governance plugin, loaded by dotted path from meterd's config in the tests.

It rejects every call while a flag file exists (a maintenance switch), naming its own instance in
the reason so a test can prove that one instance governs both HTTP and gRPC.
"""

from __future__ import annotations

import os

from governance import NOOP, Call, Rejection, Token


class MaintenanceSwitch:
    name = "maintenance"

    def __init__(self, flag_path: str, exempt_prefixes: list[str] | None = None) -> None:
        self.flag_path = flag_path
        self.exempt = tuple(exempt_prefixes or ("/metrics", "/healthz", "/readyz"))

    def admit(self, call: Call) -> Token | Rejection:
        if not call.route.startswith(self.exempt) and os.path.exists(self.flag_path):  # one stat()
            return Rejection(self.name, f"maintenance window (plugin instance {id(self):x})", "unavailable",
                             retry_after=7)
        return NOOP
