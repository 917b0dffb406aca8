"""Issue 23, the soak's hostile arm: one account key writes what a hostile writer can, for a bounded
time, next to a normal account; meterd's memory and data dir stay within the soak's bounds.

Hostile load (closed loop, HOSTILE_WRITERS concurrent gRPC writers, one account key):
- maximum-size batches (ingest.max_batch_records records, each at ingest.max_bytes_per_record in
  and out), every record with its own node id: the account sits at ingest.max_nodes_per_account;
- every other batch brings MAX_RECORDS node ids the account has never used: refused whole
  (INVALID_ARGUMENT), so the node rollups stop growing at the cap.
A normal account writes one small batch every 0.2 s; at the end its stored usage must equal what
it was acknowledged, and the hostile account's requests what it was acknowledged (bytes saturate).

Bounds (as tests/soak/test_soak.py): RSS of meterd with its children under 300 MB and the data dir
under 256 MB at every sample. `make test` runs 45 s; `-m soak` runs METERD_SOAK_SECONDS (600).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from service.pb.meterd.v1 import traffic_pb2
from tests.support.meterd import ADMIN_TOKEN, meterd_env, running_meterd
from tests.support.usage import Totals, add_records, iso, stored_usage

SOAK_SECONDS = float(os.environ.get("METERD_SOAK_SECONDS", "600"))
SHORT_SECONDS = 45.0
MAX_RECORDS = 10_000  # ingest.max_batch_records and ingest.max_nodes_per_account, the defaults
MAX_BYTES = 1 << 44  # ingest.max_bytes_per_record
HOSTILE_WRITERS = 2
SAMPLE_S = 5.0
TOTAL_RSS_MAX = 300 * 1024 * 1024
DATA_DIR_MAX = 256 * 1024 * 1024


def _hostile_batch(account: str, batch_id: str, first_node: int) -> bytes:
    now_ms = int(time.time() * 1000)
    req = traffic_pb2.WriteRequest(batch_id=batch_id)
    for n in range(first_node, first_node + MAX_RECORDS):
        req.records.add(account_id=account, node_id=f"h-{n}", timestamp_ms=now_ms, bytes_in=MAX_BYTES,
                        bytes_out=MAX_BYTES, requests=1)
    return req.SerializeToString()


async def _hostile(channel: grpc.aio.Channel, key: str, account: str, writer: int, stop_at: float,
                   acked: list[int], refused: list[int], errors: list[str]) -> None:
    write = channel.unary_unary("/meterd.v1.TrafficWriter/Write", request_serializer=None,
                                response_deserializer=traffic_pb2.WriteResponse.FromString)
    md = (("authorization", f"Bearer {key}"),)
    i = 0
    while time.monotonic() < stop_at:
        over_cap = i % 2 == 1  # nodes h-10000.. (and beyond) were never admitted
        body = _hostile_batch(account, f"h-{writer}-{i}", MAX_RECORDS * (1 + i) if over_cap else 0)
        try:
            resp = await write(body, metadata=md, timeout=60)
            if over_cap:
                errors.append(f"batch {i} with new nodes past the cap was accepted")
            acked.append(resp.accepted)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and over_cap:
                refused.append(i)
            elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                await asyncio.sleep(1.0)
                continue  # shed: retried with the same batch id
            else:
                errors.append(f"batch {i}: {exc.code().name} {exc.details()}")
        i += 1


async def _normal(api: str, key: str, account: str, stop_at: float, sent: Totals, errors: list[str]) -> None:
    async with httpx.AsyncClient(base_url=api, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        i = 0
        while time.monotonic() < stop_at:
            rec = traffic_pb2.TrafficRecord(account_id=account, node_id="edge-1", timestamp_ms=int(time.time() * 1000),
                                            bytes_in=100 + i, bytes_out=7, requests=1)
            body = {"batch_id": f"n-{i}", "records": [{"account_id": account, "node_id": "edge-1",
                                                       "timestamp_ms": rec.timestamp_ms, "bytes_in": rec.bytes_in,
                                                       "bytes_out": 7, "requests": 1}]}
            r = await http.post("/v1/traffic", json=body)
            if r.status_code == 202:
                add_records(sent, [rec])
                i += 1
            elif r.status_code != 503:
                errors.append(f"normal write {i}: {r.status_code} {r.text[:200]}")
                i += 1
            await asyncio.sleep(0.2)


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _sample(pid: int, data_dir: Path, stop_at: float, peaks: list[tuple[float, int, int]]) -> None:
    proc = psutil.Process(pid)
    start = time.monotonic()
    while True:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += child.memory_info().rss
        disk = _disk(data_dir)
        peaks.append((time.monotonic() - start, total, disk))
        print(f"[{peaks[-1][0]:6.1f} s] rss {total / 2**20:7.1f} MB  disk {disk / 2**20:6.1f} MB", flush=True)
        if time.monotonic() >= stop_at:
            return
        await asyncio.sleep(SAMPLE_S)


async def _run(tmp_path: Path, seconds: float) -> None:
    env = meterd_env(tmp_path, METERD_LOG__LEVEL="WARNING")
    data_dir = Path(env["METERD_DATA_DIR"])
    with running_meterd(tmp_path, "up", env=env) as m, m.client(ADMIN_TOKEN) as admin:
        accounts, keys = [], []
        for name in ("hostile", "normal"):
            acc = admin.post("/v1/accounts", json={"name": name}).json()["id"]
            accounts.append(acc)
            keys.append(admin.post(f"/v1/accounts/{acc}/keys").json()["key"])
        acked: list[int] = []
        refused: list[int] = []
        errors: list[str] = []
        sent: Totals = {}
        samples: list[tuple[float, int, int]] = []
        t_start = time.time()
        stop_at = time.monotonic() + seconds
        opts = [("grpc.max_send_message_length", 16 << 20)]
        async with grpc.aio.insecure_channel(m.grpc, options=opts) as channel:
            await asyncio.gather(
                *(_hostile(channel, keys[0], accounts[0], w, stop_at, acked, refused, errors)
                  for w in range(HOSTILE_WRITERS)),
                _normal(m.http, keys[1], accounts[1], stop_at, sent, errors),
                _sample(m.pid, data_dir, stop_at, samples))
        span = (iso(t_start - 3600), iso(time.time() + 3600))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            stored = stored_usage(m.http, accounts, *span)
            if stored[accounts[1]] == sent[accounts[1]] and stored[accounts[0]][2] == sum(acked):
                break
            await asyncio.sleep(1)
        for _ in range(3):  # the counting after the load is part of the run
            await _sample(m.pid, data_dir, 0, samples)
    peak_rss, peak_disk = max(s[1] for s in samples), max(s[2] for s in samples)
    print(f"hostile soak {seconds:.0f} s: {len(acked)} maximum-size batches acknowledged at the node cap, "
          f"{len(refused)} past it refused; peak RSS {peak_rss / 2**20:.1f} MB, data dir {peak_disk / 2**20:.1f} MB")
    assert not errors, errors[:5]
    assert acked and refused, (acked, refused)
    assert stored[accounts[1]] == sent[accounts[1]], (stored, sent)
    assert stored[accounts[0]][2] == sum(acked), (stored, sum(acked))
    assert peak_rss < TOTAL_RSS_MAX, f"meterd and its children reached {peak_rss / 2**20:.1f} MB RSS (bound 300 MB)"
    assert peak_disk < DATA_DIR_MAX, f"the data dir reached {peak_disk / 2**20:.1f} MB (bound 256 MB)"


@pytest.mark.timeout(int(SHORT_SECONDS) + 400)
async def test_hostile_soak_short(tmp_path: Path) -> None:
    await _run(tmp_path, SHORT_SECONDS)


@pytest.mark.soak
@pytest.mark.timeout(int(SOAK_SECONDS) + 600)
async def test_hostile_soak(tmp_path: Path) -> None:
    await _run(tmp_path, SOAK_SECONDS)
