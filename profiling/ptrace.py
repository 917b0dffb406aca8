"""Let a py-spy child read this process under Yama ptrace_scope=1.

With scope 1 only an ancestor may attach, and py-spy is our child, not our ancestor. The tracee
(us) can name one allowed tracer with prctl(PR_SET_PTRACER). We allow any tracer for the short
moment between spawning py-spy and learning its pid, then narrow it to that pid while it is the
only py-spy running (a dump and a record can overlap: then "any" stays), and clear it when the
last one ends. Without Yama the call fails with EINVAL, which is harmless.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

log = logging.getLogger("profiling")

PR_SET_PTRACER = 0x59616D61  # "Yama"
PR_SET_PTRACER_ANY = ctypes.c_ulong(-1).value  # (unsigned long)-1
_CLEAR = 0

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    result = _libc.prctl(
        ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
    )
    if result != 0:
        log.debug("prctl(PR_SET_PTRACER, %#x) failed: errno %d", arg, ctypes.get_errno())
        return False
    return True


def allow_any_tracer() -> bool:
    return _prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY)


def allow_tracer(pid: int) -> bool:
    return _prctl(PR_SET_PTRACER, pid)


def clear_tracer() -> bool:
    return _prctl(PR_SET_PTRACER, _CLEAR)


_holders: set[int] = set()
_guard = threading.Lock()


def before_spawn() -> None:
    """Call right before starting a py-spy child."""
    with _guard:
        allow_any_tracer()


def spawned(pid: int) -> None:
    """The child is running: narrow the grant to it unless another py-spy still needs it."""
    with _guard:
        _holders.add(pid)
        if len(_holders) == 1:
            allow_tracer(pid)


def released(pid: int | None) -> None:
    """A py-spy child ended (or never started, pid None)."""
    with _guard:
        if pid is not None:
            _holders.discard(pid)
        if not _holders:
            clear_tracer()
        elif len(_holders) == 1:
            allow_tracer(next(iter(_holders)))
