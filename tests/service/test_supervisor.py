"""`meterd up --workers N` (issue 26): writer processes share the gRPC port under one supervisor.

A writer child SIGKILLed while clients write loses nothing and counts nothing twice (clients retry
UNAVAILABLE with the same batch id, as real ones do, and land on the other writer); a crashed child
is restarted, and the restart is logged and counted on the supervisor's /metrics; one Ctrl-C
(SIGINT to the whole process group, as a terminal sends it) drains every process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import grpc
import httpx
import psutil

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.service.test_durability import MD, _assert_counted, _create_accounts
from tests.support.grpc_write import write_retrying
from tests.support.meterd import MeterdProc, free_port, meterd_env, wait_until
from tests.support.usage import Totals, add_records

CLIENTS = 8


def _up(tmp: Path, workers: str = "2") -> MeterdProc:
    env = meterd_env(tmp, METERD_WORKERS=workers)
    return MeterdProc(["up"], env, tmp).start(timeout=180)


def _children(m: MeterdProc, role: str) -> list[psutil.Process]:
    kids = psutil.Process(m.pid).children()
    return [p for p in kids if "child" in p.cmdline() and role in p.cmdline()]


def _clients_of(proc: psutil.Process, port: int) -> int:
    return sum(1 for c in proc.net_connections("tcp") if c.laddr and c.laddr.port == port and c.raddr)


def _restarts(m: MeterdProc, role: str) -> float:
    text = httpx.get(f"{m.admin}/metrics", timeout=10).text
    found = re.search(rf'^meterd_supervisor_restarts_total{{role="{role}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def _send(grpc_addr: str, accounts: list[str], batches: int, expected: Totals, clients: int = CLIENTS) -> None:
    """Like a real client: UNAVAILABLE is retried with the same batch id. Every batch id is new, so a
    `duplicate` answer means an earlier attempt was made durable and only its ack was lost (the
    killed writer's): the batch counts once either way."""
    now_ms = int(time.time() * 1000)

    async def client(n: int) -> None:
        # A connection each, as separate edge nodes have (gRPC would share one between channels).
        async with grpc.aio.insecure_channel(grpc_addr, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = traffic_pb2_grpc.TrafficWriterStub(channel)
            for i in range(n, batches, clients):
                records = [traffic_pb2.TrafficRecord(account_id=accounts[(i + j) % len(accounts)], node_id="edge-1",
                                                     timestamp_ms=now_ms - j, bytes_in=i + j, bytes_out=2 * j + 1,
                                                     requests=1) for j in range(1000)]
                resp = await write_retrying(stub, traffic_pb2.WriteRequest(batch_id=f"kill-{i}", records=records), MD)
                assert resp.accepted == 1000
                add_records(expected, records)

    await asyncio.gather(*(client(n) for n in range(clients)))


def test_every_process_is_listed_for_scraping_on_loopback(tmp_path: Path) -> None:
    m = _up(tmp_path)
    try:
        assert len(_children(m, "writer")) == 2, m.output()
        targets = json.loads((tmp_path / "data" / "meterd-up-targets.json").read_text())
        roles = sorted(t["labels"]["role"] for t in targets)
        assert roles == ["api", "consumer", "supervisor", "writer", "writer"]
        for entry in targets:
            (target,) = entry["targets"]
            assert target.startswith("127.0.0.1:")
            assert httpx.get(f"http://{target}/metrics", timeout=10).status_code == 200
        pid_file = tmp_path / "data" / "meterd-up.pid"
        assert pid_file.read_text().strip() == str(m.pid)
    finally:
        m.stop(90)


async def test_writer_sigkilled_under_load_counts_exactly(tmp_path: Path) -> None:
    m = _up(tmp_path)
    try:
        accounts = _create_accounts(m)
        expected: Totals = {}
        load = asyncio.create_task(_send(m.grpc or "", accounts, 300, expected))
        while not expected and not load.done():  # the kill lands mid-load, after the first acks
            await asyncio.sleep(0.05)
        assert not load.done(), f"the load ended before the kill: make it longer ({load})"
        port = int((m.grpc or "").rsplit(":", 1)[1])
        victim = max(_children(m, "writer"), key=lambda p: _clients_of(p, port))
        assert _clients_of(victim, port) > 0
        victim.send_signal(signal.SIGKILL)
        await load
        _assert_counted(m, expected, 60)
        assert _restarts(m, "writer") == 1
        assert m.stop(90) == 0, m.output()[-3000:]
    finally:
        m.kill()


def test_crashed_child_is_restarted_and_reported(tmp_path: Path) -> None:
    m = _up(tmp_path)
    try:
        (consumer,) = _children(m, "consumer")
        consumer.send_signal(signal.SIGKILL)
        wait_until(lambda: _restarts(m, "consumer") == 1, 30, message="the restart counted")
        assert re.search(rf"consumer process \(pid {consumer.pid}\) exited with signal 9; restarting", m.output())
        wait_until(lambda: [p.pid for p in _children(m, "consumer")] not in ([], [consumer.pid]), 60,
                   message="a new consumer process")
        wait_until(lambda: httpx.get(f"{m.admin}/readyz", timeout=10).status_code == 200, 120,
                   message="the supervisor ready again")
        assert _restarts(m, "writer") == 0
    finally:
        m.stop(90)


def test_one_ctrl_c_drains_every_process(tmp_path: Path) -> None:
    m = _up(tmp_path)
    children = psutil.Process(m.pid).children()
    assert len(children) == 4
    os.killpg(m.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    assert m.proc is not None and m.proc.wait(90) == 0, m.output()[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)
    assert not (tmp_path / "data" / "meterd-up.pid").exists()
    assert m.output().count("stopped with code") == 0, m.output()[-3000:]


def test_bad_workers_value_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_GRPC__PORT=str(free_port()))
    m = MeterdProc(["up", "--workers", "lots"], env, tmp_path)
    try:
        m.start(timeout=30)
    except RuntimeError:
        pass
    assert m.proc is not None and m.proc.wait(30) == 2
    assert "--workers 'lots': use auto or a number from 1 to 256" in m.output()


def test_children_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    m = _up(tmp_path)
    children = psutil.Process(m.pid).children()
    try:
        m.signal(signal.SIGKILL)  # the supervisor alone: no orphan may keep the port or the database
        _, alive = psutil.wait_procs(children, timeout=90)  # exit codes: not ours to read (not our children)
        assert alive == [], [p.cmdline() for p in alive]
        assert m.output().count("supervisor is gone; draining") == 4, m.output()[-3000:]
    finally:
        for p in children:
            if p.is_running():
                p.kill()


def test_bad_workers_setting_names_the_key_and_env_var(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_WORKERS="0")
    m = MeterdProc(["up"], env, tmp_path)
    try:
        m.start(timeout=30)
    except RuntimeError:
        pass
    assert m.proc is not None and m.proc.wait(30) == 2
    assert "workers" in m.output() and "METERD_WORKERS" in m.output(), m.output()
