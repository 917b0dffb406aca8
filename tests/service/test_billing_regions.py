"""Billing regions on a real `meterd up` over SQLite and PostgreSQL: the map from config and the
admin API, unknown nodes in the default region (counted and listed), one bill per region checked
against the plain rules of test_billing_properties, usage by region, and bad input."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from service.api.schemas import Billing, NodeRegion, Regions, Usage
from service.billing_plan import BillingPlan
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import PAST_SECONDS, rec, send
from tests.service.test_billing_properties import reference
from tests.service.test_config_cli import assert_config_error, run
from tests.support.meterd import meterd_env, wait_until
from tests.support.meterd_client import Meterd, shared_meterd

APRIL = int(datetime(2026, 4, 1, tzinfo=UTC).timestamp())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def regional(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meterd]:
    tmp = tmp_path_factory.mktemp(f"regions-{request.param}")
    extra = {"METERD_INGEST__MAX_PAST_SECONDS": str(PAST_SECONDS),
             "METERD_CONSUMER__DEDUPE_RETENTION_SECONDS": str(PAST_SECONDS),  # at least max_past
             "METERD_CONSUMER__FLUSH_INTERVAL_SECONDS": "0.3",
             "METERD_BILLING__DEFAULT_REGION": "cn", "METERD_BILLING__NODE_REGIONS": '{"cfg-eu-1": "eu"}'}
    server, name = None, f"t_{uuid.uuid4().hex[:16]}"
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        server.create_database(name)
        extra["METERD_DATABASE__URL"] = server.url_for(name)
    try:
        with shared_meterd(tmp, meterd_env(tmp, **extra)) as m:
            yield m
    finally:
        if server is not None and server.running:
            server.drop_database(name)


def unique_node(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put(m: Meterd, region: str, node: str) -> None:
    resp = m.admin.put(f"/v1/regions/{region}/nodes/{node}")
    assert resp.status_code == 200, resp.text
    assert NodeRegion.model_validate(resp.json()).region == region


def test_map_from_config_and_admin_api(regional: Meterd) -> None:
    sg = unique_node("sg")
    put(regional, "overseas", sg)
    put(regional, "overseas", sg)  # idempotent
    body = regional.admin.get("/v1/regions").json()
    Regions.model_validate(body)
    assert body["default_region"] == "cn"
    regions = {r["region"]: r["nodes"] for r in body["regions"]}
    assert "cfg-eu-1" in regions["eu"] and sg in regions["overseas"]
    assert regional.admin.delete(f"/v1/regions/overseas/nodes/{sg}").status_code == 204
    assert_problem(regional.admin.delete(f"/v1/regions/overseas/nodes/{sg}"), 404)
    assert sg not in {n for r in regional.admin.get("/v1/regions").json()["regions"] for n in r["nodes"]}


def test_a_node_id_with_slashes_is_mapped_like_any_other(regional: Meterd) -> None:
    pod = "k8s/" + unique_node("pod") + "/edge"  # ingest allows '/' in node ids
    put(regional, "overseas", pod)
    assert pod in {n for r in regional.admin.get("/v1/regions").json()["regions"] for n in r["nodes"]}
    assert regional.admin.delete(f"/v1/regions/overseas/nodes/{pod}").status_code == 204


@pytest.mark.parametrize(("path", "field"), [("/v1/regions/cn/nodes/n1", "region"),
                                             ("/v1/regions/Bad!/nodes/n1", "region"),
                                             (f"/v1/regions/eu/nodes/{'n' * 129}", "node_id"),
                                             ("/v1/regions/eu/nodes/=cmd", "node_id"),
                                             ("/v1/regions/eu/nodes/edge%201", "node_id")])
def test_bad_mapping(regional: Meterd, path: str, field: str) -> None:
    assert field in problem_fields(assert_problem(regional.admin.put(path), 400))


def test_regions_are_admin_only(regional: Meterd) -> None:
    _, key = regional.new_account("not-admin")
    with regional.client(key) as c:
        assert_problem(c.get("/v1/regions"), 403)
        assert_problem(c.put("/v1/regions/eu/nodes/n1"), 403)
        assert_problem(c.delete("/v1/regions/eu/nodes/n1"), 403)
    with regional.client("") as c:
        assert_problem(c.get("/v1/regions"), 401)


def month_values(records: list[dict]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for r in records:
        t = r["timestamp_ms"] // 1000 // 300 * 300
        b_in, b_out = out.get(t, (0, 0))
        out[t] = (b_in + r["bytes_in"], b_out + r["bytes_out"])
    return out


def test_each_region_is_billed_on_its_own(regional: Meterd) -> None:
    sg, stray = unique_node("sg"), unique_node("stray")
    put(regional, "overseas", sg)
    plan = {"mode": "month_top5_day_peak", "direction": "max", "days": "valid", "region_scope": "each"}
    acc = regional.admin.post("/v1/accounts", json={"name": "regions", "billing_plan": plan}).json()["id"]
    by_node: dict[str, list[dict]] = {"cfg-eu-1": [], sg: [], stray: []}
    for i in range(600):
        node = ("cfg-eu-1", sg, stray)[i % 3]
        ts = (APRIL + 3 * 86400 * (i % 7) + 300 * (i * 7 % 200) + 11) * 1000
        by_node[node].append(rec(acc, ts, node, b_in=(i * 7919) % 10**6, b_out=(i * 104729) % 10**6))
    records = [r for rs in by_node.values() for r in rs]
    now = int(time.time())
    recent = rec(acc, (now - 60) * 1000, stray)  # makes the stray node visible as unmapped
    send(regional, [*records, recent])
    want_bytes = sum(r["bytes_in"] for r in records)

    def bill() -> dict | None:
        body = regional.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04"}).json()
        return body if body["bytes_in"] == want_bytes else None
    body = wait_until(bill, timeout=60, message="region traffic counted")
    Billing.model_validate(body)
    zone, p = ZoneInfo("UTC"), BillingPlan.model_validate(plan)
    cutoff = int(datetime(2026, 5, 1, tzinfo=UTC).timestamp())
    want = {region: reference(month_values(by_node[node]), zone, 2026, 4, cutoff, p)
            for region, node in (("cn", stray), ("eu", "cfg-eu-1"), ("overseas", sg))}
    assert [r["region"] for r in body["regions"]] == ["cn", "eu", "overseas"]
    for r in body["regions"]:
        assert {k: r["bill"][k] for k in ("bps", "billable_bps", "valid_days", "samples")} == {
            k: want[r["region"]][k] for k in ("bps", "billable_bps", "valid_days", "samples")}, r["region"]
    everything = reference(month_values(records), zone, 2026, 4, cutoff, p)
    assert body["bill"]["bps"] == everything["bps"]  # the account-wide bill is not a sum of regions
    only_eu = regional.admin.get(f"/v1/accounts/{acc}/billing", params={"month": "2026-04", "region": "eu"}).json()
    assert only_eu["region"] == "eu" and only_eu["bill"]["bps"] == want["eu"]["bps"]
    unmapped = regional.admin.get("/v1/regions").json()["unmapped_nodes"]
    assert stray in unmapped["node_ids"] and unmapped["count"] >= 1
    # Usage by region: the three regions' totals, and a filter.
    params = {"start": "2026-04-01T00:00:00Z", "end": "2026-04-21T00:00:00Z", "step": "1d", "group_by": "region"}
    usage = regional.admin.get(f"/v1/accounts/{acc}/usage", params=params).json()
    Usage.model_validate(usage)
    assert {s["region"]: s["totals"]["bytes_in"] for s in usage["regions"]} == {
        "cn": sum(r["bytes_in"] for r in by_node[stray]), "eu": sum(r["bytes_in"] for r in by_node["cfg-eu-1"]),
        "overseas": sum(r["bytes_in"] for r in by_node[sg])}
    params.pop("group_by")
    filtered = regional.admin.get(f"/v1/accounts/{acc}/usage", params={**params, "region": "cn"}).json()
    assert filtered["region"] == ["cn"] and filtered["totals"]["bytes_in"] == sum(r["bytes_in"] for r in by_node[stray])


def test_a_new_mapping_applies_to_usage_counted_after_it(regional: Meterd) -> None:
    node = unique_node("mv")
    acc, _ = regional.new_account("remap")
    put(regional, "eu", node)
    send(regional, [rec(acc, (APRIL + 600) * 1000, node, b_in=10, b_out=0)])

    def region_totals() -> dict[str, int]:
        params = {"start": "2026-04-01T00:00:00Z", "end": "2026-04-02T00:00:00Z", "step": "1d", "group_by": "region"}
        body = regional.admin.get(f"/v1/accounts/{acc}/usage", params=params).json()
        return {s["region"]: s["totals"]["bytes_in"] for s in body["regions"]}
    wait_until(lambda: region_totals() == {"eu": 10}, timeout=30, message="first batch")
    put(regional, "overseas", node)
    send(regional, [rec(acc, (APRIL + 600) * 1000, node, b_in=5, b_out=0)])
    wait_until(lambda: region_totals() == {"eu": 10, "overseas": 5}, timeout=30, message="after the remap")


@pytest.mark.parametrize(("params", "field", "status"), [
    ({"step": "1m", "group_by": "region"}, "group_by", 400), ({"step": "1h", "region": "Bad!"}, "region", 400),
    ({"step": "1h", "region": "eu", "node_id": "n1"}, "region", 400)])
def test_bad_region_usage_queries(regional: Meterd, params: dict, field: str, status: int) -> None:
    acc, _ = regional.new_account("bad-region-usage")
    resp = regional.admin.get(f"/v1/accounts/{acc}/usage", params=params)
    assert field in problem_fields(assert_problem(resp, status)), resp.text


def test_region_usage_is_json_only_and_billing_checks_its_parameters(regional: Meterd) -> None:
    acc, _ = regional.new_account("csv-region")
    resp = regional.admin.get(f"/v1/accounts/{acc}/usage", params={"step": "1h", "group_by": "region"},
                              headers={"accept": "text/csv"})
    assert_problem(resp, 406)
    for params, field in (({"group_by": "node_id"}, "group_by"), ({"region": "Nope!"}, "region")):
        resp = regional.admin.get(f"/v1/accounts/{acc}/billing", params=params)
        assert field in problem_fields(assert_problem(resp, 400)), resp.text


@pytest.mark.parametrize(("env", "needle"), [
    ({"METERD_BILLING__DEFAULT_REGION": "Main Land"}, "billing.default_region"),
    ({"METERD_BILLING__NODE_REGIONS": '{"n1": "default"}'}, "default_region"),
    ({"METERD_BILLING__NODE_REGIONS": '{"n1": "EU"}'}, "billing.node_regions")])
def test_bad_region_config_is_refused(tmp_path: Path, env: dict, needle: str) -> None:
    assert_config_error(run(tmp_path, "migrate", **env), needle)
