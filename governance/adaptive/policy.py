"""Per-route policy: priority (Google SRE's criticality), latency objective and the static guard rails.

Priorities, most sheddable first: `export` (CSV/NDJSON, long scans), `read` (account reads),
`write` (ingest), `critical` (health, readiness, metrics, profiling: never shed by load). Under
overload a priority may use only its share of the adaptive limit and of the queueing target, so
exports go first, reads next, writes last.
"""

from __future__ import annotations

from typing import Literal

Priority = Literal["critical", "write", "read", "export"]
PRIORITIES: tuple[Priority, ...] = ("critical", "write", "read", "export")

# The share of the adaptive limit (and of the queueing target) a priority may use while shedding.
SHARE: dict[str, float] = {"critical": 1.0, "write": 1.0, "read": 0.5, "export": 0.25}

# Google SRE's criticality: under overload whole priorities are shed in this order. The limiter's
# level says how many are being shed: the last of them is held to the adaptive limit, the ones
# before it are refused outright, the ones after it are not shed by load at all.
SHED_ORDER: tuple[Priority, ...] = ("export", "read", "write")

# The priorities whose in-flight calls count against a call of each priority while shedding: its
# own and every more important one. Writes count only writes; exports count all.
AT_LEAST: dict[str, tuple[Priority, ...]] = {p: PRIORITIES[:i + 1] for i, p in enumerate(PRIORITIES)}

# Admitted latency (queueing ahead of the handler + the handler) a route class promises, seconds.
# Generous on purpose: the objective is "worse than this is useless to the caller", not a target.
# Writes: edge nodes batch and wait; 128 closed-loop writers on a loaded 2-core VM see ~2 s.
DEFAULT_OBJECTIVE: dict[str, float] = {"critical": 1.0, "write": 5.0, "read": 1.0, "export": 10.0}


class RouteGuard:
    """The static floor for one route: in-flight calls and in-flight request bytes, whatever the
    adaptive signals say (Sentinel's system rules), so a misjudging signal cannot let memory run away."""

    __slots__ = ("route", "max_inflight", "max_bytes", "inflight", "bytes")

    def __init__(self, route: str, max_inflight: int, max_bytes: int) -> None:
        self.route, self.max_inflight, self.max_bytes = route, max_inflight, max_bytes
        self.inflight = 0
        self.bytes = 0

    def refuse(self, nbytes: int) -> str | None:
        """The cap this call would break, or None. A lone call larger than the byte cap is still
        admitted (the transport's own message-size limit bounds it); only a pile-up is refused."""
        if self.inflight >= self.max_inflight:
            return "inflight_cap"
        if self.inflight and self.bytes + nbytes > self.max_bytes:
            return "bytes_cap"
        return None

    def enter(self, nbytes: int) -> None:
        self.inflight += 1
        self.bytes += nbytes

    def leave(self, nbytes: int) -> None:
        self.inflight -= 1
        self.bytes -= nbytes
