"""psutil readings of this process (and its children) and of the host, as ratios of their limits.

Blocking calls (psutil, /sys reads): run `sample()` in a worker thread, never on the event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import cgroup


@dataclass(frozen=True)
class Sample:
    cpu_ratio: float  # process CPU / CPUs it may use
    memory_ratio: float  # process RSS / its memory limit
    host_cpu_ratio: float
    host_memory_ratio: float
    rss_bytes: int = 0
    memory_limit_bytes: int = 0
    usable_cpus: float = 1.0


class Sampler:
    def __init__(
        self,
        *,
        pid: int | None = None,
        include_children: bool = True,
        memory_limit_bytes: int | None = None,
        cgroup_root: Path = cgroup.CGROUP_ROOT,
        proc_cgroup: Path = cgroup.PROC_SELF_CGROUP,
    ) -> None:
        self._process = psutil.Process(os.getpid() if pid is None else pid)
        self._include_children = include_children
        self._override = memory_limit_bytes
        self._root = cgroup_root
        self._proc_cgroup = proc_cgroup
        self._children: dict[int, psutil.Process] = {}
        # cpu_percent(None) measures since the previous call: prime the counters now.
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def _child_processes(self) -> list[psutil.Process]:
        if not self._include_children:
            return []
        try:
            current = {c.pid: c for c in self._process.children(recursive=True)}
        except psutil.Error:
            return []
        # Keep the same Process objects between samples: their cpu_percent needs the last reading.
        for pid in list(self._children):
            if pid not in current:
                del self._children[pid]
        for pid, child in current.items():
            if pid not in self._children:
                self._children[pid] = child
                try:
                    child.cpu_percent(None)
                except psutil.Error:
                    pass
        return list(self._children.values())

    def sample(self) -> Sample:
        cpu_percent = self._process.cpu_percent(None)
        rss = self._process.memory_info().rss
        for child in self._child_processes():
            try:
                cpu_percent += child.cpu_percent(None)
                rss += child.memory_info().rss
            except psutil.Error:
                continue  # it exited between listing and reading
        cpus = cgroup.usable_cpus(self._root, self._proc_cgroup)
        host = psutil.virtual_memory()
        limit = cgroup.effective_memory_limit(self._override, host.total, self._root, self._proc_cgroup)
        return Sample(
            cpu_ratio=cpu_percent / 100.0 / cpus,
            memory_ratio=rss / limit,
            host_cpu_ratio=psutil.cpu_percent(None) / 100.0,
            host_memory_ratio=host.percent / 100.0,
            rss_bytes=rss,
            memory_limit_bytes=limit,
            usable_cpus=cpus,
        )
