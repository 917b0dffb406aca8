"""A flood of made-up API keys: POST /v1/traffic with a fresh random `mk_` token per request, paced
at --rate per second, over --connections keep-alive connections from --source, from --start-at (epoch
seconds) for --seconds; with --slice S it floods only in every other S-second slice (the first one
on), so a client measured meanwhile gets its with- and without-flood samples interleaved.
Prints a JSON summary (requests sent, statuses). Run by auth_flood.py in a process of its own."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import time

BODY = b'{"batch_id":"flood","records":[]}'


def flooding(t: float, start: float, slice_s: float) -> bool:
    """Whether the flood is on at epoch time t (shared with the measuring client)."""
    return t >= start and (slice_s <= 0 or int((t - start) // slice_s) % 2 == 0)


async def _conn(host: str, port: int, source: str, interval: float, start: float, until: float,
                slice_s: float, statuses: collections.Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    next_at = start
    while (now := time.time()) < until:
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        if not flooding(next_at - interval, start, slice_s):
            continue
        head = (f"POST /v1/traffic HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"authorization: Bearer mk_{secrets.token_urlsafe(24)}\r\ncontent-length: {len(BODY)}\r\n\r\n")
        writer.write(head.encode() + BODY)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        statuses[int(status_line.split()[1])] += 1
    writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--start-at", type=float, default=0.0, help="epoch seconds; default now")
    ap.add_argument("--slice", type=float, default=0.0, help="on/off slices of this many seconds; 0: always on")
    a = ap.parse_args()
    statuses: collections.Counter[int] = collections.Counter()
    start = a.start_at or time.time()
    until = start + a.seconds
    await asyncio.gather(*(_conn(a.host, a.port, a.source, a.connections / a.rate, start, until, a.slice, statuses)
                           for _ in range(a.connections)))
    on_seconds = a.seconds if a.slice <= 0 else a.seconds / 2
    print(json.dumps({"sent": sum(statuses.values()), "on_seconds": on_seconds,
                      "rate": round(sum(statuses.values()) / on_seconds), "statuses": dict(statuses)}))


if __name__ == "__main__":
    asyncio.run(main())
