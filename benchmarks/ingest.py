"""Ingestion benchmark: `meterd up` on the database log and on Kafka, their raw ceilings, CPU per stage.

One run on this machine measures, side by side (issue 17, acceptance 5):
  1. `meterd up` with the database log (the default): records/s from the first gRPC write until every
     record is queryable through the usage API (end to end), records/s acknowledged, write-ack
     p50/p99; closed loop, N concurrent writers in a separate client process; meterd's own CPU per
     record (user + system, from /proc) over the same interval;
  2. the same with Kafka: a Tansu broker (tests/support/broker.py) given to meterd through
     METERD_KAFKA__BOOTSTRAP_SERVERS (Tansu's CPU per record is reported too);
  3. the raw ceilings: (a) group-committed SQLite inserts of the same serialized batches into the same
     tables (stdlib sqlite3, WAL, synchronous=FULL, one thread, no asyncio), with and without the
     claim row; (b) aiokafka produce (acks=all) of the same payloads to a fresh Tansu;
  4. CPU microseconds per record for each stage, in this process on the real code (time.process_time
     over many iterations): gRPC request decode, validation, batch encode + digest, log write
     (Ledger.claim with the log append, group commit), log read, dedupe lookup, decode + aggregate,
     flush (Ledger.apply);
  5. an open-loop arm on `meterd up` (database log) at half of arm 1's end-to-end capacity: batches
     sent on a fixed schedule whatever the answers (like tests/soak/test_soak.py), write-ack p50/p99.

Batches are serialized before the clock starts (the client sends bytes), so the client's CPU stays
small next to the server's on this 2-core machine. Usage:
  .venv/bin/python benchmarks/ingest.py [--records 500000] [--concurrency 8] [--open-seconds 20]
  .venv/bin/python benchmarks/ingest.py --sweep [--sweep-records 200000]   # issue 24's closed-loop sweep:
      8/32/128 Write and 32 WriteStream writers, as shipped vs limiter in dry run (benchmarks/ingest_sweep.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:  # run as a script: benchmarks/ is on sys.path
    from ingest_sweep import run_sweep, sweep_client  # noqa: E402
    from machine_info import machine  # noqa: E402
except ImportError:  # imported as benchmarks.<module>
    from benchmarks.ingest_sweep import run_sweep, sweep_client  # noqa: E402
    from benchmarks.machine_info import machine  # noqa: E402

from service.pb.meterd.v1 import pipeline_pb2, traffic_pb2  # noqa: E402
from tests.support.broker import running_tansu  # noqa: E402
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, meterd_env  # noqa: E402

ACCOUNTS = 10
TEMPLATES = 8  # distinct record sets; a request is its batch_id + one of them (protobuf fields merge)
CONNECTIONS = 8  # closed loop: client connections the writers are spread over
SHED_RETRY_S = 0.05  # a shed write is retried this soon with the same batch_id, as an edge node would


# -- load ---------------------------------------------------------------------------------------
def record_templates(accounts: list[str], per_batch: int, now_ms: int) -> list[bytes]:
    """Serialized WriteRequest bodies without batch_id: `requests` is 1 per record, so the stored
    requests total equals the records written."""
    out = []
    for t in range(TEMPLATES):
        req = traffic_pb2.WriteRequest()
        for i in range(per_batch):
            req.records.add(account_id=accounts[(t + i) % len(accounts)], node_id="edge-1",
                            timestamp_ms=now_ms - ((t * per_batch + i) % 600) * 1000,
                            bytes_in=100 + i % 7, bytes_out=900 + i % 11, requests=1)
        out.append(req.SerializeToString())
    return out


def request_bytes(tag: str, i: int, templates: list[bytes]) -> bytes:
    return traffic_pb2.WriteRequest(batch_id=f"{tag}-{i}").SerializeToString() + templates[i % len(templates)]


def _top(details: list[str]) -> str:
    counts: dict[str, int] = {}
    for d in details:
        counts[d] = counts.get(d, 0) + 1
    return "; ".join(f"{n} x '{d[:80]}'" for d, n in sorted(counts.items(), key=lambda kv: -kv[1])[:2])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _retry_after(metadata: object) -> float:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "retry-after":
            with contextlib.suppress(ValueError):
                return min(float(value), 5.0)
    return 0.5


async def _write_with_retry(write: Callable[..., Awaitable[traffic_pb2.WriteResponse]], body: bytes,
                            sheds: list[str], *, honour_retry_after: bool) -> tuple[traffic_pb2.WriteResponse, float]:
    """Returns the answer and the service latency of the acknowledged attempt. A shed write is retried
    with the same batch_id: after the server's retry-after (at most 5 s, as tests/soak does), or after
    SHED_RETRY_S in the closed loop (a client that keeps its writers busy)."""
    import grpc

    md = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    while True:
        sent = time.perf_counter()
        try:
            resp = await write(body, metadata=md, timeout=60)
            return resp, time.perf_counter() - sent
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            sheds.append(exc.details() or "?")
            await asyncio.sleep(_retry_after(exc.trailing_metadata()) if honour_retry_after else SHED_RETRY_S)


async def closed_loop(target: str, bodies: list[bytes], per_batch: int, concurrency: int) -> dict:
    import grpc

    latencies: list[float] = []
    sheds: list[str] = []
    queue = list(reversed(bodies))
    # Several connections, as several edge nodes make: `meterd up`'s writer processes share the port
    # and the kernel gives each connection to one of them (gRPC would share one between channels).
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(min(concurrency, CONNECTIONS))]
    try:
        writes = [ch.unary_unary("/meterd.v1.TrafficWriter/Write", request_serializer=None,
                                 response_deserializer=traffic_pb2.WriteResponse.FromString) for ch in channels]

        async def worker(write: Callable[..., Awaitable[traffic_pb2.WriteResponse]]) -> None:
            while queue:
                body = queue.pop()
                t = time.perf_counter()  # from the first attempt: shed retries included
                resp, _ = await _write_with_retry(write, body, sheds, honour_retry_after=False)
                latencies.append(time.perf_counter() - t)
                assert resp.accepted == per_batch and not resp.duplicate, resp

        t0 = time.time()
        await asyncio.gather(*(worker(writes[i % len(writes)]) for i in range(concurrency)))
        t1 = time.time()
    finally:
        for ch in channels:
            await ch.close()
    return {"t0": t0, "t1": t1, "lat": latencies, "sheds": len(sheds), "shed_why": _top(sheds),
            "sent": len(bodies) * per_batch}


async def open_loop(target: str, tag: str, templates: list[bytes], per_batch: int, rate: float,
                    seconds: float) -> dict:
    """Batches go out on a fixed schedule whatever the answers: a slow server shows as latency."""
    import grpc

    service: list[float] = []  # the acknowledged attempt
    waits: list[float] = []  # from when the batch was due, shed retries included
    sheds: list[str] = []
    lag: list[float] = []  # how late the generator started each batch (must stay small)
    interval = per_batch / rate
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        write = ch.unary_unary("/meterd.v1.TrafficWriter/Write", request_serializer=None,
                               response_deserializer=traffic_pb2.WriteResponse.FromString)

        async def one(i: int, due: float) -> None:
            lag.append(time.perf_counter() - due)
            resp, took = await _write_with_retry(write, request_bytes(tag, i, templates), sheds,
                                                 honour_retry_after=True)
            service.append(took)
            waits.append(time.perf_counter() - due)
            assert resp.accepted == per_batch and not resp.duplicate, resp

        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        t0 = time.time()
        i = 0
        while (due := start + i * interval) < start + seconds:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one(i, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)
        t1 = time.time()
    return {"t0": t0, "t1": t1, "lat": service, "waits": waits, "gen_lag": lag, "sheds": len(sheds),
            "shed_why": _top(sheds), "sent": i * per_batch}


def client_process(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    templates = record_templates(spec["accounts"], spec["per_batch"], int(time.time() * 1000))
    if spec["mode"] == "closed":
        bodies = [request_bytes(spec["tag"], i, templates) for i in range(spec["records"] // spec["per_batch"])]
    if spec["mode"] in ("write", "stream"):  # the --sweep arms (benchmarks/ingest_sweep.py)
        bodies = [request_bytes(spec["tag"], i, templates) for i in range(spec["records"] // spec["per_batch"])]
    out = Path(spec["out"])
    out.with_suffix(".ready").write_text("1")
    while not out.with_suffix(".go").exists():
        time.sleep(0.005)
    if spec["mode"] in ("write", "stream"):
        result = asyncio.run(sweep_client(spec, bodies))
    elif spec["mode"] == "closed":
        result = asyncio.run(closed_loop(spec["target"], bodies, spec["per_batch"], spec["concurrency"]))
    else:
        result = asyncio.run(open_loop(spec["target"], spec["tag"], templates, spec["per_batch"], spec["rate"],
                                       spec["seconds"]))
    out.write_text(json.dumps(result))


# -- meterd arms --------------------------------------------------------------------------------
@dataclass
class ArmResult:
    name: str
    records: int
    ack_s: float
    e2e_s: float
    lat: list[float]
    sheds: int
    meterd_cpu_s: float
    broker_cpu_s: float | None = None
    waits: list[float] = field(default_factory=list)
    gen_lag_p99: float | None = None
    rate: float | None = None
    shed_why: str = ""
    threads: dict[str, float] = field(default_factory=dict)  # meterd CPU seconds by thread name
    processes: dict[str, float] = field(default_factory=dict)  # CPU seconds by meterd process (supervisor, writer-1..)
    server: dict[str, str] = field(default_factory=dict)  # from meterd's own /metrics

    @property
    def ack_rps(self) -> float:
        return self.records / self.ack_s

    @property
    def e2e_rps(self) -> float:
        return self.records / self.e2e_s

    @property
    def cpu_us(self) -> float:
        return self.meterd_cpu_s / self.records * 1e6


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def meterd_processes(pid: int) -> dict[str, psutil.Process]:
    """`meterd up` and, under its supervisor, every child, by slot (`writer-1`, `api`, `consumer`)."""
    root = psutil.Process(pid)
    out = {"meterd": root}
    for child in root.children():
        cmd = child.cmdline()
        if "child" in cmd and "--slot" in cmd:
            out[cmd[cmd.index("--slot") + 1]] = child
    return out


def _tree_cpu(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = _cpu_s(proc)
        except psutil.NoSuchProcess:  # a restarted child: its CPU is gone with it
            out[name] = 0.0
    return out


def _tansu_procs() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "tansu" in p.name()]


def _thread_cpu(proc: psutil.Process) -> dict[str, float]:
    """CPU seconds by thread name (several threads may share one: summed). Python threads (aiosqlite's
    connection threads, executors) keep the process's name, so the main thread is named apart."""
    out: dict[str, float] = {}
    for t in proc.threads():
        try:
            name = Path(f"/proc/{proc.pid}/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue
        if t.id == proc.pid:
            name = "main thread (event loop)"
        elif name == proc.name():
            name = "Python threads (aiosqlite, executors)"
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def _histogram(text: str, name: str, label: str = "") -> dict[str, str]:
    """Count, mean and the bucket bounds holding p50/p99 of one Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or (label and label not in line):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), value))
        elif line.startswith(name + "_sum"):
            total = value
        elif line.startswith(name + "_count"):
            count = value
    if not count:
        return {}

    def bound(q: float) -> str:
        le = next(le for le, c in sorted(buckets) if c >= q * count)
        return "> largest bucket" if le == float("inf") else f"<= {le * 1000:g} ms"

    return {"count": f"{count:.0f}", "mean": f"{total / count * 1000:.1f} ms", "p50": bound(0.5), "p99": bound(0.99)}


def _server_metrics(http: str) -> dict[str, str]:
    text = httpx.get(f"{http}/metrics", timeout=10).text
    out: dict[str, str] = {}
    for key, name, label in (("log append", "meterd_log_append_seconds", ""),
                             ("flush", "meterd_consumer_flush_seconds", "")):
        h = _histogram(text, name, label)
        if h:
            out[key] = f"{h['count']} calls, mean {h['mean']}, p50 {h['p50']}, p99 {h['p99']}"
    for key, name in (("limiter sheds", "governance_adaptive_sheds_total"),
                      ("dry-run sheds", "governance_adaptive_dry_run_sheds_total")):
        out[key] = f"{sum(float(line.rsplit(' ', 1)[1]) for line in text.splitlines() if line.startswith(name)):.0f}"
    return out


def _dry_run_plugins() -> list[dict]:
    """meterd's default chain with the adaptive limiter deciding but never shedding."""
    from service.governance_setup import DEFAULT_PLUGINS

    return [{**p, "dry_run": True} if p["type"] == "adaptive" else p for p in DEFAULT_PLUGINS]


def run_meterd_arm(name: str, tmp: Path, spec: dict, env_extra: dict[str, str], settle_s: float,
                   profile: Path | None = None) -> ArmResult:
    env = meterd_env(tmp, **env_extra)
    proc = MeterdProc(["up"], env, tmp).start()
    try:
        with httpx.Client(base_url=proc.http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
            accounts = [c.post("/v1/accounts", json={"name": f"bench-{i}"}).json()["id"] for i in range(ACCOUNTS)]
            time.sleep(settle_s)  # Kafka: let the consumer group settle before timing
            out = tmp / "client.json"
            spec = {**spec, "target": proc.grpc, "accounts": accounts, "out": str(out)}
            (tmp / "spec.json").write_text(json.dumps(spec))
            child = subprocess.Popen([sys.executable, __file__, "--client", str(tmp / "spec.json")])
            while not out.with_suffix(".ready").exists():
                if child.poll() is not None:
                    raise RuntimeError("client process failed before starting")
                time.sleep(0.01)
            meterd = psutil.Process(proc.pid)
            tree = meterd_processes(proc.pid)
            brokers = _tansu_procs()
            procs0 = _tree_cpu(tree)
            cpu0 = sum(procs0.values())
            threads0 = _thread_cpu(meterd)
            broker0 = sum(_cpu_s(p) for p in brokers)
            spy = None
            if profile is not None:  # diagnostic only: sampling costs meterd some CPU
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(proc.pid),
                                        "-f", "raw", "-r", "200", "--gil", "-o", str(profile)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            out.with_suffix(".go").write_text("1")
            if child.wait() != 0:
                raise RuntimeError(f"{name}: client process failed")
            result = json.loads(out.read_text())

            def stored() -> int:
                return sum(c.get(f"/v1/accounts/{acc}/usage", params={"step": "1d"}).json()["totals"]["requests"]
                           for acc in accounts)

            deadline = time.time() + 300
            while (n := stored()) < result["sent"]:
                if time.time() > deadline:
                    raise RuntimeError(f"{name}: only {n} of {result['sent']} records queryable after 300 s")
                time.sleep(0.05)
            t_queryable = time.time()
            procs1 = _tree_cpu(tree)
            cpu1 = sum(procs1.values())
            threads1 = _thread_cpu(meterd)
            broker1 = sum(_cpu_s(p) for p in brokers)
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its profile and exits
                spy.wait(30)
            server = _server_metrics(proc.http)
            if stored() != result["sent"]:
                raise RuntimeError(f"{name}: stored {stored()} records, sent {result['sent']}")
    finally:
        proc.stop()
    return ArmResult(name, result["sent"], result["t1"] - result["t0"], t_queryable - result["t0"], result["lat"],
                     result["sheds"], cpu1 - cpu0, (broker1 - broker0) if brokers else None,
                     waits=result.get("waits", []),
                     gen_lag_p99=pct(result["gen_lag"], 0.99) if "gen_lag" in result else None,
                     rate=spec.get("rate"), shed_why=result.get("shed_why", ""),
                     threads={k: v - threads0.get(k, 0.0) for k, v in threads1.items()}, server=server,
                     processes={k: v - procs0[k] for k, v in procs1.items()})


# -- raw ceilings -------------------------------------------------------------------------------
@dataclass
class CeilingResult:
    name: str
    records: int
    seconds: float
    lat: list[float]  # per commit / per produce

    @property
    def rps(self) -> float:
        return self.records / self.seconds


def pipeline_payloads(total: int, per_batch: int, tag: str) -> list[tuple[str, bytes, bytes]]:
    """(dedupe key, digest, serialized TrafficBatch) as the writer builds them, for the ceilings."""
    now = int(time.time() * 1000)
    accounts = [f"acc_{i}" for i in range(ACCOUNTS)]
    out = []
    templates = record_templates(accounts, per_batch, now)
    for i in range(total // per_batch):
        req = traffic_pb2.WriteRequest.FromString(request_bytes(tag, i, templates))
        batch = pipeline_pb2.TrafficBatch(records=req.records)
        digest = hashlib.blake2b(batch.SerializeToString(deterministic=True), digest_size=16).digest()
        key = f"admin/{req.batch_id}"
        batch.dedupe_key, batch.batch_id, batch.principal, batch.digest = key, req.batch_id, "admin", digest
        batch.received_at_ms = now
        out.append((key, digest, batch.SerializeToString()))
    return out


def sqlite_ceiling(tmp: Path, payloads: list[tuple[str, bytes, bytes]], per_batch: int, group: int,
                   with_claims: bool) -> CeilingResult:
    """The physical floor under the database log: its tables, its pragmas, one thread, no framework."""
    from sqlalchemy import create_engine

    from service.storage import schema

    path = tmp / f"ceiling-{with_claims}.db"
    engine = create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine, tables=[schema.batches, schema.ingest_log])
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000", "journal_size_limit=67108864"):
        conn.execute(f"PRAGMA {pragma}")
    lat: list[float] = []
    now_s = int(time.time())
    t0 = time.perf_counter()
    for g in range(0, len(payloads), group):
        chunk = payloads[g:g + group]
        t = time.perf_counter()
        conn.execute("BEGIN")
        if with_claims:
            conn.executemany("INSERT INTO batches (dedupe_key, digest, records, claimed_at, applied_at_ms) "
                             "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (dedupe_key) DO NOTHING",
                             [(k, d, per_batch, now_s) for k, d, _ in chunk])
        conn.executemany("INSERT INTO ingest_log (dedupe_key, records, payload, traceparent, appended_at_ms) "
                         "VALUES (?, ?, ?, NULL, ?)", [(k, per_batch, p, now_s * 1000) for k, _, p in chunk])
        conn.execute("COMMIT")
        lat.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    conn.close()
    what = "claim + log row" if with_claims else "log row only"
    return CeilingResult(f"raw SQLite group commit ({what}, {group} batches per commit)",
                         len(payloads) * per_batch, seconds, lat)


async def kafka_ceiling(payloads: list[tuple[str, bytes, bytes]], per_batch: int, concurrency: int) -> CeilingResult:
    from aiokafka import AIOKafkaProducer

    from service.config import KafkaSettings
    from service.pipeline.kafka_log import ensure_topics

    settings = KafkaSettings()
    with running_tansu() as broker:
        await ensure_topics(broker.bootstrap, settings)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=settings.linger_ms,
                                    max_request_size=16 << 20)
        await producer.start()
        try:
            queue = list(reversed(payloads))
            lat: list[float] = []

            async def worker() -> None:
                while queue:
                    key, _, value = queue.pop()
                    t = time.perf_counter()
                    await producer.send_and_wait(settings.topic, value, key=key.encode())
                    lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds = time.perf_counter() - t0
        finally:
            await producer.stop()
    return CeilingResult(f"raw aiokafka produce acks=all to Tansu ({concurrency} concurrent)",
                         len(payloads) * per_batch, seconds, lat)


# -- CPU per stage ------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    what: str
    cpu_s: float = 0.0
    wall_s: float = 0.0
    records: int = 0
    calls: int = 0

    @property
    def us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6

    @contextlib.contextmanager
    def timed(self, records: int) -> Iterator[None]:
        c, w = time.process_time(), time.perf_counter()
        yield
        self.cpu_s += time.process_time() - c
        self.wall_s += time.perf_counter() - w
        self.records += records
        self.calls += 1


async def stage_cpu(tmp: Path, per_batch: int, rounds: int, claim_group: int, read_groups: int) -> list[Stage]:
    """The pipeline's stages on the real code, one batch size, CPU of this whole process (the
    aiosqlite thread included) per record. Each round: `read_groups` group commits of `claim_group`
    batches, then one consumer cycle over them (read, dedupe lookup, decode + aggregate, flush)."""
    from service.config import IngestSettings
    from service.ingest.validate import validate_batch, validate_shape
    from service.pipeline.counting import Aggregate, decode, merged_usage
    from service.storage.db import create_database
    from service.storage.ledger import Claim, Flush, Ledger

    settings = IngestSettings()
    accounts = [f"acc_{i}" for i in range(ACCOUNTS)]
    statuses = {a: "active" for a in accounts}
    templates = record_templates(accounts, per_batch, int(time.time() * 1000))
    s = {k: Stage(k, w) for k, w in [
        ("decode", "gRPC request decode: `WriteRequest.FromString` of the request bytes"),
        ("validate", "validation: account-id set, `validate_shape` + `validate_batch`"),
        ("encode", "batch encode: `TrafficBatch`, blake2b digest of the deterministic bytes, serialize"),
        ("log write", f"log write: `Ledger.claim(append_to_log=True)`, {claim_group} batches per group commit"),
        ("read", f"log read: `Ledger.read_log` of {claim_group * read_groups} rows"),
        ("dedupe", "dedupe lookup: `Ledger.batch_states` of those batch ids"),
        ("aggregate", "decode + aggregate: `counting.decode`, `Aggregate.verdict` + `add`, `merged_usage`"),
        ("flush", "flush: `Ledger.apply` (usage upsert, applied marks, delete of the log rows)"),
    ]}
    db = create_database(f"sqlite+aiosqlite:///{tmp / 'stages.db'}")
    await db.migrate()
    ledger = Ledger(db)
    n = 0
    try:
        for _ in range(rounds):
            for _ in range(read_groups):
                claims = []
                for _ in range(claim_group):
                    body = request_bytes("stage", n, templates)
                    n += 1
                    with s["decode"].timed(per_batch):
                        req = traffic_pb2.WriteRequest.FromString(body)
                    with s["validate"].timed(per_batch):
                        validate_shape(req.batch_id, len(req.records), settings)
                        ids = {r.account_id for r in req.records}
                        validate_batch(req.batch_id, req.records, {a: statuses[a] for a in ids}, settings,
                                       own_account=None)
                    with s["encode"].timed(per_batch):  # the steps of service/ingest/writer.py's _write
                        batch = pipeline_pb2.TrafficBatch(records=req.records)
                        digest = hashlib.blake2b(batch.SerializeToString(deterministic=True), digest_size=16).digest()
                        batch.dedupe_key, batch.batch_id, batch.principal = f"admin/{req.batch_id}", req.batch_id, "admin"
                        batch.received_at_ms, batch.digest = int(time.time() * 1000), digest
                        payload = batch.SerializeToString()
                    claims.append(Claim(batch.dedupe_key, digest, per_batch, payload, None))
                with s["log write"].timed(per_batch * claim_group):
                    results = await ledger.claim(claims, append_to_log=True)
                assert all(r.new for r in results)
            records = per_batch * claim_group * read_groups
            with s["read"].timed(records):
                rows = await ledger.read_log(0, claim_group * read_groups)
            with s["dedupe"].timed(records):  # a row's key is its batch's dedupe_key
                states = await ledger.batch_states(row.key for row in rows)
            with s["aggregate"].timed(records):
                agg = Aggregate()
                for row in rows:
                    batch = decode(row.payload)
                    agg.verdict(batch, states.get(batch.dedupe_key))
                    agg.add(batch)
                usage, _ = merged_usage([agg])
            with s["flush"].timed(records):
                await ledger.apply(Flush(usage=usage, applied=agg.applied, log_seqs=[r.seq for r in rows]))
            assert len(rows) == claim_group * read_groups
    finally:
        await db.close()
    return list(s.values())


# -- report -------------------------------------------------------------------------------------
def _ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in psutil.getloadavg())


