"""Issue 23 / audit N9 and N22 on a real `meterd up`.

N9: the per-peer budget for failed credential checks covers every path that authenticates by
itself, not only the calls the `auth` plugin governs: opening a gRPC WriteStream and
/debug/profiles/*. 60 made-up keys from one peer: the first `budget` answers are 401 /
UNAUTHENTICATED, the rest 429 / RESOURCE_EXHAUSTED.

N22: behind one shared address a flood of made-up tokens must not refuse a valid key this process
has never seen (as after a restart or on a new replica)."""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from service.pb.meterd.v1 import traffic_pb2_grpc
from tests.support.meterd import ADMIN_TOKEN, MeterdProc, meterd_env, running_meterd
from tests.support.meterd_client import pb, record, unique

BUDGET = 10  # failed checks per peer per minute, set through the override of the auth plugin
AUTH = "service.governance_auth:PrincipalKey"


@pytest.fixture
def meterd(tmp_path: Path) -> Iterator[MeterdProc]:
    cfg = tmp_path / "meterd.yaml"
    cfg.write_text(json.dumps({"governance": {"overrides": {AUTH: {"unauthenticated_limit": f"{BUDGET}/minute"}}}}))
    with running_meterd(tmp_path, "up", "--config", str(cfg), env=meterd_env(tmp_path)) as m:
        assert m.http and m.grpc, m.output()
        yield m


def made_up_key() -> str:
    return "mk_" + secrets.token_urlsafe(24)


def open_stream(target: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        stub = traffic_pb2_grpc.TrafficWriterStub(channel)
        responses = stub.WriteStream(iter([pb([record("acc")], unique())]),
                                     metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        try:
            for _ in responses:
                pass
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_write_stream_opens_are_charged_to_the_peer_budget(meterd: MeterdProc) -> None:
    assert meterd.grpc
    codes = Counter(open_stream(meterd.grpc, made_up_key()).name for _ in range(60))
    assert codes == {"UNAUTHENTICATED": BUDGET, "RESOURCE_EXHAUSTED": 60 - BUDGET}, codes


def test_unary_write_is_charged_once_per_failure(meterd: MeterdProc) -> None:
    # Governed by the chain's `auth` plugin, which charges it: the handler must not charge again.
    codes: Counter[str] = Counter()
    with grpc.insecure_channel(meterd.grpc or "") as channel:
        stub = traffic_pb2_grpc.TrafficWriterStub(channel)
        for _ in range(60):
            try:
                stub.Write(pb([record("acc")], unique()), metadata=(("authorization", f"Bearer {made_up_key()}"),),
                           timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as err:
                codes[err.code().name] += 1
    assert codes == {"UNAUTHENTICATED": BUDGET, "RESOURCE_EXHAUSTED": 60 - BUDGET}, codes


def test_profiles_are_charged_to_the_peer_budget(meterd: MeterdProc) -> None:
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=meterd.http or "", timeout=10) as c:
        for _ in range(60):
            r = c.get("/debug/profiles/index.json", headers={"authorization": f"Bearer {made_up_key()}"})
            statuses[r.status_code] += 1
            if r.status_code == 429:
                assert r.headers["content-type"] == "application/problem+json" and r.headers["retry-after"]
        ok = c.get("/debug/profiles/index.json", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert statuses == {401: BUDGET, 429: 60 - BUDGET}, statuses
    assert ok.status_code == 200, ok.text  # the admin is not locked out by its peer's failures


@pytest.mark.parametrize("kind", ["keys", "read-tokens"])
def test_a_bad_token_flood_does_not_refuse_a_fresh_valid_key(meterd: MeterdProc, kind: str) -> None:
    """An API key writes, a read-only `mr_` token reads; neither is refused behind the flooded address."""
    with meterd.client() as admin:
        account = admin.post("/v1/accounts", json={"name": "behind-nat"}).json()["id"]
        issued = admin.post(f"/v1/accounts/{account}/{kind}", json={} if kind == "read-tokens" else None)
        key = issued.json()["key" if kind == "keys" else "token"]
    stop, flood_statuses = threading.Event(), Counter[int]()

    def flood() -> None:
        with httpx.Client(base_url=meterd.http or "", timeout=10) as c:
            while not stop.is_set():
                r = c.get(f"/v1/accounts/{account}", headers={"authorization": f"Bearer {made_up_key()}"})
                flood_statuses[r.status_code] += 1

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        refused = []
        with httpx.Client(base_url=meterd.http or "", timeout=10,
                          headers={"authorization": f"Bearer {key}"}) as c:
            while flood_statuses[429] < 20:  # the shared address is over its budget before the key's first use
                threading.Event().wait(0.05)
            for _ in range(20):
                if kind == "keys":
                    r = c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(account)]})
                else:
                    r = c.get(f"/v1/accounts/{account}")
                if r.status_code != (202 if kind == "keys" else 200):
                    refused.append((r.status_code, r.text))
    finally:
        stop.set()
        flooder.join()
    assert flood_statuses[429] > flood_statuses[401], flood_statuses  # the flood itself was throttled
    assert refused == [], refused
