"""A one-shot stack dump of every thread, when py-spy's own dump is not available.

py-spy dump sees native threads and sub-processes; this fallback only sees this interpreter's
Python threads, but it needs no permissions and does not write to a file descriptor behind our
back the way faulthandler does.
"""

from __future__ import annotations

import sys
import threading
import traceback
from datetime import UTC, datetime


def python_thread_dump(reason: str) -> str:
    names = {t.ident: t for t in threading.enumerate()}
    lines = [
        f"# Python-level thread dump at {datetime.now(UTC).isoformat()} (fallback: {reason})",
        "",
    ]
    for ident, frame in sorted(sys._current_frames().items()):
        thread = names.get(ident)
        label = thread.name if thread else "unknown"
        daemon = " daemon" if thread is not None and thread.daemon else ""
        lines.append(f"Thread {ident} ({label}{daemon})")
        # Innermost call first, like py-spy dump.
        for entry in reversed(traceback.extract_stack(frame)):
            lines.append(f"    {entry.name} ({entry.filename}:{entry.lineno})")
        lines.append("")
    return "\n".join(lines)
