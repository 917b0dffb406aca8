"""cgroup limit discovery against fake /sys/fs/cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiling import cgroup


def tree(tmp_path: Path, files: dict[str, str], proc: str) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    proc_file = tmp_path / "proc_self_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


def test_v2_quota_and_memory_in_own_cgroup(tmp_path):
    root, proc = tree(
        tmp_path,
        {
            "cgroup.controllers": "cpu memory",
            "cpu.max": "max 100000\n",
            "memory.max": "max\n",
            "system.slice/app.service/cpu.max": "150000 100000\n",
            "system.slice/app.service/memory.max": "536870912\n",
        },
        "0::/system.slice/app.service\n",
    )
    assert cgroup.cpu_quota(root, proc) == pytest.approx(1.5)
    assert cgroup.memory_limit(root, proc) == 512 * 1024 * 1024
    assert cgroup.usable_cpus(root, proc, affinity=8) == pytest.approx(1.5)
    assert cgroup.usable_cpus(root, proc, affinity=1) == pytest.approx(1.0)  # affinity is smaller


def test_v2_namespaced_root_without_limits(tmp_path):
    # In a container the own cgroup is the mount root and /proc/self/cgroup says "0::/".
    root, proc = tree(tmp_path, {"cgroup.controllers": "cpu", "cpu.max": "max 100000", "memory.max": "max"}, "0::/\n")
    assert cgroup.cpu_quota(root, proc) is None
    assert cgroup.memory_limit(root, proc) is None
    assert cgroup.usable_cpus(root, proc, affinity=4) == 4.0
    assert cgroup.effective_memory_limit(None, 8 << 30, root, proc) == 8 << 30


def test_v1_limits_with_path_missing_falls_back_to_mount_root(tmp_path):
    root, proc = tree(
        tmp_path,
        {
            "cpu/cpu.cfs_quota_us": "50000",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": str(256 * 1024 * 1024),
        },
        "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n",
    )
    assert cgroup.cpu_quota(root, proc) == pytest.approx(0.5)
    assert cgroup.memory_limit(root, proc) == 256 * 1024 * 1024
    assert cgroup.effective_memory_limit(None, 8 << 30, root, proc) == 256 * 1024 * 1024


def test_v1_unlimited_and_override(tmp_path):
    root, proc = tree(
        tmp_path,
        {
            "cpu/cpu.cfs_quota_us": "-1",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": "9223372036854771712",
        },
        "4:memory:/\n1:cpu:/\n",
    )
    assert cgroup.cpu_quota(root, proc) is None
    assert cgroup.memory_limit(root, proc) is None
    assert cgroup.effective_memory_limit(None, 4 << 30, root, proc) == 4 << 30
    assert cgroup.effective_memory_limit(100, 4 << 30, root, proc) == 100


def test_cgroup_limit_above_host_memory_means_host(tmp_path):
    root, proc = tree(tmp_path, {"cgroup.controllers": "", "memory.max": str(64 << 30)}, "0::/\n")
    assert cgroup.effective_memory_limit(None, 8 << 30, root, proc) == 8 << 30


def test_parse_cpu_max():
    assert cgroup.parse_cpu_max("max 100000") is None
    assert cgroup.parse_cpu_max("200000 100000") == 2.0
    assert cgroup.parse_cpu_max("50000") == 0.5


def test_no_cgroup_files_at_all(tmp_path):
    root, proc = tree(tmp_path, {}, "")
    assert cgroup.cpu_quota(root, proc) is None
    assert cgroup.memory_limit(root, proc) is None


def test_sampler_uses_override_and_fake_cgroup(tmp_path):
    from profiling.sampler import Sampler

    root, proc = tree(tmp_path, {"cgroup.controllers": "", "cpu.max": "50000 100000"}, "0::/\n")
    sample = Sampler(memory_limit_bytes=1024 * 1024, cgroup_root=root, proc_cgroup=proc).sample()
    assert sample.usable_cpus == pytest.approx(0.5)
    assert sample.memory_limit_bytes == 1024 * 1024
    assert sample.memory_ratio > 1  # this interpreter holds more than 1 MiB
    assert 0 <= sample.host_memory_ratio <= 1