def render(args: argparse.Namespace, db: ArmResult, dry: ArmResult, kafka: ArmResult, ceilings: list[CeilingResult],
           open_arm: ArmResult, stages: list[Stage], loads: dict[str, str]) -> str:
    sql_claims, sql_log, kraw = ceilings
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    target_e2e, target_p99 = 150_000, 0.050
    lines = [
        "# Ingestion benchmark (`benchmarks/ingest.py`)", "",
        f"Machine: {machine()}; date: {when}; load average (1/5/15 min) before each arm: "
        + "; ".join(f"{k} {v}" for k, v in loads.items()) + ".", "",
        f"Closed loop: {args.records:,} records per arm in gRPC `Write` batches of {args.batch}, "
        f"{args.concurrency} concurrent calls from a separate client process (requests serialized before the "
        f"clock starts); `meterd up` (api + writer + consumer in one process, SQLite with synchronous=FULL, "
        f"default governance chain). End to end: from the first write until the usage API shows every record "
        f"(polled after the last acknowledgement). Write-ack latency runs from a batch's first attempt, so it "
        f"includes retries of writes the server shed (retried after {SHED_RETRY_S * 1000:.0f} ms with the same "
        f"batch_id). meterd CPU: user + system time of the meterd process over the same interval (end to end), "
        f"per record.", "",
        "| arm | acknowledged records/s | end to end records/s | write-ack p50 | write-ack p99 | shed | "
        "meterd CPU per record | acknowledged / ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| `meterd up`, database log | {db.ack_rps:,.0f} | {db.e2e_rps:,.0f} | {_ms(pct(db.lat, .5))} | "
        f"{_ms(pct(db.lat, .99))} | {db.sheds} | {db.cpu_us:.1f} us | {db.ack_rps / sql_claims.rps:.2f} of (a) |",
        f"| `meterd up`, database log, adaptive limiter in dry run (diagnostic) | {dry.ack_rps:,.0f} | "
        f"{dry.e2e_rps:,.0f} | {_ms(pct(dry.lat, .5))} | {_ms(pct(dry.lat, .99))} | {dry.sheds} | {dry.cpu_us:.1f} us | "
        f"{dry.ack_rps / sql_claims.rps:.2f} of (a) |",
        f"| `meterd up`, Kafka (Tansu, memory storage) | {kafka.ack_rps:,.0f} | {kafka.e2e_rps:,.0f} | "
        f"{_ms(pct(kafka.lat, .5))} | {_ms(pct(kafka.lat, .99))} | {kafka.sheds} | {kafka.cpu_us:.1f} us "
        f"(+ Tansu {(kafka.broker_cpu_s or 0) / kafka.records * 1e6:.1f} us) | {kafka.ack_rps / kraw.rps:.2f} of (c) |",
        f"| ceiling (a): {sql_claims.name} | {sql_claims.rps:,.0f} | | {_ms(pct(sql_claims.lat, .5))} per commit | "
        f"{_ms(pct(sql_claims.lat, .99))} per commit | | | 1.00 |",
        f"| ceiling (b): {sql_log.name} | {sql_log.rps:,.0f} | | {_ms(pct(sql_log.lat, .5))} per commit | "
        f"{_ms(pct(sql_log.lat, .99))} per commit | | | |",
        f"| ceiling (c): {kraw.name} | {kraw.rps:,.0f} | | {_ms(pct(kraw.lat, .5))} | {_ms(pct(kraw.lat, .99))} "
        f"| | | 1.00 |", "",
        f"Target (issue 17): end to end >= {target_e2e:,} records/s on the database log: "
        f"{db.e2e_rps:,.0f} ({db.e2e_rps / target_e2e:.2f} of the target). End to end / acknowledged: "
        f"database log {db.e2e_rps / db.ack_rps:.2f}, Kafka {kafka.e2e_rps / kafka.ack_rps:.2f}. "
        f"The SQLite ceilings commit {args.concurrency} batches per transaction, the most a group can hold with "
        f"{args.concurrency} concurrent writers. The dry-run arm is the same `meterd up` with governance's adaptive "
        f"limiter deciding but never shedding (METERD_GOVERNANCE), to tell the pipeline's rate from what the "
        f"limiter admits under a closed loop.", "",
        "Shed answers (most frequent details): " + "; ".join(
            f"{arm.name}: {arm.shed_why or 'none'}" for arm in (db, dry, kafka)) + ".", "",
        "## Open loop (database log)", "",
        f"Batches of {args.batch} sent every {args.batch / open_arm.rate * 1000:.1f} ms for {args.open_seconds:g} s "
        f"whatever the answers ({open_arm.rate:,.0f} records/s: "
        f"{'set by --open-rate' if args.open_rate else f'half of the {db.e2e_rps:,.0f} measured end to end'}, "
        f"{open_arm.rate / db.e2e_rps:.2f} of it), on a fresh `meterd up`. "
        f"Shed writes are retried after the server's retry-after (at most 5 s), as tests/soak does. Service latency "
        f"(ack p50/p99) is that of the acknowledged attempt; due -> ack includes shed retries. The generator "
        f"started its batches at most {(open_arm.gen_lag_p99 or 0) * 1000:.1f} ms late (p99).", "",
        "| offered records/s | acknowledged records/s | ack p50 | ack p99 | due -> ack p99 | shed | meterd CPU per "
        "record | p99 <= 50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {open_arm.rate:,.0f} | {open_arm.ack_rps:,.0f} | {_ms(pct(open_arm.lat, .5))} | "
        f"{_ms(pct(open_arm.lat, .99))} | {_ms(pct(open_arm.waits, .99))} | {open_arm.sheds} | "
        f"{open_arm.cpu_us:.1f} us | {'yes' if pct(open_arm.lat, .99) <= target_p99 else 'NO'} |", "",
    ]
    if (open_arm.gen_lag_p99 or 0) > 0.010:
        lines += [f"**Disturbed:** the load generator itself started batches up to {open_arm.gen_lag_p99 * 1000:.0f} ms "
                  f"late (p99), so the machine was short of CPU for client and server alike; re-run.", ""]
    lines += ["## Inside meterd during each arm", "",
              "meterd's CPU per record by thread (user + system, from /proc; the threads named alike are summed), "
              "and its own histograms from `/metrics` (bucket bounds, not exact percentiles): the log append is "
              "the writer's claim + append (database log) or claim + produce (Kafka), the flush the consumer's "
              "transaction. meterd runs api, writer and consumer on one event loop; near 100 % busy, that loop is "
              "the bottleneck.", "",
              "| arm | CPU per record by thread | event loop busy (main thread CPU / wall) | log append | "
              "consumer flush |", "|---|---|---:|---|---|"]
    for arm in (db, dry, kafka, open_arm):
        busy = sorted(arm.threads.items(), key=lambda kv: kv[1], reverse=True)
        per = ", ".join(f"{k} {v / arm.records * 1e6:.2f} us" for k, v in busy if v / arm.records * 1e6 >= 0.05)
        loop_busy = arm.threads.get("main thread (event loop)", 0.0) / arm.e2e_s
        lines.append(f"| {arm.name} | {per} | {loop_busy:.0%} | {arm.server.get('log append', '-')} | "
                     f"{arm.server.get('flush', '-')} |")
    lines.append("")
    stage_sum = sum(st.us_per_record for st in stages)
    rest = db.cpu_us - stage_sum
    lines += [
        "## CPU per record by stage (in process, real code)", "",
        f"Each stage timed with `time.process_time` (this process, the aiosqlite thread included) over "
        f"{stages[0].records:,} records ({args.stage_rounds} rounds of {args.stage_groups} group commits of "
        f"{args.stage_claim_group} batches of {args.batch}, each round then read, counted and flushed in one "
        f"consumer cycle), on a temporary SQLite database with meterd's pragmas.", "",
        "| stage | CPU per record | share of the stages | wall per call |", "|---|---:|---:|---:|"]
    for st in stages:
        lines.append(f"| {st.what} | {st.us_per_record:.2f} us | {st.us_per_record / stage_sum:.0%} | "
                     f"{st.wall_s / st.calls * 1000:.2f} ms |")
    lines += [
        f"| **sum of the stages** | **{stage_sum:.2f} us** | 100% | |",
        f"| `meterd up` database-log arm, whole process (measured above) | {db.cpu_us:.2f} us | | |",
        f"| difference: gRPC transport, auth, governance chain, asyncio, metrics, tracing, API polls | "
        f"{rest:.2f} us | | |",
        f"| `meterd up` database log, limiter in dry run (no shed answers), whole process | {dry.cpu_us:.2f} us | | |",
        f"| difference in that arm | {dry.cpu_us - stage_sum:.2f} us | | |", ""]
    ranked = sorted(stages, key=lambda st: st.us_per_record, reverse=True)
    top = ", ".join(f"{st.name} {st.us_per_record:.1f} us ({st.us_per_record / stage_sum:.0%})" for st in ranked[:3])
    write_side = sum(st.us_per_record for st in stages if st.name in ("decode", "validate", "encode", "log write"))
    loop_us = db.threads.get("main thread (event loop)", 0.0) / db.records * 1e6
    loop_busy = db.threads.get("main thread (event loop)", 0.0) / db.e2e_s
    verdict = ("so the single event loop (api, writer and consumer together) is what bounds the end-to-end rate"
               if loop_busy >= 0.85 else
               "so the loop had headroom: the rate was held back by waits, not by the loop's CPU")
    if dry.e2e_rps > 1.1 * db.e2e_rps:
        verdict += (f". The same meterd with the adaptive limiter in dry run reached {dry.e2e_rps:,.0f} records/s end "
                    f"to end ({dry.e2e_rps / db.e2e_rps:.2f}x) at {dry.cpu_us:.1f} us per record: the shipped arm's "
                    f"{db.sheds} shed answers ('adaptive: concurrency' under {args.concurrency} concurrent writers) and "
                    f"their retries cost {db.cpu_us - dry.cpu_us:.1f} us per record and most of the write-ack p99")
    lines += [
        f"Where the CPU goes: the stages sum to {stage_sum:.1f} us per record; the largest are {top}. The writer's "
        f"side (decode, validate, encode, log write) is {write_side:.1f} us, the consumer's "
        f"{stage_sum - write_side:.1f} us, and the SQLite work itself (log write, read, dedupe, flush, "
        f"SQLAlchemy included) only {sum(st.us_per_record for st in stages if st.name in ('log write', 'read', 'dedupe', 'flush')):.1f} us. "
        f"The meterd process spent {db.cpu_us:.1f} us per record in the database-log arm, {loop_us:.1f} us of it "
        f"on the event loop's thread, so {max(rest, 0):.1f} us ({max(rest, 0) / db.cpu_us:.0%}) is outside the "
        f"measured stages: gRPC's Python layer, the governance interceptor (shed answers included), "
        f"asyncio scheduling, metrics and tracing, and the stages running colder than in a tight loop. The event "
        f"loop was busy {loop_busy:.0%} of the end-to-end time, {verdict}. The disk is not the limit: ceiling (a) "
        f"is {sql_claims.rps / db.e2e_rps:.0f}x the end-to-end rate.", ""]
    return "\n".join(lines)


