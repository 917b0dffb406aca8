"""Load signals for the adaptive limiter: CPU of the process's own cgroup, and event-loop lag.

Kept apart from the limiter's decision logic so tests can feed that logic fake values.

CPU: a container's budget is its cgroup quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), not the host's
cores, so when a quota exists the cgroup's own usage (v2 `cpu.stat` usage_usec, v1
`cpuacct.usage`) is compared with it. Independently, one CPython event loop can use at most about one
core (the GIL), so the process's own CPU time is compared with min(1, quota, usable cores). The
signal is the larger of the two ratios: either saturation starves the loop.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class CgroupCpu:
    """Cumulative CPU seconds and quota (in cores) of this process's cgroup, v2 or v1."""

    def __init__(self, proc_cgroup: str = "/proc/self/cgroup", fs_root: str = "/sys/fs/cgroup") -> None:
        self.version: int | None = None
        self._usage_file: Path | None = None
        self.quota_cores: float | None = None
        root = Path(fs_root)
        lines = (_read(Path(proc_cgroup)) or "").splitlines()
        v2_path = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
        v1 = {}
        for ln in lines:
            parts = ln.split(":", 2)
            if len(parts) == 3 and parts[1]:
                for ctrl in parts[1].split(","):
                    v1[ctrl] = parts[2]
        if "cpuacct" in v1 or "cpu" in v1:
            self._init_v1(root, v1)
        if self._usage_file is None and v2_path is not None:
            self._init_v2(root, v2_path)

    def _init_v2(self, root: Path, rel: str) -> None:
        for base in (root, root / "unified"):
            d = base / rel.lstrip("/")
            if (d / "cpu.stat").exists():
                self.version, self._usage_file = 2, d / "cpu.stat"
                fields = (_read(d / "cpu.max") or "").split()  # "<quota|max> <period>"
                if len(fields) == 2 and fields[0] != "max":
                    self.quota_cores = int(fields[0]) / int(fields[1])
                return

    def _init_v1(self, root: Path, v1: dict[str, str]) -> None:
        for name in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
            d = root / name / v1.get("cpuacct", v1.get("cpu", "/")).lstrip("/")
            if (d / "cpuacct.usage").exists():
                self.version, self._usage_file = 1, d / "cpuacct.usage"
                break
        for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            d = root / name / v1.get("cpu", v1.get("cpuacct", "/")).lstrip("/")
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota and period:
                if int(quota) > 0 and int(period) > 0:
                    self.quota_cores = int(quota) / int(period)
                break

    def usage_seconds(self) -> float | None:
        if self._usage_file is None:
            return None
        raw = _read(self._usage_file)
        if raw is None:
            return None
        if self.version == 1:
            return int(raw) / 1e9
        for ln in raw.splitlines():
            if ln.startswith("usage_usec "):
                return int(ln.split()[1]) / 1e6
        return None


def usable_cores() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


class CpuSignal:
    """Returns CPU utilisation (0..1, may exceed 1 briefly) since the previous call."""

    def __init__(self, cgroup: CgroupCpu | None = None, cores: float | None = None,
                 process_time: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup = cgroup if cgroup is not None else CgroupCpu()
        quota = self.cgroup.quota_cores
        budget = min(usable_cores(), quota) if quota else usable_cores()
        # One CPython interpreter runs Python code on about one core at a time (GIL); free-threaded
        # builds can use the whole budget.
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        self.process_cores = cores if cores is not None else (min(1.0, budget) if gil else budget)
        self._process_time, self._clock = process_time, clock
        self._last_t = clock()
        self._last_proc = process_time()
        self._last_cg = self.cgroup.usage_seconds() if quota else None

    def peek(self) -> float:
        """This process's utilisation since the last sample(), without starting a new interval.

        For decisions taken while the loop is too busy to run the sampler: a batch that has kept the
        loop for half a second shows here, not in the samples taken before it began."""
        dt = self._clock() - self._last_t
        return self._process_share(self._process_time(), dt) if dt > 0 else 0.0

    def _process_share(self, proc: float, dt: float) -> float:
        return (proc - self._last_proc) / (dt * self.process_cores)

    def sample(self) -> float:
        now, proc = self._clock(), self._process_time()
        dt = now - self._last_t
        if dt <= 0:
            return 0.0
        ratio = self._process_share(proc, dt)
        self._last_t, self._last_proc = now, proc
        if self._last_cg is not None and self.cgroup.quota_cores:
            cg = self.cgroup.usage_seconds()
            if cg is not None:
                ratio = max(ratio, (cg - self._last_cg) / (dt * self.cgroup.quota_cores))
                self._last_cg = cg
        return ratio
