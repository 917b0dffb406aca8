"""Admin usage adjustments: a signed delta counted once per idempotency key (three sends, two of
them after a SIGKILL of `meterd up`), shown in usage, billing and the month's list with their
provenance; a key reused for other content, or a delta that would take usage below 0, is a 409."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.schemas import Adjustment, Adjustments
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import PAST_SECONDS, rec, send, stack
from tests.support.meterd import meterd_env, running_meterd, wait_until
from tests.support.meterd_client import Meterd

__all__ = ["stack"]

APRIL = "2026-04-10T12:05:00Z"
APRIL_S = 1775822700  # 2026-04-10T12:05:00Z


def adjust(client, acc: str, key: str, **delta: int) -> object:  # type: ignore[no-untyped-def]
    return client.post(f"/v1/accounts/{acc}/adjustments", json={
        "idempotency_key": key, "node_id": "edge-1", "interval": APRIL, "reason": "meter 7 undercounted",
        **delta})


def usage_april(m: Meterd, acc: str, **params: str) -> dict:
    return m.admin.get(f"/v1/accounts/{acc}/usage", params={"start": "2026-04-10T00:00:00Z",
                                                            "end": "2026-04-11T00:00:00Z", "step": "1h",
                                                            **params}).json()


def test_an_adjustment_counts_once_and_shows_everywhere(stack: Meterd) -> None:
    acc, key = stack.new_account("adjust")
    send(stack, [rec(acc, APRIL_S * 1000 + 1000, b_in=1000, b_out=2000, reqs=10)])
    wait_until(lambda: usage_april(stack, acc)["totals"]["bytes_in"] == 1000, timeout=60, message="counted")
    first = adjust(stack.admin, acc, "fix-7", bytes_in=500, bytes_out=-1500, requests=-4)
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    Adjustment.model_validate(first.json())  # type: ignore[attr-defined]
    for _ in range(2):  # a retry is a replay: 200, the same adjustment, counted once
        again = adjust(stack.admin, acc, "fix-7", bytes_in=500, bytes_out=-1500, requests=-4)
        assert again.status_code == 200 and again.json() == first.json()  # type: ignore[attr-defined]
    assert usage_april(stack, acc)["totals"] == {"bytes_in": 1500, "bytes_out": 500, "requests": 6}
    by_node = usage_april(stack, acc, group_by="node_id")["series"]
    assert [(s["node_id"], s["totals"]["bytes_out"]) for s in by_node] == [("edge-1", 500)]
    bill = stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04", "mode": "day_peak"}).json()
    assert (bill["bytes_in"], bill["bytes_out"]) == (1500, 500)
    assert bill["bandwidth_bps"]["peak"]["in"] == 40  # 1,500 bytes in the interval
    assert bill["adjustments"] == {"count": 1, "bytes_in": 500, "bytes_out": -1500, "requests": -4}
    assert "adjustments" not in stack.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-05"}).json()
    with stack.client(key) as c:  # provenance, readable by the account
        listed = c.get(f"/v1/accounts/{acc}/adjustments", params={"month": "2026-04"}).json()
    Adjustments.model_validate(listed)
    assert [(a["idempotency_key"], a["reason"], a["source"]) for a in listed["adjustments"]] == [
        ("fix-7", "meter 7 undercounted", "admin-adjustment")]


def test_conflicts_and_bounds(stack: Meterd) -> None:
    acc, key = stack.new_account("adjust-bad")
    assert adjust(stack.admin, acc, "k1", bytes_in=10).status_code == 201  # type: ignore[attr-defined]
    assert_problem(adjust(stack.admin, acc, "k1", bytes_in=11), 409)  # type: ignore[arg-type]
    gone = adjust(stack.admin, acc, "k2", bytes_in=-11)
    assert "below 0" in assert_problem(gone, 409)["detail"]  # type: ignore[arg-type]
    assert usage_april(stack, acc)["totals"]["bytes_in"] == 10  # the refused one changed nothing
    with stack.client(key) as c:
        assert_problem(adjust(c, acc, "k3", bytes_in=1), 403)  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "field"), [
    ({"interval": "2026-04-10T12:06:00Z"}, "interval"), ({"interval": "yesterday"}, "interval"),
    ({"bytes_in": 0}, "bytes_in"), ({"idempotency_key": "has space"}, "idempotency_key"),
    ({"reason": ""}, "reason"), ({"bytes_in": 1 << 63}, "bytes_in"), ({"bytes_in": "5"}, "bytes_in"),
    ({"extra": 1}, "extra"), ({"node_id": "=HYPERLINK()"}, "node_id"), ({"node_id": "edge 1"}, "node_id"),
    ({"node_id": "edge\n1"}, "node_id"), ({"node_id": ""}, "node_id")])
def test_bad_adjustments(stack: Meterd, change: dict, field: str) -> None:
    acc, _ = stack.new_account("adjust-400")
    body = {"idempotency_key": "k", "node_id": "edge-1", "interval": APRIL, "reason": "r", "bytes_in": 5, **change}
    resp = stack.admin.post(f"/v1/accounts/{acc}/adjustments", json=body)
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_retries_across_sigkill_count_once(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_INGEST__MAX_PAST_SECONDS=str(PAST_SECONDS),
                     METERD_CONSUMER__DEDUPE_RETENTION_SECONDS=str(PAST_SECONDS))
    with running_meterd(tmp_path, "up", env=env) as proc:
        with proc.client() as c:
            acc = c.post("/v1/accounts", json={"name": "crash"}).json()["id"]
            assert adjust(c, acc, "once", bytes_in=700).status_code == 201  # type: ignore[attr-defined]
        for _ in range(2):  # a crash, then the same request again
            proc.kill_group()
            proc.start()
            with proc.client() as c:
                resp = adjust(c, acc, "once", bytes_in=700)
                assert resp.status_code == 200, resp.text  # type: ignore[attr-defined]
        with proc.client() as c:
            body = c.get(f"/v1/accounts/{acc}/usage", params={"start": "2026-04-10T00:00:00Z",
                                                              "end": "2026-04-11T00:00:00Z", "step": "1h"}).json()
    assert body["totals"]["bytes_in"] == 700
