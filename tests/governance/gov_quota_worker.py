"""One OS process of the shared-quota test: serves N requests through the governed ASGI app against
a real Redis and prints how many were admitted, as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from prometheus_client import CollectorRegistry

from governance import Governance
from tests.governance.gov_helpers import client_for, header_key, make_starlette


async def main(storage: str, limit: str, n: int, start_at: float) -> None:
    cfg = {"plugins": [{"type": "quota", "limit": limit, "storage": storage}]}
    gov = Governance.from_config(cfg, registry=CollectorRegistry())
    async with client_for(gov.asgi(make_starlette(), client_key=header_key)) as http:
        await http.get("/hello", headers={"x-api-key": "warmup"})  # connect before the race starts
        await asyncio.sleep(max(0.0, start_at - time.time()))
        replies = await asyncio.gather(*(http.get("/hello", headers={"x-api-key": "shared"}) for _ in range(n)))
    codes = [r.status_code for r in replies]
    print(json.dumps({"ok": codes.count(200), "limited": codes.count(429), "other": len(codes) - codes.count(200)
                      - codes.count(429)}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
