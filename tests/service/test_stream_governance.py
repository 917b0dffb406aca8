"""Issue 18 on a real meterd: each WriteStream message is governed like a unary Write (quota per
batch on one stream and across streams), credentials are re-checked on an open stream (a revoked key
or a suspended account stops within 2 s), streams are capped per key and per connection, connections
have a maximum age, and quota buckets are principals, not header bytes."""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from service.governance_setup import DEFAULT_PLUGINS
from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.meterd import meterd_env, running_meterd
from tests.support.meterd_client import pb, record, unique
from tests.support.servers import free_port

STREAM_MSG = "message /meterd.v1.TrafficWriter/WriteStream"
UNARY = "unary /meterd.v1.TrafficWriter/Write"
BATCHES_PER_MINUTE = 5


def _plugins() -> list[dict]:
    plugins = copy.deepcopy(DEFAULT_PLUGINS)
    for p in plugins:
        if p["type"] == "quota":
            p["routes"] = {STREAM_MSG: {"limit": f"{BATCHES_PER_MINUTE}/minute"}, UNARY: {"limit": "3/minute"},
                           "POST /v1/traffic": {"limit": "3/minute"}, **p["routes"]}
        if p["type"].endswith(":PrincipalKey"):
            p["settings"] = {"unauthenticated_limit": "5/minute"}
    return plugins


def _channel(target: str) -> grpc.Channel:
    # A connection of its own per channel (grpc shares one between equal channels by default).
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


