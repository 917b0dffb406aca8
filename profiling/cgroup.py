"""How much CPU and memory this process may use: cgroup v2, cgroup v1, then the host.

Paths are parameters so tests can point them at fake trees. In a container the cgroup namespace
makes our own cgroup the root of /sys/fs/cgroup; on a host it is the path in /proc/self/cgroup.
We look at both, most specific first.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 reports "no limit" as a huge page-aligned number (LONG_MAX rounded down).
_V1_UNLIMITED = 1 << 62


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _membership(proc_cgroup: Path) -> tuple[str | None, dict[str, str]]:
    """(v2 path, {v1 controller: path}) from /proc/self/cgroup."""
    v2: str | None = None
    v1: dict[str, str] = {}
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                v1[controller] = path
    return v2, v1


def _candidates(base: Path, rel: str | None) -> list[Path]:
    dirs = []
    if rel and rel != "/":
        dirs.append(base / rel.lstrip("/"))
    dirs.append(base)
    return dirs


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max: 'max 100000' (no limit) or '<quota> <period>' -> CPUs."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return int(parts[0]) / period if period > 0 else None


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs allowed by the cgroup CPU quota, or None when there is no quota."""
    v2, v1 = _membership(proc_cgroup)
    if (root / "cgroup.controllers").exists():  # unified (v2) hierarchy mounted at root
        for directory in _candidates(root, v2):
            text = _read(directory / "cpu.max")
            if text is not None:
                return parse_cpu_max(text)
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for directory in _candidates(root / name, v1.get("cpu")):
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
            if quota is not None and period is not None:
                q, p = int(quota), int(period)
                return q / p if q > 0 and p > 0 else None
    return None


def memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The cgroup memory limit in bytes, or None when none is set."""
    v2, v1 = _membership(proc_cgroup)
    if (root / "cgroup.controllers").exists():
        for directory in _candidates(root, v2):
            text = _read(directory / "memory.max")
            if text is not None:
                return None if text == "max" else int(text)
    for directory in _candidates(root / "memory", v1.get("memory")):
        text = _read(directory / "memory.limit_in_bytes")
        if text is not None:
            value = int(text)
            return None if value >= _V1_UNLIMITED else value
    return None


def usable_cpus(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP, affinity: int | None = None
) -> float:
    """The CPUs this process may use: the smaller of the cgroup quota and the CPU affinity."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    quota = cpu_quota(root, proc_cgroup)
    return min(float(affinity), quota) if quota else float(affinity)


def effective_memory_limit(
    override: int | None,
    host_total: int,
    root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
) -> int:
    """The setting if given, else the cgroup limit when it is below the host's memory, else the host."""
    if override:
        return override
    limit = memory_limit(root, proc_cgroup)
    if limit and limit < host_total:
        return limit
    return host_total
