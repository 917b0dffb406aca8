"""Issue 4 acceptance 1 on the real service: `kill -TRAP <pid>` on a loaded `meterd up` has a
capture running within a second, a second TRAP stops it, and the files hold meterd's own frames."""

from __future__ import annotations

import json
import signal
import stat
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.meterd import ADMIN_TOKEN, meterd_env, running_meterd, wait_until


def _load(m, account: str, worker: int, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    with grpc.insecure_channel(m.grpc) as ch, httpx.Client(base_url=m.http, headers=dict(md)) as c:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        n = 0
        while not stop.is_set():
            n += 1
            req = traffic_pb2.WriteRequest(batch_id=f"load-{worker}-{n}")
            for i in range(200):
                req.records.add(account_id=account, node_id="edge", timestamp_ms=int(time.time() * 1000),
                                bytes_in=i, bytes_out=i, requests=1)
            stub.Write(req, metadata=md, timeout=10)
            c.get(f"/v1/accounts/{account}/usage")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigtrap_toggles_a_capture_of_the_loaded_service(tmp_path: Path, workers: str) -> None:
    """With --workers 2 the pid is the supervisor's, and its capture (--subprocesses) holds the
    writer processes' and the API process's frames; the API's /debug/profiles lists it."""
    with running_meterd(tmp_path, "up", env=meterd_env(tmp_path, METERD_WORKERS=workers)) as m, m.client() as c:
        acc = c.post("/v1/accounts", json={"name": "profiled"}).json()["id"]
        stop = threading.Event()
        workers = [threading.Thread(target=_load, args=(m, acc, i, stop), daemon=True) for i in range(2)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)
            m.signal(signal.SIGTRAP)
            sent = time.monotonic()

            def running() -> dict | None:
                captures = c.get("/debug/profiles/index.json").json()["captures"]
                return next((x for x in captures if x["status"] == "running"), None)

            capture = wait_until(running, timeout=5, interval=0.05, message="a running capture")
            started_within = time.monotonic() - sent
            assert started_within < 1.0, f"capture running only {started_within:.2f} s after SIGTRAP"
            assert capture["trigger"] == "signal"
            time.sleep(3.0)  # sample the loaded service
            m.signal(signal.SIGTRAP)

            def completed() -> dict | None:
                captures = c.get("/debug/profiles/index.json").json()["captures"]
                return next((x for x in captures if x["id"] == capture["id"] and x["status"] != "running"), None)

            done = wait_until(completed, timeout=20, interval=0.2, message="the capture to stop")
        finally:
            stop.set()
            for w in workers:
                w.join(10)
    assert done["status"] == "completed", done
    directory = tmp_path / "meterd_profile"  # <TMPDIR>/<service>_profile
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = {p.name.rsplit("_", 1)[1]: p for p in directory.iterdir() if p.name.startswith(capture["id"])}
    assert {"folded.txt", "flamegraph.svg", "threads.txt", "alloc.txt", "meta.json"} <= set(files), sorted(files)
    for path in files.values():
        assert path.stat().st_size > 0, path
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
    assert str(m.pid) in files["meta.json"].name
    folded = files["folded.txt"].read_text()
    # meterd's own request handling, not just the event loop: the write path and the usage query.
    assert "service/ingest/writer.py" in folded or "service/grpc_writer.py" in folded, folded[:2000]
    assert "service/api/usage.py" in folded, folded[:2000]
    assert "<svg" in files["flamegraph.svg"].read_text()[:500]
    meta = json.loads(files["meta.json"].read_text())
    assert meta["trigger"] == "signal"