class Stream:
    """A WriteStream fed from a queue, so the test decides when each batch goes."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self._q: queue.Queue[traffic_pb2.WriteRequest | None] = queue.Queue()
        stub = traffic_pb2_grpc.TrafficWriterStub(channel)
        self._responses = stub.WriteStream(self._requests(), metadata=(("authorization", f"Bearer {token}"),),
                                           timeout=60)

    def _requests(self) -> Iterator[traffic_pb2.WriteRequest]:
        while (item := self._q.get()) is not None:
            yield item

    def send(self, account: str) -> traffic_pb2.WriteResponse:
        self._q.put(pb([record(account)], unique()))
        return next(self._responses)

    def close(self) -> None:
        self._q.put(None)
        for _ in self._responses:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("streams")
    cfg = tmp / "meterd.yaml"
    cfg.write_text(json.dumps({"governance": {"plugins": _plugins()}}))
    env = meterd_env(tmp, METERD_GRPC__MAX_STREAMS_PER_KEY="2", METERD_GRPC__MAX_CONCURRENT_STREAMS="2")
    with running_meterd(tmp, "up", "--config", str(cfg), env=env) as m:
        assert m.http and m.grpc, m.output()
        yield m.http, m.grpc


def _admin(http: str):  # type: ignore[no-untyped-def]
    import httpx

    from tests.support.meterd import ADMIN_TOKEN
    return httpx.Client(base_url=http, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def _account(http: str) -> tuple[str, str, str]:
    with _admin(http) as c:
        acc = c.post("/v1/accounts", json={"name": "s"}).json()["id"]
        key = c.post(f"/v1/accounts/{acc}/keys").json()
        return acc, key["key"], key["id"]


def _trailer(err: grpc.RpcError, name: str) -> str | None:
    return next((v for k, v in err.trailing_metadata() or () if k == name), None)


def test_quota_counts_batches_on_one_stream(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    with _channel(target) as ch:
        s = Stream(ch, key)
        for _ in range(BATCHES_PER_MINUTE):
            assert s.send(acc).accepted == 1  # the responses before the refusal all arrive
        with pytest.raises(grpc.RpcError) as err:
            s.send(acc)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # what a unary Write gets
    assert int(_trailer(err.value, "retry-after") or 0) >= 1
    # metrics per message: each batch is a call of its own, the refused one included
    import httpx
    metrics = httpx.get(f"{http}/metrics").text
    labels = 'grpc_method="WriteStream",grpc_service="meterd.v1.TrafficWriter",grpc_type="message"'
    assert f'grpc_server_handled_total{{grpc_code="ResourceExhausted",{labels}}}' in metrics, metrics
    assert f'grpc_server_started_total{{{labels}}}' in metrics


def test_quota_counts_batches_across_streams(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    with _channel(target) as ch1, _channel(target) as ch2:
        first = Stream(ch1, key)
        for _ in range(3):
            assert first.send(acc).accepted == 1
        first.close()
        second = Stream(ch2, key)
        for _ in range(BATCHES_PER_MINUTE - 3):
            assert second.send(acc).accepted == 1
        with pytest.raises(grpc.RpcError) as err:
            second.send(acc)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _refused_within(stream: Stream, acc: str, seconds: float) -> tuple[grpc.RpcError, float]:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            stream.send(acc)
        except grpc.RpcError as exc:
            return exc, time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"the stream still writes {seconds} s later")


def test_revoked_key_is_refused_on_an_open_stream(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, key_id = _account(http)
    with _channel(target) as ch:
        s = Stream(ch, key)
        assert s.send(acc).accepted == 1
        with _admin(http) as c:
            assert c.delete(f"/v1/accounts/{acc}/keys/{key_id}").status_code == 204
        err, took = _refused_within(s, acc, 2.0)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert took < 2.0


def test_suspended_account_is_refused_on_an_open_stream(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    with _channel(target) as ch:
        s = Stream(ch, key)
        assert s.send(acc).accepted == 1
        with _admin(http) as c:
            assert c.patch(f"/v1/accounts/{acc}", json={"status": "suspended"}).status_code == 200
        err, took = _refused_within(s, acc, 2.0)
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
                          grpc.StatusCode.FAILED_PRECONDITION), err
    assert "suspended" in (err.details() or "") or err.code() != grpc.StatusCode.OK


def test_open_streams_are_capped_per_key(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    channels = [_channel(target) for _ in range(3)]
    try:
        held = [Stream(channels[i], key) for i in range(2)]
        for s in held:
            assert s.send(acc).accepted == 1
        with pytest.raises(grpc.RpcError) as err:
            Stream(channels[2], key).send(acc)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held[0].close()  # a slot frees when a stream ends
        third = Stream(channels[2], key)
        assert third.send(acc).accepted == 1
        third.close()
        held[1].close()
    finally:
        for ch in channels:
            ch.close()


def test_concurrent_streams_are_capped_per_connection(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    acc2, key2, _ = _account(http)
    with _channel(target) as ch:
        held = [Stream(ch, key), Stream(ch, key2)]  # two keys: the per-key cap is not what stops it
        assert held[0].send(acc).accepted == 1
        assert held[1].send(acc2).accepted == 1
        waiting = traffic_pb2_grpc.TrafficWriterStub(ch).Write.future(
            pb([record(acc)], unique()), metadata=(("authorization", f"Bearer {key}"),), timeout=30)
        time.sleep(1.0)
        assert not waiting.done()  # a third stream on this connection waits for a free one
        held[0].close()
        assert waiting.result(timeout=10).accepted == 1
        held[1].close()


def test_bearer_spelling_shares_one_bucket(server: tuple[str, str]) -> None:
    http, target = server
    acc, key, _ = _account(http)
    with _channel(target) as ch:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        for header in (f"Bearer {key}", f"bearer {key}", f"Bearer  {key}"):
            assert stub.Write(pb([record(acc)], unique()), metadata=(("authorization", header),),
                              timeout=10).accepted == 1
        with pytest.raises(grpc.RpcError) as err:
            stub.Write(pb([record(acc)], unique()), metadata=(("authorization", f"BEARER {key}"),), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    import httpx
    acc, key, _ = _account(http)
    for header in (f"Bearer {key}", f"bearer {key}", f"Bearer  {key}"):
        r = httpx.post(f"{http}/v1/traffic", headers={"authorization": header},
                       json={"batch_id": unique(), "records": [record(acc)]})
        assert r.status_code == 202, r.text
    r = httpx.post(f"{http}/v1/traffic", headers={"authorization": f"bEaReR {key}"},
                   json={"batch_id": unique(), "records": [record(acc)]})
    assert r.status_code == 429, r.text


def test_random_tokens_share_the_peer_budget(server: tuple[str, str]) -> None:
    """Each made-up key used to get a bucket of its own (and a database lookup); now calls without
    valid credentials share their peer's small budget, and past it are refused before the lookup."""
    http, target = server
    acc, key, _ = _account(http)
    with _channel(target) as ch:
        stub = traffic_pb2_grpc.TrafficWriterStub(ch)
        assert stub.Write(pb([record(acc)], unique()), metadata=(("authorization", f"Bearer {key}"),),
                          timeout=10).accepted == 1
        codes = []
        for _ in range(8):
            try:
                stub.Write(pb([record("acc_x")], unique()),
                           metadata=(("authorization", f"Bearer mk_{secrets.token_hex(16)}"),), timeout=10)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        time.sleep(1.1)  # the key's cached answer expires: it is looked up again despite the flood
        assert stub.Write(pb([record(acc)], unique()), metadata=(("authorization", f"Bearer {key}"),),
                          timeout=10).accepted == 1
    # 5 per minute per peer (earlier tests in this module spent some): then refused before any lookup
    assert 0 < codes.count(grpc.StatusCode.UNAUTHENTICATED) <= 5, codes
    assert codes[-3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, codes


def test_connections_have_a_maximum_age(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_GRPC__MAX_CONNECTION_AGE_SECONDS="1",
                     METERD_GRPC__MAX_CONNECTION_AGE_GRACE_SECONDS="1")
    with running_meterd(tmp_path, "up", env=env) as m:
        assert m.http and m.grpc
        acc, key, _ = _account(m.http)
        with _channel(m.grpc) as ch:
            s = Stream(ch, key)
            assert s.send(acc).accepted == 1
            # age 1 s (+/-10 % jitter) then 1 s of grace: the held stream is ended by the server.
            err, took = _refused_within(s, acc, 6.0)
    assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
    assert took < 6.0


def _idle_after_ready(seen: list[grpc.ChannelConnectivity]) -> bool:
    ready = grpc.ChannelConnectivity.READY
    return ready in seen and grpc.ChannelConnectivity.IDLE in seen[seen.index(ready):]


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_GRPC__MAX_CONNECTION_IDLE_SECONDS="1")
    with running_meterd(tmp_path, "up", env=env) as m:
        assert m.http and m.grpc
        acc, key, _ = _account(m.http)
        with _channel(m.grpc) as ch:
            states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
            ch.subscribe(states.put, try_to_connect=False)
            stub = traffic_pb2_grpc.TrafficWriterStub(ch)
            assert stub.Write(pb([record(acc)], unique()), metadata=(("authorization", f"Bearer {key}"),),
                              timeout=10).accepted == 1
            seen: list[grpc.ChannelConnectivity] = []
            deadline = time.monotonic() + 5
            while not _idle_after_ready(seen):
                assert time.monotonic() < deadline, f"still connected after 5 s: {seen}"
                with contextlib.suppress(queue.Empty):
                    seen.append(states.get(timeout=0.2))
            ch.unsubscribe(states.put)
    # READY, then IDLE: the server sent GOAWAY after 1 s without calls


def test_revocation_reaches_another_process_within_2s(tmp_path: Path) -> None:
    """The stream is on a `meterd writer` sharing the database; the key is revoked through the API of
    another process, whose cache drop does not reach the writer: its 1 s cache expiry does."""
    env = meterd_env(tmp_path)
    with running_meterd(tmp_path, "up", env=env) as api:
        assert api.http
        acc, key, key_id = _account(api.http)
        wenv = {**env, "METERD_GRPC__PORT": str(free_port()), "METERD_ADMIN__PORT": str(free_port()),
                "METERD_HTTP__PORT": str(free_port())}
        with running_meterd(tmp_path, "writer", env=wenv) as writer, _channel(writer.grpc) as ch:
            assert writer.grpc
            s = Stream(ch, key)
            for _ in range(3):  # the writer has the key cached
                assert s.send(acc).accepted == 1
            with _admin(api.http) as c:
                assert c.delete(f"/v1/accounts/{acc}/keys/{key_id}").status_code == 204
            err, took = _refused_within(s, acc, 2.0)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert took < 2.0
