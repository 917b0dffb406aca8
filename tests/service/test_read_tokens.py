"""Read-only customer tokens on a real `meterd up`: who may issue them, what they may read, that
every write is refused (HTTP 403, gRPC PERMISSION_DENIED), expiry, revocation, listing without
secrets, bounds; and their storage (hashed, expiry and revocation in the lookup) on SQLite and
PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import grpc
import pytest
from sqlalchemy import select

from service.api.schemas import ReadToken, ReadTokens
from service.storage import Repository, schema
from tests.service.conftest import Meterd, assert_problem, now_ms, pb, problem_fields, record, unique
from tests.service.test_storage import db, repo  # noqa: F401  (fixtures)
from tests.support.meterd import wait_until


def issue(m: Meterd, acc: str, token: str | None = None, **body: int) -> dict:
    with m.client(token) as c:
        resp = c.post(f"/v1/accounts/{acc}/read-tokens", json=body or None)
    assert resp.status_code == 201, resp.text
    ReadToken.model_validate(resp.json())
    return resp.json()


def test_admin_and_own_key_issue_tokens_that_read_one_account(meterd: Meterd) -> None:
    acc, key = meterd.new_account("portal")
    other, _ = meterd.new_account("someone-else")
    by_admin = issue(meterd, acc)
    by_key = issue(meterd, acc, key, ttl_seconds=3600)
    assert by_admin["token"].startswith("mr_") and by_admin["read_only"] is True
    lifetime = (datetime.fromisoformat(by_key["expires_at"].replace("Z", "+00:00"))
                - datetime.fromisoformat(by_key["created_at"].replace("Z", "+00:00")))
    assert lifetime == timedelta(hours=1)
    default = (datetime.fromisoformat(by_admin["expires_at"].replace("Z", "+00:00"))
               - datetime.fromisoformat(by_admin["created_at"].replace("Z", "+00:00")))
    assert default == timedelta(hours=24)
    written = meterd.write(key, unique(), [record(acc)])
    with meterd.client(by_key["token"]) as c:
        for path in ("", "/usage", "/balance", "/billing", "/events"):
            assert c.get(f"/v1/accounts/{acc}{path}").status_code == 200, path
        assert c.get(f"/v1/batches/{written.batch_id}").status_code == 200  # the account's own batches
        for path in ("", "/usage", "/billing"):  # another account: 404, as for an API key
            assert_problem(c.get(f"/v1/accounts/{other}{path}"), 404)
    listed = meterd.admin.get(f"/v1/accounts/{acc}/read-tokens").json()
    ReadTokens.model_validate(listed)
    assert {t["id"] for t in listed["tokens"]} == {by_admin["id"], by_key["id"]}
    assert all("token" not in t for t in listed["tokens"])  # never the secret again


def test_every_write_is_refused(meterd: Meterd) -> None:
    acc, key = meterd.new_account("ro")
    token = issue(meterd, acc)["token"]
    with meterd.client(token) as c:
        traffic = c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(acc)]})
        assert assert_problem(traffic, 403)["type"].endswith("read-only-token")
        assert_problem(c.patch(f"/v1/accounts/{acc}", json={"name": "mine now"}), 403)
        assert_problem(c.post(f"/v1/accounts/{acc}/keys"), 403)
        assert_problem(c.post(f"/v1/accounts/{acc}/webhook-secret"), 403)
        assert_problem(c.post(f"/v1/accounts/{acc}/read-tokens"), 403)  # no token breeding
        assert_problem(c.get(f"/v1/accounts/{acc}/read-tokens"), 403)
        assert_problem(c.post("/v1/accounts", json={"name": "x"}), 403)
        assert_problem(c.put("/v1/regions/eu/nodes/n1"), 403)
    with pytest.raises(grpc.RpcError) as err:
        meterd.stub.Write(pb([record(acc)], unique()), metadata=[("authorization", f"Bearer {token}")], timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert meterd.admin.get(f"/v1/accounts/{acc}/usage").json()["totals"]["requests"] == 0


def test_expiry_and_revocation(meterd: Meterd) -> None:
    acc, key = meterd.new_account("short")
    short = issue(meterd, acc, ttl_seconds=60)
    kept = issue(meterd, acc)
    with meterd.client(key) as c:
        assert c.delete(f"/v1/accounts/{acc}/read-tokens/{kept['id']}").status_code == 204
        assert_problem(c.delete(f"/v1/accounts/{acc}/read-tokens/{kept['id']}"), 404)
    with meterd.client(kept["token"]) as c:
        assert_problem(c.get(f"/v1/accounts/{acc}"), 401)  # at once in the process that revoked it
    ids = {t["id"] for t in meterd.admin.get(f"/v1/accounts/{acc}/read-tokens").json()["tokens"]}
    assert ids == {short["id"]}
    with meterd.client(short["token"]) as c:
        assert c.get(f"/v1/accounts/{acc}").status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"ttl_seconds": 30 * 86400 + 1}, "ttl_seconds"), ({"ttl_seconds": 59}, "ttl_seconds"),
    ({"ttl_seconds": "60"}, "ttl_seconds"), ({"scope": "write"}, "scope")])
def test_bad_token_requests(meterd: Meterd, body: dict, field: str) -> None:
    acc, _ = meterd.new_account("bad-token")
    resp = meterd.admin.post(f"/v1/accounts/{acc}/read-tokens", json=body)
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_other_accounts_and_unauthenticated(meterd: Meterd) -> None:
    acc, _ = meterd.new_account("target")
    _, other_key = meterd.new_account("other")
    with meterd.client(other_key) as c:
        assert_problem(c.post(f"/v1/accounts/{acc}/read-tokens"), 404)
        assert_problem(c.get(f"/v1/accounts/{acc}/read-tokens"), 404)
    with meterd.client("") as c:
        assert_problem(c.post(f"/v1/accounts/{acc}/read-tokens"), 401)
    with meterd.client("mr_" + "x" * 43) as c:  # a made-up token
        assert_problem(c.get(f"/v1/accounts/{acc}"), 401)


def test_live_tokens_are_bounded(meterd: Meterd) -> None:
    acc, _ = meterd.new_account("many")
    for _ in range(100):
        issue(meterd, acc)
    assert_problem(meterd.admin.post(f"/v1/accounts/{acc}/read-tokens"), 409)


# -- storage ---------------------------------------------------------------------------------------

async def test_tokens_are_stored_hashed_and_expire(repo: Repository) -> None:  # noqa: F811
    acc = (await repo.create_account("store", None))["id"]
    made = await repo.create_read_token(acc, 1000)
    assert made is not None
    async with repo.db.engine.connect() as conn:
        rows = (await conn.execute(select(schema.read_tokens))).mappings().all()
    assert [r["token_hash"] for r in rows] == [hashlib.sha256(made["token"].encode()).hexdigest()]
    assert all(made["token"] not in str(dict(r)) for r in rows)
    assert await repo.account_for_read_token(made["token"]) == acc
    assert await repo.account_for_read_token(made["token"] + "x") is None
    assert await repo.account_for_key(made["token"]) is None  # not an API key
    wait_until(lambda: now_ms() > made["expires_at_ms"], timeout=5)
    assert await repo.account_for_read_token(made["token"]) is None
    assert await repo.list_read_tokens(acc) == []
    live = await repo.create_read_token(acc, 60_000)
    assert live is not None and await repo.revoke_read_token(acc, live["id"])
    assert await repo.account_for_read_token(live["token"]) is None
    assert not await repo.revoke_read_token(acc, live["id"])
