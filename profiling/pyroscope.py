"""Optional upload of a capture's folded stacks to a Pyroscope server (its /ingest endpoint)."""

from __future__ import annotations

from datetime import datetime

import httpx


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
            content=folded,
            headers={"Content-Type": "text/plain"},
        )
        response.raise_for_status()
