"""Typed errors. Each one carries a short `reason` (a metric label) and a `fix` a person can act on."""

from __future__ import annotations

_PTRACE_FIX = (
    "py-spy needs permission to read this process's memory: run the service as root, or set "
    "kernel.yama.ptrace_scope to 0 or 1 (sysctl -w kernel.yama.ptrace_scope=1), and in a container "
    "add the SYS_PTRACE capability (docker: `cap_add: [SYS_PTRACE]`, "
    "kubernetes: securityContext.capabilities.add: [SYS_PTRACE])"
)


class ProfilingError(Exception):
    """Base class; `str(err)` is one line that says what happened and how to fix it."""

    reason = "error"
    http_status = 500

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)


class ProfilingDisabled(ProfilingError):
    reason = "disabled"
    http_status = 503


class CaptureAlreadyRunning(ProfilingError):
    reason = "already_running"
    http_status = 409


class NoCaptureRunning(ProfilingError):
    reason = "not_running"
    http_status = 409


class PySpyUnavailable(ProfilingError):
    """py-spy cannot be used at all: the service keeps serving without captures."""

    reason = "py_spy_failed"
    http_status = 503


class PySpyNotFound(PySpyUnavailable):
    reason = "py_spy_missing"

    def __init__(self, searched: str) -> None:
        super().__init__(
            f"py-spy executable not found ({searched})",
            "install py-spy into the service's environment (`pip install py-spy`) or point "
            "profiling.py_spy_path at the executable",
        )


class PySpyPermissionDenied(PySpyUnavailable):
    reason = "permission_denied"

    def __init__(self, pid: int, detail: str) -> None:
        super().__init__(f"py-spy may not attach to pid {pid} ({detail})", _PTRACE_FIX)


class PySpyFailed(PySpyUnavailable):
    reason = "py_spy_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"py-spy failed: {detail}",
            "check that py-spy supports this Python version (`py-spy --version`, upgrade with "
            "`pip install -U py-spy`) and read the capture's meta file for py-spy's output",
        )


class CaptureWriteFailed(ProfilingError):
    reason = "write_failed"
    http_status = 503


class UnsafeDirectory(ProfilingError):
    reason = "unsafe_directory"
    http_status = 503


PERMISSION_MARKERS = ("permission denied", "operation not permitted")


def classify_py_spy_failure(pid: int, stderr: str) -> PySpyUnavailable:
    """Turn py-spy's own error output into the typed error that tells the fix."""
    text = " ".join(stderr.split())
    lowered = text.lower()
    if any(marker in lowered for marker in PERMISSION_MARKERS):
        return PySpyPermissionDenied(pid, text[:300])
    return PySpyFailed(text[:300] or "exited without output")