def _scaling(args: argparse.Namespace, spec: dict) -> None:
    try:
        from ingest_scaling import render as render_scaling
        from ingest_scaling import run as run_scaling
    except ImportError:
        from benchmarks.ingest_scaling import render as render_scaling
        from benchmarks.ingest_scaling import run as run_scaling
    workers = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as tmp_s:
        env = {"METERD_GOVERNANCE": json.dumps({"plugins": _dry_run_plugins()})} if args.limiter_dry_run else {}
        report = render_scaling(args, run_scaling(Path(tmp_s), spec, workers, args.rounds, env, args.kafka,
                                                       ROOT / "benchmarks" / "results" if args.profile_writer else None))
    print(report)
    out = ROOT / "benchmarks" / "results" / "ingest-scaling.md"
    out.write_text(out.read_text() + "\n---\n\n" + report if args.append and out.exists() else report)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        client_process(Path(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=500_000, help="records per closed-loop arm and per ceiling")
    ap.add_argument("--batch", type=int, default=1000, help="records per batch")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent writers in the closed loop")
    ap.add_argument("--open-seconds", type=float, default=20.0, help="length of the open-loop arm")
    ap.add_argument("--open-rate", type=float, help="records/s of the open-loop arm (default: half of the "
                    "database-log arm's end-to-end rate)")
    ap.add_argument("--stage-rounds", type=int, default=30, help="consumer cycles in the stage table")
    ap.add_argument("--stage-groups", type=int, default=4, help="group commits per consumer cycle")
    ap.add_argument("--stage-claim-group", type=int, default=16, help="batches per group commit")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.md")
    ap.add_argument("--append", action="store_true", help="append to --out (a second run) instead of replacing it")
    ap.add_argument("--profile", type=Path, help="diagnostic: py-spy raw profile of meterd during the database-log "
                    "arm, written here (sampling slows that arm)")
    ap.add_argument("--sweep", action="store_true", help="only the closed-loop sweep (8/32/128 Write, 32 WriteStream "
                    "writers), as shipped vs limiter in dry run; appended to --out")
    ap.add_argument("--sweep-records", type=int, default=200_000, help="records per sweep arm (at least 3 "
                    "batches per writer)")
    ap.add_argument("--workers", help="only the scaling arms: `meterd up --workers N` for each N of this "
                    "comma-separated list (e.g. 1,2), side by side; written to results/ingest-scaling.md")
    ap.add_argument("--rounds", type=int, default=2, help="scaling arms: how many times each N runs, in turn")
    ap.add_argument("--limiter-dry-run", action="store_true", help="scaling arms: the adaptive limiter decides "
                    "but never sheds (what the processes carry, not what the limiter lets through)")
    ap.add_argument("--kafka", action="store_true", help="scaling arms: the log is Kafka (a Tansu broker per arm)")
    ap.add_argument("--profile-writer", action="store_true", help="scaling arms: capture writer-1 for 5 s through "
                    "its /debug/profiles in the first multi-process arm; flamegraph and folded stacks to results/")
    args = ap.parse_args()
    if args.sweep:
        report = run_sweep(args, sys.modules[__name__])
        print(report)
        args.out.write_text((args.out.read_text() + "\n---\n\n" if args.out.exists() else "") + report)
        return
    loads: dict[str, str] = {}
    spec = {"mode": "closed", "records": args.records, "per_batch": args.batch, "concurrency": args.concurrency}
    if args.workers:
        _scaling(args, spec)
        return
    with tempfile.TemporaryDirectory(prefix="meterd-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for d in ("db", "dry", "kafka", "open", "ceiling", "stages"):
            (tmp / d).mkdir()
        loads["database log"] = _load()
        print("arm 1: meterd up, database log", file=sys.stderr)
        db = run_meterd_arm("database log", tmp / "db", {**spec, "tag": "db"}, {}, settle_s=1.0,
                            profile=args.profile)
        loads["database log, limiter dry run"] = _load()
        print("arm 1b: meterd up, database log, adaptive limiter in dry run", file=sys.stderr)
        dry = run_meterd_arm("database log, limiter dry run", tmp / "dry", {**spec, "tag": "dry"},
                             {"METERD_GOVERNANCE": json.dumps({"plugins": _dry_run_plugins()})}, settle_s=1.0)
        loads["Kafka"] = _load()
        print("arm 2: meterd up, Kafka", file=sys.stderr)
        with running_tansu() as broker:
            kafka = run_meterd_arm("Kafka", tmp / "kafka", {**spec, "tag": "kafka"},
                                   {"METERD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap}, settle_s=8.0)
        loads["ceilings"] = _load()
        print("arm 3: ceilings", file=sys.stderr)
        payloads = pipeline_payloads(args.records, args.batch, "ceiling")
        ceilings = [sqlite_ceiling(tmp / "ceiling", payloads, args.batch, args.concurrency, with_claims=True),
                    sqlite_ceiling(tmp / "ceiling", payloads, args.batch, args.concurrency, with_claims=False),
                    asyncio.run(kafka_ceiling(payloads, args.batch, args.concurrency))]
        del payloads
        loads["open loop"] = _load()
        print("arm 5: open loop at half capacity", file=sys.stderr)
        open_spec = {"mode": "open", "per_batch": args.batch, "rate": args.open_rate or db.e2e_rps / 2, "seconds": args.open_seconds,
                     "tag": "open"}
        open_arm = run_meterd_arm("open loop", tmp / "open", open_spec, {}, settle_s=1.0)
        loads["stages"] = _load()
        print("arm 4: CPU per stage", file=sys.stderr)
        stages = asyncio.run(stage_cpu(tmp / "stages", args.batch, args.stage_rounds, args.stage_claim_group,
                                       args.stage_groups))
    report = render(args, db, dry, kafka, ceilings, open_arm, stages, loads)
    print(report)
    if args.append and args.out.exists():
        args.out.write_text(args.out.read_text() + "\n---\n\n" + report)
    else:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
