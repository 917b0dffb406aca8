"""Optional upload of a capture's folded stacks to a Pyroscope server (its /ingest endpoint)."""

from __future__ import annotations

import re
from datetime import datetime

import httpx

# py-spy --subprocesses roots each stack at `process <pid>:"<command line>"`; a command line can
# carry secrets, and a Pyroscope server is shared, so only the pid leaves the machine.
# Child processes nest under their parent's frame (`process 1;process 2:"..."`), so match the frame
# at the start of a line or after a `;`.
_PROCESS_FRAME = re.compile(rb'(?:^|(?<=;))process (\d+):"(?:[^"\\]|\\.)*"(?=[; ])', re.M)


def redact_process_frames(folded: bytes) -> bytes:
    return _PROCESS_FRAME.sub(rb"process \1", folded)


async def upload_folded(
    url: str,
    app_name: str,
    folded: bytes,
    *,
    start: datetime,
    stop: datetime,
    rate_hz: int,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """POST the stacks in Pyroscope's `folded` format; raises httpx.HTTPError on failure."""
    params = {
        "name": app_name,
        "from": str(int(start.timestamp())),
        "until": str(max(int(stop.timestamp()), int(start.timestamp()) + 1)),
        "format": "folded",
        "sampleRate": str(rate_hz),
        "spyName": "pyspy",
        "units": "samples",
        "aggregationType": "sum",
    }
    async with httpx.AsyncClient(timeout=timeout_s, transport=transport) as client:
        response = await client.post(
            url.rstrip("/") + "/ingest",
            params=params,
            content=redact_process_frames(folded),
            headers={"Content-Type": "text/plain"},
        )
        response.raise_for_status()
