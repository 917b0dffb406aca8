"""N2: node_id and batch_id are refused at validation unless they are made of the documented safe
characters, so no identifier a writer sends can fail the consumer's upsert (NUL on PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from service.config import IngestSettings
from service.ingest.errors import InvalidBatch
from service.ingest.validate import validate_batch, validate_shape
from service.pb.meterd.v1 import traffic_pb2
from tests.support.meterd import meterd_env
from tests.support.meterd_client import (
    Meterd,
    assert_problem,
    bearer,
    grpc_violations,
    now_ms,
    pb,
    problem_fields,
    record,
    shared_meterd,
    unique,
)

GOOD_NODES = ["edge-1", "EDGE_07.fra1", "lb01.example.com", "3f2b8c1e-9a4d-4e0b-8f7a-2c1d5e6f7a8b",
              "10.0.0.7", "[2001:db8::1]:443", "fe80::1", "pod/web-5d8f7c/eu-west-1a", "node@site+blue",
              "a" * 128, "~spare", "_tmp", ".dot", ":2"]
BAD_NODES = ["edge\x00one", "edge\n", "tab\there", "\x7f", "sp ace", "é-node", "a" * 129, "",
             "=cmd|' /C calc'!A0", "+1", "-x", "@sum(1)", "semi;colon", "quo\"te", "back\\slash"]
BAD_BATCH_IDS = ["b\x00", "b-1\n", "b\r", "with space", "", "a" * 129, "x/y"]


def _violations(batch_id: str, node_id: str) -> dict[str, str]:
    rec = traffic_pb2.TrafficRecord(account_id="acc", node_id=node_id, timestamp_ms=now_ms(), bytes_in=1)
    try:
        validate_batch(batch_id, [rec], {"acc": "active"}, IngestSettings(), own_account=None)
    except InvalidBatch as exc:
        return {v.field: v.description for v in exc.violations}
    return {}


@pytest.mark.parametrize("node_id", GOOD_NODES)
def test_real_node_names_are_accepted(node_id: str) -> None:
    assert _violations("b-1", node_id) == {}


@pytest.mark.parametrize("node_id", BAD_NODES)
def test_unsafe_node_ids_are_refused_with_the_rule(node_id: str) -> None:
    got = _violations("b-1", node_id)
    assert set(got) == {"records[0].node_id"}, got
    assert "is required" in got["records[0].node_id"] or "A-Z a-z 0-9" in got["records[0].node_id"]


@pytest.mark.parametrize("batch_id", BAD_BATCH_IDS)
def test_unsafe_batch_ids_are_refused(batch_id: str) -> None:
    with pytest.raises(InvalidBatch) as err:
        validate_shape(batch_id, 1, IngestSettings())
    assert [v.field for v in err.value.violations] == ["batch_id"]


@pytest.fixture(scope="module")
def pg_meterd(tmp_path_factory: pytest.TempPathFactory, postgres_server) -> Meterd:  # type: ignore[no-untyped-def]
    tmp: Path = tmp_path_factory.mktemp("ids")
    name = "t_identifiers"
    postgres_server.drop_database(name)
    postgres_server.create_database(name)
    try:
        with shared_meterd(tmp, meterd_env(tmp, METERD_DATABASE__URL=postgres_server.url_for(name))) as m:
            yield m  # type: ignore[misc]
    finally:
        postgres_server.drop_database(name)


def test_nul_in_node_id_is_refused_and_metering_goes_on_postgresql(pg_meterd: Meterd) -> None:
    acc, key = pg_meterd.new_account("nul")
    victim, victim_key = pg_meterd.new_account("victim")
    with pg_meterd.client(key) as http:
        resp = http.post("/v1/traffic", json={"batch_id": unique("nul"),
                                              "records": [record(acc, node_id="edge\x00one")]})
    body = assert_problem(resp, 400)
    assert "records[0].node_id" in problem_fields(body), body
    with pytest.raises(grpc.RpcError) as err:
        pg_meterd.stub.Write(pb([record(acc, node_id="edge\x00two")], unique("nul")), metadata=bearer(key), timeout=15)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "records[0].node_id" in grpc_violations(err.value)
    pg_meterd.write(key, unique("ok"), [record(acc, bytes_in=7, bytes_out=0)])
    pg_meterd.write(victim_key, unique("v"), [record(victim, bytes_in=5, bytes_out=0)])
    pg_meterd.wait_totals(victim, {"bytes_in": 5, "bytes_out": 0, "requests": 1}, timeout=15)
    pg_meterd.wait_totals(acc, {"bytes_in": 7, "bytes_out": 0, "requests": 1}, timeout=15)
