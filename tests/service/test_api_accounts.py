"""The account API over HTTP on a real `meterd up`: lifecycle, keys, usage steps, balance, docs, ops."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from service.api.app import ApiContext, build_api
from tests.service.conftest import Meterd, assert_problem, now_ms, problem_fields, record, unique
from tests.support.meterd import wait_until

ACCOUNT_FIELDS = {"id", "name", "status", "quota_bytes", "billing_timezone", "alert_thresholds", "webhook_url",
                  "created_at", "updated_at"}


def parse_time(value: str) -> datetime:
    """RFC 3339 with an explicit UTC designator."""
    assert value.endswith("Z"), value
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert dt.utcoffset() == timedelta(0)
    return dt


def iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- lifecycle -----------------------------------------------------------------------------------

def test_create_account(meterd: Meterd) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    resp = meterd.admin.post("/v1/accounts", json={"name": "  Acme  ", "quota_bytes": 5000})
    assert resp.status_code == 201, resp.text
    acc = resp.json()
    assert set(acc) == ACCOUNT_FIELDS
    assert acc["id"].startswith("acc_")
    assert (acc["name"], acc["status"], acc["quota_bytes"]) == ("Acme", "active", 5000)
    created = parse_time(acc["created_at"])
    assert before <= created <= datetime.now(UTC) + timedelta(seconds=5)
    assert parse_time(acc["updated_at"]) == created
    assert resp.headers["location"] == f"/v1/accounts/{acc['id']}"

    unlimited = meterd.admin.post("/v1/accounts", json={"name": "free", "status": "suspended"}).json()
    assert (unlimited["quota_bytes"], unlimited["status"]) == (None, "suspended")
    assert unlimited["id"] != acc["id"]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x", "quota_bytes": -1}, "quota_bytes"),
    ({"name": "x", "quota_bytes": "10"}, "quota_bytes"), ({"name": "x", "status": "deleted"}, "status"),
    ({"name": "x", "owner": "bob"}, "owner"),
])
def test_create_account_invalid(meterd: Meterd, body: dict, field: str) -> None:
    problem = assert_problem(meterd.admin.post("/v1/accounts", json=body), 400)
    assert field in problem_fields(problem)


def test_get_account_by_admin_and_own_key(meterd: Meterd) -> None:
    acc, key = meterd.new_account("reader")
    by_admin = meterd.admin.get(f"/v1/accounts/{acc}")
    assert by_admin.status_code == 200
    with meterd.client(key) as c:
        by_key = c.get(f"/v1/accounts/{acc}")
    assert by_key.status_code == 200
    assert by_key.json() == by_admin.json()
    assert by_key.json()["name"] == "reader"
    assert_problem(meterd.admin.get("/v1/accounts/acc_doesnotexist"), 404, "account not found")


def test_patch_account(meterd: Meterd) -> None:
    acc, key = meterd.new_account("old", quota_bytes=10)
    created = meterd.admin.get(f"/v1/accounts/{acc}").json()
    time.sleep(0.01)  # updated_at has millisecond resolution
    resp = meterd.admin.patch(f"/v1/accounts/{acc}", json={"name": "new", "status": "suspended",
                                                            "quota_bytes": 99})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["name"], body["status"], body["quota_bytes"]) == ("new", "suspended", 99)
    assert body["created_at"] == created["created_at"]
    assert parse_time(body["updated_at"]) > parse_time(created["updated_at"])
    assert meterd.admin.get(f"/v1/accounts/{acc}").json() == body

    # Partial: only what is sent changes; null quota means unlimited.
    body = meterd.admin.patch(f"/v1/accounts/{acc}", json={"quota_bytes": None}).json()
    assert (body["name"], body["status"], body["quota_bytes"]) == ("new", "suspended", None)

    problem = assert_problem(meterd.admin.patch(f"/v1/accounts/{acc}", json={"colour": "red"}), 400)
    assert problem_fields(problem) == {"colour": "unknown field"}
    assert_problem(meterd.admin.patch(f"/v1/accounts/{acc}", json={"name": None}), 400)
    assert_problem(meterd.admin.patch(f"/v1/accounts/{acc}", json={"status": "gone"}), 400)
    assert_problem(meterd.admin.patch("/v1/accounts/acc_doesnotexist", json={"name": "x"}), 404)
    with meterd.client(key) as c:
        assert_problem(c.patch(f"/v1/accounts/{acc}", json={"quota_bytes": 10**12}), 403)
    assert meterd.admin.get(f"/v1/accounts/{acc}").json()["quota_bytes"] is None


# -- keys ----------------------------------------------------------------------------------------

def test_create_key(meterd: Meterd) -> None:
    acc, _ = meterd.new_account()
    resp = meterd.admin.post(f"/v1/accounts/{acc}/keys")
    assert resp.status_code == 201, resp.text
    key = resp.json()
    assert {"id", "prefix", "key"} <= set(key)
    assert key["account_id"] == acc
    assert key["key"].startswith(key["prefix"]) and len(key["prefix"]) < len(key["key"]) - 20
    parse_time(key["created_at"])
    second = meterd.admin.post(f"/v1/accounts/{acc}/keys").json()
    assert second["key"] != key["key"] and second["id"] != key["id"]
    # Shown once: nothing the API returns later carries the plaintext.
    with meterd.client(key["key"]) as c:
        for path in (f"/v1/accounts/{acc}", f"/v1/accounts/{acc}/balance", f"/v1/accounts/{acc}/usage"):
            resp = c.get(path)
            assert resp.status_code == 200
            assert key["key"] not in resp.text
    assert_problem(meterd.admin.post("/v1/accounts/acc_doesnotexist/keys"), 404)


def test_revoked_key_stops_working_at_once(meterd: Meterd) -> None:
    acc, keep = meterd.new_account()
    created = meterd.admin.post(f"/v1/accounts/{acc}/keys").json()
    key = created["key"]
    assert meterd.write(key, unique(), [record(acc)]).accepted == 1
    with meterd.client(key) as c:
        assert c.get(f"/v1/accounts/{acc}").status_code == 200

        assert meterd.admin.delete(f"/v1/accounts/{acc}/keys/{created['id']}").status_code == 204

        assert_problem(c.get(f"/v1/accounts/{acc}"), 401)
        assert_problem(c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(acc)]}), 401)
    with pytest.raises(grpc.RpcError) as info:
        meterd.write(key, unique(), [record(acc)])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The account's other key is untouched; revoking twice or another account's key is 404.
    assert meterd.write(keep, unique(), [record(acc)]).accepted == 1
    assert_problem(meterd.admin.delete(f"/v1/accounts/{acc}/keys/{created['id']}"), 404, "key not found")
    other, _ = meterd.new_account()
    other_key = meterd.admin.post(f"/v1/accounts/{other}/keys").json()
    assert_problem(meterd.admin.delete(f"/v1/accounts/{acc}/keys/{other_key['id']}"), 404)
    with meterd.client(other_key["key"]) as c:
        assert c.get(f"/v1/accounts/{other}").status_code == 200
        assert_problem(c.delete(f"/v1/accounts/{other}/keys/{other_key['id']}"), 403)


# -- usage and balance ---------------------------------------------------------------------------

def test_usage_steps_aggregate(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    # Two and one days ago (UTC midnight based): in the past, well inside the 7-day skew window.
    base = int(time.time()) // 86400 * 86400 - 2 * 86400
    samples = [  # (offset s, bytes_in, bytes_out, requests)
        (10, 1, 10, 1), (50, 2, 20, 1),  # same minute
        (90, 4, 40, 1),  # next minute
        (3605, 8, 80, 1),  # next hour
        (86400 + 7201, 16, 160, 1),  # next day
    ]
    recs = [record(acc, (base + off) * 1000, bytes_in=i, bytes_out=o, requests=r) for off, i, o, r in samples]
    assert meterd.write(key, unique(), recs[:3]).accepted == 3
    with meterd.client(key) as c:
        resp = c.post("/v1/traffic", json={"batch_id": unique(), "records": recs[3:]})
    assert resp.status_code == 202 and resp.json()["accepted"] == 2, resp.text

    window = {"start": iso(base), "end": iso(base + 2 * 86400)}
    totals = {"bytes_in": 31, "bytes_out": 310, "requests": 5}
    meterd.wait_totals(acc, totals, **window, step="1d")

    def points(step: str, **params: str) -> list[tuple[str, int, int, int]]:
        with meterd.client(key) as c:  # read with the account's own key
            resp = c.get(f"/v1/accounts/{acc}/usage", params={**window, "step": step, **params})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["account_id"], body["step"]) == (acc, step)
        assert body["totals"] == {k: sum(p[k] for p in body["points"]) for k in totals}
        return [(p["ts"], p["bytes_in"], p["bytes_out"], p["requests"]) for p in body["points"]]

    assert points("1m") == [(iso(base), 3, 30, 2), (iso(base + 60), 4, 40, 1), (iso(base + 3600), 8, 80, 1),
                            (iso(base + 86400 + 7200), 16, 160, 1)]
    assert points("1h") == [(iso(base), 7, 70, 3), (iso(base + 3600), 8, 80, 1),
                            (iso(base + 86400 + 7200), 16, 160, 1)]
    assert points("1d") == [(iso(base), 15, 150, 4), (iso(base + 86400), 16, 160, 1)]
    # A narrower window holds only its own minutes; bounds are [start, end).
    assert points("1m", start=iso(base + 60), end=iso(base + 3600)) == [(iso(base + 60), 4, 40, 1)]
    assert points("1m", start=iso(base + 61), end=iso(base + 3605)) == [(iso(base + 60), 4, 40, 1),
                                                                        (iso(base + 3600), 8, 80, 1)]
    body = meterd.usage(acc, start=iso(base + 30), end=iso(base + 90), step="1m")
    assert (body["start"], body["end"]) == (iso(base), iso(base + 120))  # aligned to the step


def test_balance_month_to_date(meterd: Meterd) -> None:
    acc, key = meterd.new_account(quota_bytes=1000)
    free, free_key = meterd.new_account()
    ts = now_ms() - 1000
    assert meterd.write(key, unique(), [record(acc, ts, bytes_in=60, bytes_out=50)]).accepted == 1
    assert meterd.write(free_key, unique(), [record(free, ts, bytes_in=7, bytes_out=0)]).accepted == 1
    month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month_end = (month_start + timedelta(days=32)).replace(day=1)

    def balance(account_id: str, token: str) -> dict:
        with meterd.client(token) as c:
            resp = c.get(f"/v1/accounts/{account_id}/balance")
        assert resp.status_code == 200, resp.text
        return resp.json()

    body = wait_until(lambda: (b := balance(acc, key))["used_bytes"] == 110 and b, message="balance 110")
    assert body == {"account_id": acc, "timezone": "UTC",
                    "period_start": month_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "period_end": month_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "quota_bytes": 1000, "used_bytes": 110, "remaining_bytes": 890, "over_quota": False}
    meterd.admin.patch(f"/v1/accounts/{acc}", json={"quota_bytes": 110})
    assert balance(acc, meterd.admin_token) == body | {"quota_bytes": 110, "remaining_bytes": 0}
    meterd.admin.patch(f"/v1/accounts/{acc}", json={"quota_bytes": 100})
    body = balance(acc, key)
    assert (body["quota_bytes"], body["remaining_bytes"], body["over_quota"]) == (100, 0, True)

    body = wait_until(lambda: (b := balance(free, free_key))["used_bytes"] == 7 and b, message="balance 7")
    assert (body["quota_bytes"], body["remaining_bytes"], body["over_quota"]) == (None, None, False)


# -- docs and operations -------------------------------------------------------------------------

def _app_routes() -> set[tuple[str, str]]:
    ctx = ApiContext(repo=None, ledger=None, auth=None, ingest=None,  # type: ignore[arg-type]
                     registry=CollectorRegistry(),
                     max_body_bytes=1)
    out = set()
    for route in build_api(ctx).routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                out.add((route.path_format, method.lower()))  # without convertors, as OpenAPI writes it
    return out


def test_openapi_is_valid_and_lists_every_route(meterd: Meterd) -> None:
    resp = meterd.client("").get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    documented = {(path, method) for path, item in doc["paths"].items() for method in item
                  if method in {"get", "put", "post", "delete", "patch", "head", "options"}}
    # The description documents the API, not itself: /openapi.json and /docs are left out.
    served = {r for r in _app_routes() if r[0] not in {"/openapi.json", "/docs", "/docs/{asset}"}}
    assert served == documented
    for path, item in doc["paths"].items():
        for name in (p.strip("{}") for p in path.split("/") if p.startswith("{")):
            params = item.get("parameters", [])
            assert any(p["name"] == name and p["in"] == "path" for p in params), (path, name)


def test_docs_page(meterd: Meterd) -> None:
    resp = meterd.client("").get("/docs")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in resp.text and "<html" in resp.text


def test_health_ready_metrics_need_no_token(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    meterd.write(key, unique(), [record(acc)])
    with meterd.client("") as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        wait_until(lambda: c.get("/readyz").status_code == 200, message="/readyz 200")
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and {"db", "consumer"} <= set(ready["checks"])
        assert set(ready["checks"].values()) == {"ok"}
        metrics = c.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    lines = [ln for ln in metrics.text.splitlines() if ln.startswith("meterd_ingest_records_total{")]
    accepted = [ln for ln in lines if 'transport="grpc"' in ln and 'result="accepted"' in ln]
    assert accepted and float(accepted[0].rsplit(" ", 1)[1]) >= 1, lines


def test_unknown_route_is_a_problem(meterd: Meterd) -> None:
    assert_problem(meterd.admin.get("/v1/nothing-here"), 404)
    assert_problem(meterd.admin.put("/v1/accounts"), 405)
