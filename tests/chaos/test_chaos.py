"""Issues 6 and 17, chaos: nothing acknowledged is lost or counted twice while every part of the
pipeline fails and the consumer group rebalances.

Separate `meterd api`, `meterd writer` and two `meterd consumer` processes run against a durable
Tansu broker (S3 storage on a local moto server, see tests/support/broker.py) and a PostgreSQL of the
test's own. Several gRPC clients ingest steadily; each retries UNAVAILABLE / DEADLINE_EXCEEDED with
the SAME batch_id until acknowledged, and some send a batch again after its ack. Meanwhile, in turn:
one consumer is SIGKILLed and restarted, a third consumer joins the group, the writer is SIGKILLed
and restarted, the broker is SIGKILLed and restarted, the third consumer leaves (SIGTERM), PostgreSQL
is SIGKILLed (whole process group) and restarted after a few seconds. Every join, leave and kill
moves partitions between consumers.

Asserted: after every fault all three roles answer /readyz 200 within READY_BOUND_S (30 s); every
batch is eventually acknowledged (an outage must be answered UNAVAILABLE, which clients retry; any
other status, e.g. UNKNOWN from an unmapped database error, fails the test); at the end the usage
stored per account equals the sum of the acknowledged batches exactly (both tables are printed).

`make test` runs a 60-s version; the long run: `.venv/bin/pytest -m chaos tests/chaos -s`
(METERD_CHAOS_SECONDS, default 120; METERD_CHAOS_FAULTS=postgres etc. injects a subset, to narrow a
failure down). Role logs are kept
under the test's tmp dir (path printed at the end).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.broker import TansuBroker, running_durable_tansu
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, free_port, meterd_env
from tests.support.servers import PostgresServer, running_postgres
from tests.support.usage import Totals, add_records, iso, stored_usage, totals_table

CHAOS_SECONDS = float(os.environ.get("METERD_CHAOS_SECONDS", "120"))
SHORT_SECONDS = 60.0  # the version in `make test`
# Which faults to inject, in turn (a subset narrows down a failure)
FAULTS = tuple(os.environ.get("METERD_CHAOS_FAULTS", "consumer,join,writer,broker,leave,postgres").split(","))
CONSUMERS = ("consumer-a", "consumer-b")  # always running; "consumer-c" joins and leaves
CLIENTS = 4
ACCOUNTS = 6
RECORDS_PER_BATCH = 100
CLIENT_PAUSE_S = 0.05  # between a client's batches: steady, not saturating (the broker is S3-backed)
POST_ACK_RETRY = 0.1  # share of acknowledged batches sent again (the ack "was lost")
FAULT_GAP_S = 4.0  # steady ingestion between one fault's recovery and the next fault
PG_DOWN_S = 4.0
BROKER_DOWN_S = 1.0
READY_BOUND_S = 30.0  # every role's /readyz is 200 again within this after a fault ends
DRAIN_BOUND_S = 120.0  # in-flight batches acknowledged after ingestion stops
CONVERGE_BOUND_S = 180.0  # stored usage catches up with the acknowledged totals...
STALL_S = 30.0  # ...and a stored total that has not moved for this long is not going to
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 1000)]



@dataclass
class Ledger:
    """What the clients were told: acknowledged batches (by batch_id, so each counts once)."""

    acked: dict[str, Totals] = field(default_factory=dict)
    records: int = 0
    attempts: int = 0
    retried: Counter[str] = field(default_factory=Counter)  # status code -> retries
    retry_reasons: Counter[str] = field(default_factory=Counter)  # "CODE: details" -> retries
    rejected: list[str] = field(default_factory=list)  # non-retryable answers (a batch not acknowledged)
    answered_duplicate: int = 0
    ack_times: list[float] = field(default_factory=list)  # monotonic time of each first ack
    post_ack_resends: int = 0
    post_ack_duplicate: int = 0

    def expected(self) -> Totals:
        out: Totals = {}
        for per_account in self.acked.values():
            for acc, row in per_account.items():
                tot = out.setdefault(acc, [0, 0, 0])
                for i in range(3):
                    tot[i] += row[i]
        return out


@dataclass
class Cluster:
    """The three role processes; a killed role is restarted with the same env (same ports)."""

    tmp: Path
    env: dict[str, str]
    procs: dict[str, MeterdProc] = field(default_factory=dict)
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)
    generation: Counter[str] = field(default_factory=Counter)

    def start(self, role: str) -> MeterdProc:
        env = self.role_env.setdefault(role, {**self.env, "METERD_ADMIN__PORT": str(free_port())})
        for attempt in range(3):
            proc = MeterdProc([role.split("-")[0]], env, self.tmp)
            try:
                proc.start(timeout=90)
                break
            except RuntimeError:
                self._save(role, proc)
                if attempt == 2 or "address already in use" not in proc.output().lower():
                    raise
                # Another test took our port while the role was down: move the role.
                env.update({"METERD_ADMIN__PORT": str(free_port()), "METERD_HTTP__PORT": str(free_port()),
                            "METERD_GRPC__PORT": str(free_port())})
        self.procs[role] = proc
        return proc

    def kill(self, role: str) -> None:
        proc = self.procs[role]
        proc.kill()
        self._save(role, proc)

    def leave(self, role: str) -> None:
        """A graceful stop (SIGTERM): the consumer flushes, then leaves the group."""
        proc = self.procs.pop(role)
        code = proc.stop(60)
        self._save(role, proc)
        assert code == 0, f"{role} exited {code} on SIGTERM"

    def _save(self, role: str, proc: MeterdProc) -> None:
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        self.generation[role] += 1
        (logs / f"{role}-{self.generation[role]}.log").write_text(proc.output())

    def save_all(self) -> Path:
        for role, proc in self.procs.items():
            self._save(role, proc)
        return self.tmp / "logs"

    def ready_urls(self) -> dict[str, str]:
        urls = {"api": f"{self.procs['api'].http}/readyz"}
        urls.update({role: f"{proc.admin}/readyz" for role, proc in self.procs.items() if role != "api"})
        return urls

    @property
    def grpc_target(self) -> str:
        target = self.procs["writer"].grpc
        assert target is not None
        return target


def _not_ready(urls: dict[str, str]) -> list[str]:
    bad = []
    for role, url in urls.items():
        try:
            if httpx.get(url, timeout=2).status_code != 200:
                bad.append(role)
        except httpx.HTTPError:
            bad.append(role)
    return bad


async def _wait_ready(cluster: Cluster, since: float) -> float:
    """Seconds from `since` until every role answers /readyz 200; AssertionError past READY_BOUND_S."""
    while True:
        bad = await asyncio.to_thread(_not_ready, cluster.ready_urls())
        elapsed = time.monotonic() - since
        if not bad:
            return elapsed
        if elapsed > READY_BOUND_S:
            raise AssertionError(f"roles {bad} not ready {elapsed:.1f} s after the fault ended "
                                 f"(bound {READY_BOUND_S} s)")
        await asyncio.sleep(0.2)


def _batch(rng: random.Random, batch_id: str, accounts: list[str], node: str) -> tuple[traffic_pb2.WriteRequest,
                                                                                       Totals]:
    now_ms = int(time.time() * 1000)
    req = traffic_pb2.WriteRequest(batch_id=batch_id)
    for _ in range(RECORDS_PER_BATCH):
        req.records.add(account_id=rng.choice(accounts), node_id=node,
                        timestamp_ms=now_ms - rng.randrange(0, 600_000),
                        bytes_in=rng.randrange(0, 10_000), bytes_out=rng.randrange(0, 50_000),
                        requests=rng.randrange(1, 20))
    totals: Totals = {}
    add_records(totals, req.records)
    return req, totals


class Client:
    """One edge node: writes batches until told to stop, retrying each until it is acknowledged."""

    def __init__(self, n: int, cluster: Cluster, accounts: list[str], ledger: Ledger, stop: asyncio.Event) -> None:
        self.n, self.cluster, self.accounts, self.ledger, self.stop = n, cluster, accounts, ledger, stop
        self.rng = random.Random(1000 + n)
        self._target = ""
        self._channel: grpc.aio.Channel | None = None
        self._stub: traffic_pb2_grpc.TrafficWriterStub | None = None

    def _stub_now(self) -> traffic_pb2_grpc.TrafficWriterStub:
        target = self.cluster.grpc_target
        if target != self._target or self._stub is None:  # the writer moved ports after a restart
            if self._channel is not None:
                asyncio.ensure_future(self._channel.close())
            self._target = target
            self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            self._stub = traffic_pb2_grpc.TrafficWriterStub(self._channel)
        return self._stub

    async def write_until_acked(self, req: traffic_pb2.WriteRequest,
                                deadline: float) -> traffic_pb2.WriteResponse | None:
        md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        while True:
            self.ledger.attempts += 1
            try:
                return await self._stub_now().Write(req, metadata=md, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE:
                    self.ledger.rejected.append(f"{req.batch_id}: {exc.code().name} {exc.details()}")
                    return None
                self.ledger.retried[exc.code().name] += 1
                self.ledger.retry_reasons[f"{exc.code().name}: {(exc.details() or '')[:90]}"] += 1
            if time.monotonic() > deadline:
                self.ledger.rejected.append(f"{req.batch_id}: still not acknowledged at the drain deadline")
                return None
            await asyncio.sleep(0.2 + self.rng.random() * 0.3)

    async def run(self, drain_deadline: list[float]) -> None:
        b = 0
        try:
            while not self.stop.is_set():
                req, totals = _batch(self.rng, f"chaos-c{self.n}-b{b}", self.accounts, f"edge-{self.n}")
                b += 1
                resp = await self.write_until_acked(req, deadline=drain_deadline[0])
                if resp is not None:
                    assert resp.accepted == RECORDS_PER_BATCH, resp
                    self.ledger.acked[req.batch_id] = totals
                    self.ledger.ack_times.append(time.monotonic())
                    self.ledger.records += RECORDS_PER_BATCH
                    self.ledger.answered_duplicate += resp.duplicate
                    if self.rng.random() < POST_ACK_RETRY:
                        again = await self.write_until_acked(req, deadline=drain_deadline[0])
                        self.ledger.post_ack_resends += 1
                        if again is not None:
                            assert again.accepted == RECORDS_PER_BATCH, again
                            self.ledger.post_ack_duplicate += again.duplicate
                await asyncio.sleep(CLIENT_PAUSE_S)
        finally:
            if self._channel is not None:
                await self._channel.close()


@dataclass
class FaultLog:
    events: list[tuple[str, float, float]] = field(default_factory=list)  # kind, fault seconds, ready seconds
    ended: list[float] = field(default_factory=list)  # monotonic time each fault ended

    def summary(self, ack_times: list[float]) -> str:
        kinds = Counter(k for k, _, _ in self.events)
        worst = max((r for _, _, r in self.events), default=0.0)
        # Informational: how long after each fault the first new batch was acknowledged.
        resumed: dict[str, list[float]] = {}
        for (kind, _, _), end in zip(self.events, self.ended, strict=True):
            first = next((t for t in ack_times if t > end), None)
            resumed.setdefault(kind, []).append(first - end if first is not None else float("inf"))
        return (f"{len(self.events)} faults ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}); "
                f"slowest recovery to all-ready {worst:.1f} s (bound {READY_BOUND_S:.0f} s); first ack after "
                "fault ended, worst per kind: " + ", ".join(f"{k} {max(v):.1f} s" for k, v in sorted(resumed.items())))


async def _inject(kind: str, cluster: Cluster, broker: TansuBroker, pg: PostgresServer, n: int) -> None:
    if kind in ("consumer", "writer"):
        role = CONSUMERS[n % len(CONSUMERS)] if kind == "consumer" else kind
        cluster.kill(role)  # SIGKILL: no drain, whatever it held in memory is gone
        await asyncio.to_thread(cluster.start, role)
    elif kind == "join":
        await asyncio.to_thread(cluster.start, "consumer-c")
    elif kind == "leave":
        if "consumer-c" in cluster.procs:
            await asyncio.to_thread(cluster.leave, "consumer-c")
    elif kind == "broker":
        broker.kill()
        await asyncio.sleep(BROKER_DOWN_S)
        await asyncio.to_thread(broker.start)
    elif kind == "postgres":
        pg.kill()  # the whole server process group: connections drop, crash recovery on start
        await asyncio.sleep(PG_DOWN_S)
        await asyncio.to_thread(pg.start)
    else:  # pragma: no cover
        raise ValueError(kind)


@pytest.mark.chaos
@pytest.mark.timeout(int(CHAOS_SECONDS) + 900)
async def test_chaos_acknowledged_usage_survives_kills_and_outages(tmp_path: Path) -> None:
    await _chaos(tmp_path, CHAOS_SECONDS)


@pytest.mark.timeout(int(SHORT_SECONDS) + 600)
async def test_chaos_short(tmp_path: Path) -> None:
    """The same run for 60 s, in `make test`: every fault kind, and rebalances, once."""
    await _chaos(tmp_path, SHORT_SECONDS)


async def _chaos(tmp_path: Path, seconds: float) -> None:
    with running_postgres(database="meterd_chaos") as pg, running_durable_tansu(tmp_path) as broker:
        env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap,
                         METERD_DATABASE__URL=pg.url, METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.5",
                         METERD_KAFKA__REQUEST_TIMEOUT_MS="5000")
        cluster = Cluster(tmp_path, env)
        try:
            await _run(cluster, broker, pg, seconds)
        finally:
            for proc in cluster.procs.values():
                proc.kill()
            print(f"\nrole logs: {cluster.save_all()}")


async def _run(cluster: Cluster, broker: TansuBroker, pg: PostgresServer, seconds: float) -> None:
    for role in ("api", "writer", *CONSUMERS):
        await asyncio.to_thread(cluster.start, role)
    with cluster.procs["api"].client() as http:
        accounts = [http.post("/v1/accounts", json={"name": f"chaos-{i}"}).json()["id"] for i in range(ACCOUNTS)]
    t0 = time.time()
    ledger, faults, stop = Ledger(), FaultLog(), asyncio.Event()
    drain_deadline = [float("inf")]
    clients = [Client(n, cluster, accounts, ledger, stop) for n in range(CLIENTS)]
    tasks = [asyncio.create_task(c.run(drain_deadline)) for c in clients]

    kinds = FAULTS
    end = time.monotonic() + seconds
    try:
        i = 0
        # Until the time is up, and at least once through every kind of fault however short the run.
        while time.monotonic() + FAULT_GAP_S < end or i < len(kinds):
            await asyncio.sleep(FAULT_GAP_S)
            kind = kinds[i % len(kinds)]
            i += 1
            started = time.monotonic()
            await _inject(kind, cluster, broker, pg, i)
            fault_ended = time.monotonic()
            ready = await _wait_ready(cluster, fault_ended)
            faults.events.append((kind, fault_ended - started, ready))
            faults.ended.append(fault_ended)
            print(f"[{time.monotonic() - end + seconds:6.1f} s] {kind}: fault {fault_ended - started:.1f} s, "
                  f"all roles ready {ready:.2f} s later; acked so far {len(ledger.acked)} batches", flush=True)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    finally:
        stop.set()
        drain_deadline[0] = time.monotonic() + DRAIN_BOUND_S
        await asyncio.gather(*tasks, return_exceptions=False)

    final_ready = await _wait_ready(cluster, time.monotonic())
    expected = ledger.expected()
    start, stop_at = iso(t0 - 3600), iso(time.time() + 3600)

    deadline = time.monotonic() + CONVERGE_BOUND_S
    stored = await asyncio.to_thread(stored_usage, cluster.procs["api"].http, accounts, start, stop_at)
    moved = time.monotonic()
    while stored != expected and time.monotonic() < deadline and time.monotonic() - moved < STALL_S:
        await asyncio.sleep(1.0)
        before, stored = stored, await asyncio.to_thread(stored_usage, cluster.procs["api"].http, accounts,
                                                         start, stop_at)
        if stored != before:
            moved = time.monotonic()
    await asyncio.sleep(3.0)  # and it stays equal: nothing is applied a second time later
    stored = await asyncio.to_thread(stored_usage, cluster.procs["api"].http, accounts, start, stop_at)

    print(f"\nchaos run: {seconds:.0f} s, {CLIENTS} clients, {len(ledger.acked)} batches / {ledger.records} "
          f"records acknowledged, {ledger.attempts} write attempts, retries {dict(ledger.retried)}, "
          f"{ledger.answered_duplicate} first acks answered duplicate, {ledger.post_ack_resends} resent after ack "
          f"({ledger.post_ack_duplicate} answered duplicate), {len(ledger.rejected)} rejected")
    print(faults.summary(ledger.ack_times) + f"; all ready {final_ready:.2f} s after ingestion stopped")
    print("retry reasons: " + "; ".join(f"{n} x {r}" for r, n in ledger.retry_reasons.most_common(8)))
    print(totals_table(expected, stored))
    problems = []
    if stored != expected:
        problems.append("stored usage differs from the acknowledged totals (stored > acked: double count; "
                        "stored < acked: loss)")
    if ledger.rejected:
        problems.append(f"{len(ledger.rejected)} batches refused with a non-retryable status or never "
                        f"acknowledged, e.g. {ledger.rejected[:5]}")
    assert set(expected) == set(accounts), "every account should have received traffic"
    assert not problems, "\n".join(problems)
