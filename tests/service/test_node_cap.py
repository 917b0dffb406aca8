"""N13: an account has at most `ingest.max_nodes_per_account` distinct node ids; a batch that
would add nodes beyond that is refused at ingest (400 problem / INVALID_ARGUMENT naming the
records), known nodes keep being accepted, other accounts are not affected, and the limit holds
across a restart (the node registry is in the database, not only in a cache)."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from tests.support.meterd import meterd_env
from tests.support.meterd_client import (
    Meterd,
    assert_problem,
    bearer,
    grpc_violations,
    pb,
    problem_fields,
    record,
    shared_meterd,
    unique,
)

CAP = 5


def _batch(acc: str, nodes: list[str]) -> list[dict]:
    return [record(acc, node_id=n, bytes_in=1, bytes_out=0) for n in nodes]


def _refused_over_http(m: Meterd, key: str, acc: str, nodes: list[str]) -> dict[str, str]:
    with m.client(key) as http:
        resp = http.post("/v1/traffic", json={"batch_id": unique("cap"), "records": _batch(acc, nodes)})
    return problem_fields(assert_problem(resp, 400))


def _adjust(m: Meterd, acc: str, node: str) -> httpx.Response:
    """An admin adjustment names a node too: it counts against the same cap."""
    return m.admin.post(f"/v1/accounts/{acc}/adjustments", json={
        "idempotency_key": unique("adj"), "node_id": node, "interval": "2026-04-10T12:05:00Z",
        "reason": "meter undercounted", "bytes_in": 1})


def test_new_nodes_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_INGEST__MAX_NODES_PER_ACCOUNT=str(CAP))
    with shared_meterd(tmp_path, env) as m:
        acc, key = m.new_account("cap")
        other, other_key = m.new_account("other")
        m.write(key, unique("fill"), _batch(acc, [f"edge-{i}" for i in range(4)]))
        fields = _refused_over_http(m, key, acc, ["edge-0", "edge-4", "edge-5"])  # 4 known + 2 new > 5
        assert set(fields) == {"records[1].node_id", "records[2].node_id"}, fields
        assert "ingest.max_nodes_per_account" in fields["records[1].node_id"]
        m.write(key, unique("fit"), _batch(acc, ["edge-0", "edge-4"]))  # exactly the cap
        with pytest.raises(grpc.RpcError) as err:
            m.stub.Write(pb(_batch(acc, ["edge-new"]), unique("cap")), metadata=bearer(key), timeout=15)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "records[0].node_id" in grpc_violations(err.value)
        m.write(other_key, unique("o"), _batch(other, [f"o-{i}" for i in range(CAP)]))  # its own cap
        m.wait_totals(acc, {"bytes_in": 6, "bytes_out": 0, "requests": 6})
        adjusted, adjusted_key = m.new_account("adjusted")
        assert [_adjust(m, adjusted, f"a-{i}").status_code for i in range(CAP)] == [201] * CAP
        fields = problem_fields(assert_problem(_adjust(m, adjusted, "a-new"), 400))
        assert "ingest.max_nodes_per_account" in fields["node_id"], fields
        assert _adjust(m, adjusted, "a-0").status_code == 201  # a known node still takes adjustments
        assert "records[0].node_id" in _refused_over_http(m, adjusted_key, adjusted, ["a-new"])
    with shared_meterd(tmp_path, env) as m:  # same data dir: the registry survives the restart
        assert "records[0].node_id" in _refused_over_http(m, key, acc, ["edge-6"])
        m.write(key, unique("known"), _batch(acc, ["edge-3"]))
        m.wait_totals(acc, {"bytes_in": 7, "bytes_out": 0, "requests": 7})
