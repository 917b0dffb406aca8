"""A flood of made-up API keys: POST /v1/traffic with a fresh random `mk_` token per request, paced
at --rate per second for --seconds, over --connections keep-alive connections from --source.
Prints a JSON summary (requests sent, statuses). Run by auth_flood.py in a process of its own."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import secrets
import time

BODY = b'{"batch_id":"flood","records":[]}'


async def _conn(host: str, port: int, source: str, interval: float, until: float,
                statuses: collections.Counter[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    next_at = time.monotonic()
    while (now := time.monotonic()) < until:
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
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
    a = ap.parse_args()
    statuses: collections.Counter[int] = collections.Counter()
    start = time.monotonic()
    until = start + a.seconds
    await asyncio.gather(*(_conn(a.host, a.port, a.source, a.connections / a.rate, until, statuses)
                           for _ in range(a.connections)))
    took = time.monotonic() - start
    print(json.dumps({"sent": sum(statuses.values()), "seconds": round(took, 2),
                      "rate": round(sum(statuses.values()) / took), "statuses": dict(statuses)}))


if __name__ == "__main__":
    asyncio.run(main())
