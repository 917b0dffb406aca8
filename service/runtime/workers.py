"""How many writer processes `meterd up` runs, and the shared gRPC port they accept on.

`auto` is the CPU the process may actually use: its affinity mask, capped by a cgroup quota (a
container limited to 2 CPUs on a 64-core host gets 2), via governance's cgroup reader.
"""

from __future__ import annotations

import math
import socket

from governance.signals import CgroupCpu, usable_cores
from service.runtime.datadir import StartupError


def auto_workers() -> int:
    cores = usable_cores()
    quota = CgroupCpu().quota_cores
    if quota:
        cores = min(cores, quota)
    return max(1, math.floor(cores))


def parse_workers(value: str) -> int:
    """`auto` or a positive integer, else one line naming the flag and env var."""
    if value.strip().lower() == "auto":
        return auto_workers()
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise StartupError(f"--workers {value!r}: use auto or a number from 1 to 256 (env METERD_WORKERS)")
    return count


def reserve_shared_port(host: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket on host:port (port 0: one the kernel picks).

    It keeps the port ours while writer children come and go (a restarted writer binds it again),
    and receives no connections itself: the kernel spreads them over the listening sockets only.
    Writer processes of the same user bind the same port with SO_REUSEPORT (gRPC sets it on Linux).
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock
