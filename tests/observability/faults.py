"""Load and faults for the live-data test (test_live_data.py), done to real processes.

Some series exist only once something has gone wrong (an open breaker, a failed profile capture,
a 5xx), so the scenario breaks things on purpose, the way they break in production: the Kafka
broker dies, the profile directory is swapped for a symlink, a DingTalk robot answers errors,
a message nobody can decode lands on the traffic topic, the quota's Redis hangs. Also here: the
traffic the processes (processes.py) get.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from aiokafka import AIOKafkaProducer

from service.pb.meterd.v1 import traffic_pb2_grpc
from tests.relay.fake_dingtalk import FakeDingTalk
from tests.relay.helpers import alert, notification
from tests.support.meterd import MeterdProc
from tests.support.meterd_client import bearer, pb, record, unique
from tests.support.servers import RedisServer

TRAFFIC_TOPIC = "meterd.traffic.v1"

# --- faults -------------------------------------------------------------------------------------


def produce_undecodable(bootstrap: str, topic: str = TRAFFIC_TOPIC, value: bytes = b"\xff" * 16) -> None:
    """Put bytes on the traffic topic that no writer produced: the consumer must dead-letter them."""

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=b"poison")
        finally:
            await producer.stop()

    asyncio.run(produce())


@contextlib.contextmanager
def symlinked_directory(directory: Path) -> Iterator[None]:
    """Move `directory` aside and put a symlink to it in its place: the profiler refuses a directory
    somebody could have swapped under it (reason unsafe_directory) until it is restored."""
    real = directory.with_name(directory.name + ".real")
    if directory.exists():
        directory.rename(real)
    else:
        real.mkdir(mode=0o700, parents=True)
    directory.symlink_to(real, target_is_directory=True)
    try:
        yield
    finally:
        directory.unlink()
        real.rename(directory)


@contextlib.contextmanager
def hung(server: RedisServer) -> Iterator[None]:
    """SIGSTOP until the block ends: the port still accepts connections but nothing answers,
    the way a hung Redis looks to its clients (the quota's checks time out)."""
    pid = server.pid
    assert pid is not None, "the Redis server is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- the traffic --------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Calls to meterd and the relay. Unexpected answers are collected in `problems`, not raised:
    the scenario goes on, and a test reports them."""

    meterd: MeterdProc
    relay: str
    pool: ThreadPoolExecutor
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = self.meterd.client()
        self.channel = grpc.insecure_channel(self.meterd.grpc or "")
        self.stub = traffic_pb2_grpc.TrafficWriterStub(self.channel)
        resp = self.admin.post("/v1/accounts", json={"name": "live-data"})
        assert resp.status_code == 201, resp.text
        self.account = resp.json()["id"]
        resp = self.admin.post(f"/v1/accounts/{self.account}/keys")
        assert resp.status_code == 201, resp.text
        self.key = resp.json()["key"]
        self.user = self.meterd.client(self.key)
        self.anonymous = httpx.Client(base_url=self.meterd.http or "", timeout=10)

    def close(self) -> None:
        for client in (self.admin, self.user, self.anonymous):
            client.close()
        self.channel.close()

    def expect(self, what: str, got: Any, wanted: Any) -> None:
        if got != wanted:
            self.problems.append(f"{what}: got {got!r}, wanted {wanted!r}")

    # meterd

    def http_round(self) -> None:
        acc, user = self.account, self.user
        self.expect("get account", self.admin.get(f"/v1/accounts/{acc}").status_code, 200)
        self.expect("unknown account", self.admin.get("/v1/accounts/no-such-account").status_code, 404)
        self.expect("no token", self.anonymous.get(f"/v1/accounts/{acc}").status_code, 401)
        self.expect("bad body", self.admin.post("/v1/accounts", json={"name": 7}).status_code, 400)
        body = {"batch_id": unique(), "records": [record(acc, bytes_in=10)]}
        self.expect("POST /v1/traffic", user.post("/v1/traffic", json=body).status_code, 202)
        bad = {"batch_id": unique(), "records": [record(acc, bytes_in=-1)]}
        self.expect("bad traffic", user.post("/v1/traffic", json=bad).status_code, 400)
        self.expect("usage", user.get(f"/v1/accounts/{acc}/usage").status_code, 200)
        # A burst beyond the route's 2/second quota.
        codes = {user.get(f"/v1/accounts/{acc}/balance").status_code for _ in range(5)}
        self.expect("balance burst has a 429", 429 in codes, True)

    def balance_reads_admitted(self) -> None:
        """With the quota storage down (fail_open): a burst beyond the quota, all admitted."""
        codes = {self.user.get(f"/v1/accounts/{self.account}/balance").status_code for _ in range(5)}
        self.expect("balance burst, quota storage down", codes, {200})

    def grpc_round(self) -> None:
        md = bearer(self.key)
        self.stub.Write(pb([record(self.account)], unique()), metadata=md, timeout=10)
        stream = [pb([record(self.account, bytes_out=i)], unique()) for i in range(3)]
        self.expect("WriteStream", len(list(self.stub.WriteStream(iter(stream), metadata=md, timeout=10))), 3)
        for request, metadata, code in (
            (pb([record(self.account, ts_ms=0)], unique()), md, grpc.StatusCode.INVALID_ARGUMENT),
            (pb([record(self.account)], unique()), (), grpc.StatusCode.UNAUTHENTICATED),
        ):
            try:
                self.stub.Write(request, metadata=metadata, timeout=10)
                self.expect("bad Write", "OK", code)
            except grpc.RpcError as err:
                self.expect("bad Write", err.code(), code)

    def write_burst(self) -> None:
        """8 concurrent 2000-record writes past the Write route's in-flight cap, until one is shed."""
        md = bearer(self.key)
        records = [record(self.account, bytes_out=i) for i in range(2000)]

        def one(_: int) -> str:
            try:
                self.stub.Write(pb(records, unique()), metadata=md, timeout=10)
                return "OK"
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any("inflight_cap" in answer for answer in self.pool.map(one, range(8))):
                return
        self.problems.append("no write of a burst was shed past the Write route's in-flight cap")

    def profile(self, action: str, status: int) -> None:
        resp = self.admin.post(f"/debug/profiles/{action}", json={"duration_s": 30} if action == "start" else None)
        self.expect(f"profile {action}", resp.status_code, status)

    # the relay

    def notify(self, robot: str, payload: dict[str, Any]) -> int:
        return httpx.post(f"{self.relay}/alerts/{robot}", json=payload, timeout=15).status_code

    def relay_firing_and_resolved(self) -> None:
        firing = alert("MeterdLiveDataTest", severity="critical", instance="a:1")
        self.expect("firing", self.notify("oncall", notification(firing)), 200)
        resolved = alert("MeterdLiveDataTest", status="resolved", severity="critical", instance="a:1")
        self.expect("resolved", self.notify("oncall", notification(resolved, status="resolved")), 200)

    def relay_burst(self) -> None:
        # Arriving within the merge window, they go out as one or two merged messages.
        burst = [notification(alert(f"MeterdBurst{i}", instance=f"b:{i}")) for i in range(6)]
        codes = list(self.pool.map(lambda p: self.notify("oncall", p), burst))
        self.expect("burst", set(codes), {200})

    def relay_big(self) -> None:
        # One notification too large for one DingTalk message (20,000 bytes): it is truncated.
        alerts = [alert(f"MeterdBig{i}", instance=f"c:{i}") for i in range(60)]
        for a in alerts:
            a["annotations"]["description"] = "x" * 900
        self.expect("big", self.notify("oncall", notification(*alerts)), 200)

    def relay_failing_robot(self, robot: FakeDingTalk, name: str) -> None:
        """The robot first answers 5xx (the relay answers 503: Alertmanager retries), then refuses
        for good (424): send failures and a rejected notification."""
        robot.scripted.extend([(500, {}), (200, {"errcode": 300001, "errmsg": "token is not exist"})])
        self.expect("failing robot, 5xx", self.notify(name, notification(alert())), 503)
        self.expect("failing robot, refusal", self.notify(name, notification(alert())), 424)


def quota_storage_outage(traffic: Traffic, redis: RedisServer, seconds: float = 3.0) -> None:
    """The quota's Redis hangs for `seconds` (spanning a few scrapes) under balance reads: the first
    checks time out, then the quota_storage breaker opens and answers at once; every failure is
    counted (governance_quota_storage_errors_total) and every call admitted."""
    with hung(redis):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            traffic.balance_reads_admitted()
            time.sleep(0.2)


def trip_kafka_breaker(traffic: Traffic, deadline_s: float = 30.0) -> dict[str, int]:
    """With the broker dead: writes until the kafka breaker opens, then for a few seconds a
    sequential stream of fast-failing writes (more than the inbound breaker's min_requests per
    window) and HTTP posts. Returns the answers, counted by status."""
    md = bearer(traffic.key)
    answers: dict[str, int] = {}
    lock = threading.Lock()

    def count(status: str) -> None:
        with lock:
            answers[status] = answers.get(status, 0) + 1

    def write(_: int = 0) -> str:
        try:
            traffic.stub.Write(pb([record(traffic.account)], unique()), metadata=md, timeout=10)
            answer = "OK"
        except grpc.RpcError as err:
            answer = f"{err.code().name}: {err.details()}"
        count(answer.split(":")[0])
        return answer

    deadline = time.monotonic() + deadline_s
    while not any("circuit open" in a for a in traffic.pool.map(write, range(6))):
        if time.monotonic() > deadline:
            raise AssertionError(f"the kafka breaker did not open: {answers}")
    end = time.monotonic() + 3  # spans a few scrapes
    while time.monotonic() < end:
        for _ in range(10):
            write()
        body = {"batch_id": unique(), "records": [record(traffic.account)]}
        count(f"HTTP {traffic.user.post('/v1/traffic', json=body).status_code}")
        time.sleep(0.2)
    return answers
