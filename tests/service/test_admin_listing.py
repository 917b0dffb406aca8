"""Admin listing and management over HTTP (shared `meterd up`): accounts by cursor pages and filters,
an account's keys without secrets, suspension and deletion, and the admin-only answers."""

from __future__ import annotations

import pytest

from tests.service.conftest import Meterd, assert_problem, now_ms, record, unique
from tests.support.meterd import wait_until


def test_accounts_are_listed_by_cursor_pages_with_name_and_status_filters(meterd: Meterd) -> None:
    tag = unique("list")
    ids = sorted(meterd.new_account(f"{tag}-{i}")[0] for i in range(3))
    meterd.admin.patch(f"/v1/accounts/{ids[1]}", json={"status": "suspended"})
    first = meterd.admin.get("/v1/accounts", params={"name": tag.upper(), "limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert [a["id"] for a in page["accounts"]] == ids[:2] and page["next_cursor"]
    rest = meterd.admin.get("/v1/accounts", params={"name": tag, "limit": 2, "cursor": page["next_cursor"]}).json()
    assert [a["id"] for a in rest["accounts"]] == ids[2:] and rest["next_cursor"] is None
    suspended = meterd.admin.get("/v1/accounts", params={"name": tag, "status": "suspended"}).json()
    assert [a["id"] for a in suspended["accounts"]] == [ids[1]]
    assert meterd.admin.get("/v1/accounts", params={"name": "%"}).json()["accounts"] == []  # a literal %


@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"status": "gone"}, "status"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "\u00e9t\u00e9"}, "cursor"), ({"name": ""}, "name"),
])
def test_account_listing_bad_parameters_are_400_naming_them(meterd: Meterd, params: dict, field: str) -> None:
    problem = assert_problem(meterd.admin.get("/v1/accounts", params=params), 400)
    assert problem["errors"][0]["field"] == field


def test_keys_are_listed_with_prefix_times_and_no_secret(meterd: Meterd) -> None:
    account, used = meterd.new_account(unique("keys"))
    other = meterd.admin.post(f"/v1/accounts/{account}/keys").json()
    assert meterd.admin.delete(f"/v1/accounts/{account}/keys/{other['id']}").status_code == 204
    with meterd.client(used) as c:
        assert c.get(f"/v1/accounts/{account}").status_code == 200
    body = meterd.admin.get(f"/v1/accounts/{account}/keys").json()
    assert body["account_id"] == account
    by_id = {k["id"]: k for k in body["keys"]}
    assert set(next(iter(by_id.values()))) == {"id", "prefix", "created_at", "last_used_at", "revoked_at"}
    assert by_id[other["id"]]["revoked_at"] is not None and by_id[other["id"]]["last_used_at"] is None
    (used_key,) = [k for k in body["keys"] if k["id"] != other["id"]]
    assert used.startswith(used_key["prefix"]) and used_key["last_used_at"] is not None
    assert used not in str(body) and other["key"] not in str(body)
    assert_problem(meterd.admin.get("/v1/accounts/acc_nope/keys"), 404)


def test_deleted_account_revokes_keys_keeps_usage_and_cannot_change(meterd: Meterd) -> None:
    account, key = meterd.new_account(unique("del"))
    with meterd.client(key) as c:
        assert c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(account, now_ms())]}
                      ).status_code == 202
    wait_until(lambda: meterd.usage(account, step="1m")["totals"]["requests"] == 1, message="usage counted")
    assert meterd.admin.delete(f"/v1/accounts/{account}").status_code == 204
    with meterd.client(key) as c:
        assert_problem(c.get(f"/v1/accounts/{account}"), 401)
    assert meterd.admin.get(f"/v1/accounts/{account}").json()["status"] == "deleted"
    assert meterd.usage(account, step="1m")["totals"]["requests"] == 1  # usage is kept
    assert_problem(meterd.admin.patch(f"/v1/accounts/{account}", json={"status": "active"}), 409)
    assert_problem(meterd.admin.post(f"/v1/accounts/{account}/keys"), 409)
    assert_problem(meterd.admin.delete(f"/v1/accounts/{account}"), 404)
    listed = {a["id"] for a in meterd.admin.get("/v1/accounts", params={"limit": 500}).json()["accounts"]}
    assert account not in listed
    deleted = meterd.admin.get("/v1/accounts", params={"status": "deleted", "limit": 500}).json()["accounts"]
    assert account in {a["id"] for a in deleted}


def test_listing_and_management_are_admin_only(meterd: Meterd) -> None:
    account, key = meterd.new_account(unique("authz"))
    calls = [("GET", "/v1/accounts"), ("GET", f"/v1/accounts/{account}/keys"),
             ("DELETE", f"/v1/accounts/{account}")]
    for method, path in calls:
        with meterd.client(key) as c:
            assert_problem(c.request(method, path), 403, "admin token")
        with meterd.client("") as anonymous:
            assert_problem(anonymous.request(method, path), 401)
    assert meterd.admin.get(f"/v1/accounts/{account}").json()["status"] == "active"
