"""Acceptance 3: bad input never loses data and always explains itself, over HTTP and gRPC.

Every rejection is checked for its exact status and for a message that names what was wrong
(gRPC field violations name the record index and field).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest

from tests.service.conftest import (
    MAX_BATCH_RECORDS,
    MAX_BODY_BYTES,
    MAX_FUTURE_SECONDS,
    MAX_MESSAGE_BYTES,
    MAX_PAST_SECONDS,
    Meterd,
    assert_problem,
    bearer,
    grpc_violations,
    now_ms,
    pb,
    problem_fields,
    record,
    unique,
)


def post_traffic(m: Meterd, body: object, token: str | None = None):  # type: ignore[no-untyped-def]
    with m.client(token) as c:
        return c.post("/v1/traffic", json=body)


def grpc_error(m: Meterd, token: str, batch_id: str, records: list[dict]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        m.write(token, batch_id, records)
    return info.value


# -- accounts ------------------------------------------------------------------------------------

def test_unknown_account_http(meterd: Meterd) -> None:
    acc, _ = meterd.new_account()
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": [
        record(acc), record("acc_doesnotexist")]}), 400, "records[1].account_id: unknown account 'acc_doesnotexist'")
    assert problem_fields(body) == {"records[1].account_id": "unknown account 'acc_doesnotexist'"}


def test_unknown_account_grpc(meterd: Meterd) -> None:
    err = grpc_error(meterd, meterd.admin_token, unique(), [record("acc_doesnotexist")])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "records[0].account_id" in err.details()
    assert grpc_violations(err) == {"records[0].account_id": "unknown account 'acc_doesnotexist'"}


def test_suspended_account_rejected_then_accepted_again(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    assert meterd.admin.patch(f"/v1/accounts/{acc}", json={"status": "suspended"}).status_code == 200
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": [record(acc)]}, key), 400)
    assert problem_fields(body) == {"records[0].account_id": f"account '{acc}' is suspended"}
    err = grpc_error(meterd, key, unique(), [record(acc), record(acc)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_violations(err) == {f"records[{i}].account_id": f"account '{acc}' is suspended" for i in (0, 1)}
    # Reactivation takes effect at once (the status cache is invalidated by PATCH).
    assert meterd.admin.patch(f"/v1/accounts/{acc}", json={"status": "active"}).status_code == 200
    assert meterd.write(key, unique(), [record(acc)]).accepted == 1


# -- record fields -------------------------------------------------------------------------------

def test_missing_fields_http(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    records = [record(acc), record(acc), record(acc)]
    del records[0]["account_id"]
    del records[1]["node_id"]
    del records[2]["timestamp_ms"]
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 400,
                          "records[0].account_id")
    assert problem_fields(body) == {
        "records[0].account_id": "is required and must be a non-empty string",
        "records[1].node_id": "is required and must be a non-empty string",
        "records[2].timestamp_ms": "is required (Unix time in milliseconds)",
    }
    assert "(and 2 more)" in body["detail"]


def test_missing_batch_id_and_records_http(meterd: Meterd) -> None:
    body = assert_problem(post_traffic(meterd, {}), 400)
    assert problem_fields(body) == {"batch_id": "is required and must be a string",
                                    "records": "is required and must be an array"}


def test_missing_fields_grpc(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    records = [record(acc), record(acc, node_id=""), record(acc, ts_ms=0)]
    records[0]["account_id"] = ""
    err = grpc_error(meterd, meterd.admin_token, unique(), records)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_violations(err) == {
        "records[0].account_id": "is required",
        "records[1].node_id": "is required",
        "records[2].timestamp_ms": "is required (Unix time in milliseconds)",
    }
    err = grpc_error(meterd, key, unique(), [])
    assert grpc_violations(err) == {"records": "must contain at least one record"}


def test_negative_values_http(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    records = [record(acc), record(acc, bytes_in=-1), record(acc, requests=-5)]
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 400,
                          "records[1].bytes_in: must be >= 0")
    assert problem_fields(body) == {"records[1].bytes_in": "must be >= 0", "records[2].requests": "must be >= 0"}


def test_non_integer_values_http(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    records = [record(acc), record(acc), record(acc), record(acc)]
    records[0]["bytes_out"] = "12"
    records[1]["requests"] = 1.5
    records[2]["timestamp_ms"] = True
    records[3]["node_id"] = 7
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 400)
    assert problem_fields(body) == {
        "records[0].bytes_out": "must be an integer",
        "records[1].requests": "must be an integer",
        "records[2].timestamp_ms": "must be an integer",
        "records[3].node_id": "is required and must be a non-empty string",
    }


def test_values_over_the_per_record_ceiling(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    limit = 1 << 44  # ingest.max_bytes_per_record default
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": [
        record(acc, bytes_out=limit + 1)]}, key), 400)
    assert problem_fields(body) == {"records[0].bytes_out": f"must be at most {limit}"}
    err = grpc_error(meterd, key, unique(), [record(acc), record(acc, bytes_in=limit + 1)])
    assert grpc_violations(err) == {"records[1].bytes_in": f"must be at most {limit}"}


def test_unknown_json_fields(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    rec = record(acc) | {"colour": "blue"}
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": [record(acc), rec],
                                                "extra": 1}, key), 400)
    assert problem_fields(body) == {"extra": "unknown field", "records[1].colour": "unknown field"}


def test_body_not_an_object(meterd: Meterd) -> None:
    body = assert_problem(post_traffic(meterd, [1, 2]), 400)
    assert problem_fields(body) == {"body": "must be a JSON object {batch_id, records}"}


def test_bad_batch_id(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    body = assert_problem(post_traffic(meterd, {"batch_id": "has space", "records": [record(acc)]}, key), 400)
    assert list(problem_fields(body)) == ["batch_id"]
    err = grpc_error(meterd, key, "x" * 129, [record(acc)])
    assert list(grpc_violations(err)) == ["batch_id"]


# -- time window ---------------------------------------------------------------------------------

def test_timestamps_outside_the_skew_window(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    old = now_ms() - (MAX_PAST_SECONDS + 3600) * 1000
    future = now_ms() + (MAX_FUTURE_SECONDS + 600) * 1000
    records = [record(acc), record(acc, ts_ms=old), record(acc, ts_ms=future)]
    expected = {"records[1].timestamp_ms": f"is more than {MAX_PAST_SECONDS} s in the past",
                "records[2].timestamp_ms": f"is more than {MAX_FUTURE_SECONDS} s in the future"}
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 400,
                          "records[1].timestamp_ms")
    assert problem_fields(body) == expected
    err = grpc_error(meterd, key, unique(), records)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_violations(err) == expected


# -- sizes ---------------------------------------------------------------------------------------

def test_oversized_batch(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    records = [record(acc) for _ in range(MAX_BATCH_RECORDS + 1)]
    expected = {"records": f"has {MAX_BATCH_RECORDS + 1} records; the limit is {MAX_BATCH_RECORDS}"}
    body = assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 400)
    assert problem_fields(body) == expected
    err = grpc_error(meterd, key, unique(), records)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_violations(err) == expected
    # Exactly at the limit is fine.
    assert meterd.write(key, unique(), records[:MAX_BATCH_RECORDS]).accepted == MAX_BATCH_RECORDS


def test_oversized_grpc_message(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    big = record(acc, node_id="n" * (MAX_MESSAGE_BYTES + 1))
    err = grpc_error(meterd, key, unique(), [big])
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE_BYTES) in err.details()


def test_oversized_http_body(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    body = {"batch_id": unique(), "records": [record(acc, node_id="n" * MAX_BODY_BYTES)]}
    assert_problem(post_traffic(meterd, body, key), 413, f"request body exceeds {MAX_BODY_BYTES} bytes")

    # Without Content-Length (chunked) the cap still holds while streaming.
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(MAX_BODY_BYTES // 1024 + 8):
            yield b" " * 1024
    with meterd.client(key) as c:
        resp = c.post("/v1/traffic", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers
    assert_problem(resp, 413, f"request body exceeds {MAX_BODY_BYTES} bytes")


def test_malformed_json(meterd: Meterd) -> None:
    _, key = meterd.new_account()
    with meterd.client(key) as c:
        resp = c.post("/v1/traffic", content=b'{"batch_id": "a", "records": [', headers={
            "content-type": "application/json"})
    body = assert_problem(resp, 400, "the body is not valid JSON")
    assert body["title"] == "Malformed JSON"
    assert body["type"].endswith("/malformed-json")


# -- authentication and authorization -------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer mk_wrongwrongwrong", "Bearer wrong-admin-token",
                                    "Basic dXNlcjpwYXNz", "Bearer"])
def test_http_missing_or_wrong_token(meterd: Meterd, header: str | None) -> None:
    acc, _ = meterd.new_account()
    with meterd.client("") as c:
        headers = {} if header is None else {"authorization": header}
        resp = c.post("/v1/traffic", json={"batch_id": unique(), "records": [record(acc)]}, headers=headers)
        assert_problem(resp, 401, "Authorization: Bearer")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert_problem(c.get(f"/v1/accounts/{acc}", headers=headers), 401)


@pytest.mark.parametrize("metadata", [None, "Bearer mk_wrongwrongwrong", "Bearer wrong-admin-token", "token"])
def test_grpc_missing_or_wrong_token(meterd: Meterd, metadata: str | None) -> None:
    acc, _ = meterd.new_account()
    md = None if metadata is None else [("authorization", metadata)]
    with pytest.raises(grpc.RpcError) as info:
        meterd.stub.Write(pb([record(acc)], unique()), metadata=md, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(meterd.stub.WriteStream(iter([pb([record(acc)], unique())]), metadata=md, timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_key_writing_another_accounts_records(meterd: Meterd) -> None:
    mine, key = meterd.new_account()
    other, _ = meterd.new_account()
    records = [record(mine), record(other)]
    assert_problem(post_traffic(meterd, {"batch_id": unique(), "records": records}, key), 403,
                   "records[1].account_id: an account key may only write its own records")
    err = grpc_error(meterd, key, unique(), records)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "records[1].account_id" in err.details()
    # The admin token may write any account's records.
    assert meterd.write(meterd.admin_token, unique(), records).accepted == 2


def test_other_accounts_id_is_not_found(meterd: Meterd) -> None:
    _, key = meterd.new_account()
    other, _ = meterd.new_account()
    with meterd.client(key) as c:
        for path in (f"/v1/accounts/{other}", f"/v1/accounts/{other}/usage", f"/v1/accounts/{other}/balance"):
            assert_problem(c.get(path), 404, "account not found")
        # Same answer as for an id that does not exist: a key learns nothing about other ids.
        assert_problem(c.get("/v1/accounts/acc_doesnotexist/usage"), 404, "account not found")


def test_account_key_cannot_use_admin_endpoints(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    with meterd.client(key) as c:
        assert_problem(c.post("/v1/accounts", json={"name": "x"}), 403, "admin token")
        assert_problem(c.post(f"/v1/accounts/{acc}/keys"), 403, "admin token")


# -- idempotency ---------------------------------------------------------------------------------

def test_batch_id_reused_with_different_records(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    ts = now_ms()
    batch_id = unique()
    first = [record(acc, ts, bytes_in=10)]
    assert meterd.write(key, batch_id, first).duplicate is False
    # The same batch again (a retry) is a duplicate, over either transport.
    again = meterd.write(key, batch_id, first)
    assert (again.duplicate, again.batch_id) == (True, batch_id)
    resp = post_traffic(meterd, {"batch_id": batch_id, "records": first}, key)
    assert resp.status_code == 202 and resp.json()["duplicate"] is True, resp.text
    # Different records under the same id: a conflict, never a silent overwrite.
    changed = [record(acc, ts, bytes_in=11)]
    err = grpc_error(meterd, key, batch_id, changed)
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"batch_id '{batch_id}' was already used for different records" in err.details()
    assert_problem(post_traffic(meterd, {"batch_id": batch_id, "records": changed}, key), 409,
                   f"batch_id '{batch_id}' was already used for different records")
    meterd.wait_totals(acc, {"bytes_in": 10, "bytes_out": 2, "requests": 1})


# -- usage query parameters ----------------------------------------------------------------------

def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("params", "field", "detail"), [
    ({"step": "5m"}, "step", "must be one of 1m, 1h, 1d"),
    ({"start": "yesterday"}, "start", "must be an RFC 3339 time"),
    ({"end": "2026-13-01T00:00:00Z"}, "end", "must be an RFC 3339 time"),
    ({"start": "2026-01-01T00:00:00"}, "start", "must carry a UTC offset"),
    ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start", "must be before end"),
    ({"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start", "must be before end"),
    ({"start": "2000-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "step": "1m"}, "step",
     "more than 10000 steps"),
])
def test_bad_usage_params(meterd: Meterd, params: dict[str, str], field: str, detail: str) -> None:
    acc, key = meterd.new_account()
    with meterd.client(key) as c:
        body = assert_problem(c.get(f"/v1/accounts/{acc}/usage", params=params), 400)
    fields = problem_fields(body)
    assert list(fields) == [field]
    assert detail in fields[field]


def test_usage_start_after_end_within_one_step(meterd: Meterd) -> None:
    """start > end must be rejected even when both fall inside the same step."""
    acc, key = meterd.new_account()
    minute = int(time.time()) // 60 * 60 - 600
    params = {"start": _iso(minute + 40), "end": _iso(minute + 20), "step": "1m"}
    with meterd.client(key) as c:
        body = assert_problem(c.get(f"/v1/accounts/{acc}/usage", params=params), 400)
    assert problem_fields(body) == {"start": "must be before end"}


# -- nothing is lost -----------------------------------------------------------------------------

def test_rejections_write_nothing_and_valid_batch_still_counts(meterd: Meterd) -> None:
    acc, key = meterd.new_account()
    other, _ = meterd.new_account()
    old = now_ms() - (MAX_PAST_SECONDS + 60) * 1000
    bad_batches = [
        [record(acc, bytes_in=1000), record("acc_doesnotexist")],
        [record(acc, bytes_in=1000), record(acc, ts_ms=old)],
        [record(acc, bytes_in=1000) for _ in range(MAX_BATCH_RECORDS + 1)],
        [record(acc, bytes_in=1000), record(acc, node_id="")],
    ]
    for records in bad_batches:  # the admin token may write any account: validation alone rejects these
        assert post_traffic(meterd, {"batch_id": unique(), "records": records}).status_code == 400
        assert grpc_error(meterd, meterd.admin_token, unique(), records).code() == grpc.StatusCode.INVALID_ARGUMENT
    foreign = [record(acc, bytes_in=1000), record(other, bytes_in=1000)]
    assert post_traffic(meterd, {"batch_id": unique(), "records": foreign}, key).status_code == 403
    assert grpc_error(meterd, key, unique(), foreign).code() == grpc.StatusCode.PERMISSION_DENIED
    assert post_traffic(meterd, {"batch_id": unique(), "records": [record(acc, bytes_in=-1)]}, key).status_code == 400

    # The valid batch goes through after all those, over both transports.
    ts = now_ms()
    assert meterd.write(key, unique(), [record(acc, ts, bytes_in=3, bytes_out=4, requests=5)]).accepted == 1
    resp = post_traffic(meterd, {"batch_id": unique(), "records": [record(acc, ts, bytes_in=6, bytes_out=7,
                                                                          requests=8)]}, key)
    assert resp.status_code == 202 and resp.json()["accepted"] == 1, resp.text
    expected = {"bytes_in": 9, "bytes_out": 11, "requests": 13}
    meterd.wait_totals(acc, expected)
    # Several flush intervals later still exactly the valid records: nothing rejected leaked in.
    time.sleep(1.5)
    assert meterd.usage(acc)["totals"] == expected
    assert meterd.usage(other)["totals"] == {"bytes_in": 0, "bytes_out": 0, "requests": 0}


def test_grpc_write_stream_stops_at_the_rejected_batch(meterd: Meterd) -> None:
    acc, _ = meterd.new_account()
    key = meterd.admin_token  # so the unknown account is a validation error, not a foreign record
    requests = [pb([record(acc, bytes_in=1)], unique()), pb([record("acc_doesnotexist")], unique()),
                pb([record(acc, bytes_in=100)], unique())]
    responses = []
    with pytest.raises(grpc.RpcError) as info:
        for resp in meterd.stub.WriteStream(iter(requests), metadata=bearer(key), timeout=15):
            responses.append(resp)
    assert [r.batch_id for r in responses] == [requests[0].batch_id]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_violations(info.value) == {"records[0].account_id": "unknown account 'acc_doesnotexist'"}
    meterd.wait_totals(acc, {"bytes_in": 1, "bytes_out": 2, "requests": 1})


# -- unit level: the shared write path with a real SQLite store ------------------------------------

@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_oversized_batch_is_rejected_before_any_lookup(tmp_path, request, dialect) -> None:  # type: ignore[no-untyped-def]
    """A huge batch of distinct account ids must get the batch-size violation, not a database error
    (asyncpg allows at most 32767 bound parameters in one statement)."""
    from prometheus_client import CollectorRegistry

    from service.auth import ADMIN
    from service.config import Settings
    from service.ingest.errors import InvalidBatch
    from service.ingest.writer import IngestService
    from service.metrics import PipelineMetrics
    from service.pipeline.logs import DatabaseLog
    from service.storage import Repository, create_database
    from service.storage.ledger import Ledger

    url = (f"sqlite+aiosqlite:///{tmp_path / 'm.db'}" if dialect == "sqlite"
           else request.getfixturevalue("fresh_postgres_db").url)
    db = create_database(url)
    await db.migrate()
    settings = Settings(data_dir=tmp_path)
    metrics = PipelineMetrics(CollectorRegistry())
    ingest = IngestService(settings, Repository(db), DatabaseLog(Ledger(db), settings.ingest, metrics), metrics)
    n = 40_000
    records = pb([record(f"acc_{i}") for i in range(n)], "big").records
    try:
        with pytest.raises(InvalidBatch) as info:
            await ingest.write(ADMIN, "big", records, "grpc")
    finally:
        await db.close()
    limit = settings.ingest.max_batch_records
    assert [(v.field, v.description) for v in info.value.violations] == [
        ("records", f"has {n} records; the limit is {limit}")]
