"""Configuration for the profiling library.

A plain pydantic model (not pydantic-settings) so that an application can embed it as a section of
its own settings object and keep one source of truth for environment overrides.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class WatchdogSettings(BaseModel):
    """When the process profiles itself because it is under pressure."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(5.0, gt=0, description="seconds between two samples")
    consecutive: int = Field(3, ge=1, description="samples in a row over a threshold that trigger a capture")
    cpu_threshold: float = Field(0.8, gt=0, description="process CPU as a share of the cores it may use")
    memory_threshold: float = Field(0.8, gt=0, description="process RSS as a share of its memory limit")
    jump_factor: float = Field(
        2.0, gt=1, description="a sample this many times the recent average is a sudden jump"
    )
    jump_window: int = Field(12, ge=2, description="samples that make up the recent average")
    jump_min_ratio: float = Field(
        0.5, ge=0, description="a jump counts only when the reading also reaches this ratio"
    )
    cooldown_s: float = Field(900.0, ge=0, description="quiet time after a watchdog trigger")
    memory_limit_bytes: int | None = Field(
        None, gt=0, description="overrides the cgroup / host memory limit used for the memory ratio"
    )
    capture_duration_s: float | None = Field(
        None, gt=0, description="length of a watchdog capture; defaults to the profiling duration_s"
    )


class PyroscopeSettings(BaseModel):
    """Optional upload of folded stacks to a Pyroscope server's /ingest endpoint."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    app_name: str | None = Field(None, description="defaults to '<service_name>.cpu'")
    timeout_s: float = Field(10.0, gt=0)


class ProfilingSettings(BaseModel):
    """The `profiling:` section of an application's configuration."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    service_name: str = "meterd"
    directory: Path | None = Field(
        None, description="defaults to <tempdir>/<service_name>_profile, resolved at each use"
    )
    duration_s: float = Field(60.0, gt=0, description="a capture stops by itself after this long")
    rate_hz: int = Field(100, ge=1, le=10_000)
    include_subprocesses: bool = True
    py_spy_path: str | None = Field(None, description="defaults to py-spy beside sys.executable, then PATH")
    retention_max_files: int = Field(200, ge=1)
    retention_max_bytes: int = Field(512 * 1024 * 1024, ge=1)
    tracemalloc: bool = Field(True, description="allocation-site tracking (tracemalloc) may be used at all")
    tracemalloc_triggers: list[str] = Field(
        default_factory=lambda: ["memory"],
        description=(
            "captures whose trigger is listed trace allocation sites; tracemalloc hooks every "
            "allocation and made allocation-heavy code ~20x slower here (see benchmarks/), so by default "
            "only memory-pressure captures pay it. Others get a cheap memory summary. An API start "
            "can ask for it explicitly."
        ),
    )
    tracemalloc_max_s: float = Field(
        5.0,
        gt=0,
        description="allocation sites are traced for at most this long at a capture's start "
        "(the service runs far slower meanwhile)",
    )
    tracemalloc_top: int = Field(50, ge=1)
    tracemalloc_frames: int = Field(1, ge=1, description="frames kept per allocation; more costs more")
    signal_toggle: bool = Field(True, description="install the SIGTRAP start/stop toggle")
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    pyroscope: PyroscopeSettings = Field(default_factory=PyroscopeSettings)

    @property
    def file_service_name(self) -> str:
        """The service name as it appears in file names ('_' separates the name's fields)."""
        return re.sub(r"[^A-Za-z0-9.-]+", "-", self.service_name).strip("-") or "service"

    def resolve_directory(self) -> Path:
        """Where captures go, computed now so that a changed TMPDIR moves it."""
        if self.directory is not None:
            return Path(self.directory)
        return _temp_root() / f"{self.file_service_name}_profile"

    def resolve_py_spy(self) -> str | None:
        """The py-spy executable to run, or None when there is none."""
        if self.py_spy_path:
            path = Path(self.py_spy_path)
            return str(path) if path.is_file() and os.access(path, os.X_OK) else None
        beside = Path(sys.executable).parent / "py-spy"
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        return shutil.which("py-spy")


def _temp_root() -> Path:
    # tempfile.gettempdir() caches its answer for the life of the process; read the same
    # variables it reads, in the same order, so a TMPDIR set later still counts.
    for var in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(var)
        if value and os.path.isdir(value) and os.access(value, os.W_OK | os.X_OK):
            return Path(value)
    return Path(tempfile.gettempdir())
