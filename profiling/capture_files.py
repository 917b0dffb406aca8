"""What a capture leaves behind, done outside the capture's lifecycle (capture.py): thread dumps,
the flamegraph next to the folded stacks, py-spy's summary line, the upload to Pyroscope."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import psutil

from . import pyroscope, pyspy
from .errors import ProfilingError, PySpyFailed, PySpyNotFound, PySpyPermissionDenied
from .flamegraph import render_svg, sample_count
from .info import CaptureInfo
from .metrics import ProfilingMetrics
from .settings import ProfilingSettings
from .store import CaptureStore
from .threads import python_thread_dump

log = logging.getLogger("profiling")


async def thread_dump(executable: str, pid: int, subprocesses: bool) -> str:
    """py-spy's dump of the process (and its Python children); a plain Python dump if py-spy fails."""
    try:
        text = await pyspy.dump(executable, pid)
    except (PySpyPermissionDenied, PySpyNotFound):
        raise  # recording would fail the same way: report it now
    except (PySpyFailed, OSError) as exc:
        return python_thread_dump(f"py-spy dump failed: {exc}")
    if not subprocesses:
        return text
    parts = [text]
    for child in await asyncio.to_thread(python_children, pid):
        try:
            parts.append(await pyspy.dump(executable, child))
        except (ProfilingError, OSError) as exc:
            parts.append(f"# child process {child}: no dump ({exc})\n")
    return "\n".join(parts)


async def upload(settings: ProfilingSettings, metrics: ProfilingMetrics, info: CaptureInfo, folded: bytes) -> None:
    """Sends a finished capture's stacks to Pyroscope; a failure is counted and logged, never raised."""
    app_name = settings.pyroscope.app_name or f"{settings.file_service_name}.cpu"
    assert info.stopped_at is not None and settings.pyroscope.url
    try:
        await pyroscope.upload_folded(
            settings.pyroscope.url,
            app_name,
            folded,
            start=info.started_at,
            stop=info.stopped_at,
            rate_hz=settings.rate_hz,
            timeout_s=settings.pyroscope.timeout_s,
        )
    except Exception as exc:  # an unreachable Pyroscope must never hurt the service
        metrics.failures.labels("upload_failed").inc()
        log.warning("profiling capture %s: upload to Pyroscope failed: %s", info.id, exc)
    else:
        log.info("profiling capture %s uploaded to Pyroscope as %s", info.id, app_name)


def render_files(
    store: CaptureStore, capture_id: str, folded_path: Path, title: str, subtitle: str
) -> tuple[bytes | None, int | None]:
    """(folded bytes, samples) after writing the flamegraph; (None, None) when py-spy wrote nothing."""
    if not folded_path.exists():
        return None, None
    os.chmod(folded_path, 0o600)
    folded = folded_path.read_bytes()
    text = folded.decode(errors="replace")
    store.write_text(capture_id, "flamegraph", render_svg(text, title, subtitle))
    return folded, sample_count(text)


def py_spy_summary(output: str) -> str | None:
    """py-spy's closing line, e.g. "Samples: 991 Errors: 3" (errors are samples it had to drop)."""
    for line in reversed(output.splitlines()):
        if "Samples:" in line:
            return "Samples:" + line.split("Samples:", 1)[1].rstrip()
    return None


def python_children(pid: int, limit: int = 16) -> list[int]:
    """Worker processes worth dumping: our descendants, minus py-spy helpers."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if "py-spy" in child.name():
                continue
        except psutil.Error:
            continue
        found.append(child.pid)
    return found[:limit]


def log_failure(task: asyncio.Task[CaptureInfo]) -> None:
    # Finishing can run with nobody awaiting it (timer, py-spy exit): never lose its error.
    if not task.cancelled() and task.exception() is not None:
        log.error("profiling capture could not be finished: %s", task.exception())


def log_finished(final: CaptureInfo, store: CaptureStore, reason: str) -> None:
    """One line per finished capture naming its files (INFO when completed, ERROR when failed)."""
    paths = {kind: str(store.directory / name) for kind, name in final.files.items()}
    level = logging.INFO if final.status == "completed" else logging.ERROR
    log.log(
        level,
        "profiling capture %s %s (trigger %s, %s, %.1f s, %s samples): %s",
        final.id, final.status, final.trigger, reason, final.duration_s or 0.0, final.samples,
        " ".join(f"{kind}={path}" for kind, path in paths.items()),
        extra={"capture_id": final.id, "capture_trigger": final.trigger, "capture_status": final.status,
               "capture_files": paths, "capture_error": final.error},
    )
