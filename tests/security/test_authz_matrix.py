"""Authorization matrix: every HTTP endpoint and gRPC method × every kind of credential → the exact answer.

Columns (conftest.CREDENTIALS): no Authorization header; a malformed header (the admin token
without the Bearer scheme); a wrong token shaped like a key; a revoked key of the target account;
a key of another account; a key of the target account; a read-only token of the target account;
the admin token.

Rows are tables below. The live processes report what they serve (tests/support/served_routes.py),
and `test_every_served_*_has_a_row` fails for any route or gRPC method without a row, so a new
endpoint cannot ship without someone deciding who may call it. Rows marked `conditional` (the
profiling routes) are checked only when the build serves them.

The last tests search everything the processes printed during the matrix (DEBUG level) for the
admin token, the API keys and their hashes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from service.pb.meterd.v1 import traffic_pb2_grpc
from service.storage.repository import hash_key
from tests.security.conftest import CREDENTIALS, Principals, SecurityMeterd
from tests.support.meterd import MeterdProc
from tests.support.meterd_client import PROBLEM_TYPE, pb, record, unique
from tests.support.require import skip_or_fail
from tests.support.served_routes import Endpoint, ServedSurface, flatten

UNAUTHENTICATED = ("none", "malformed", "wrong", "revoked")


def admin_only(ok: int) -> dict[str, int]:
    return {**dict.fromkeys(UNAUTHENTICATED, 401), "other": 403, "own": 403, "readonly": 403, "admin": ok}


def own_or_admin(ok: int) -> dict[str, int]:
    # Another account's id answers 404, not 403: a key must not learn which account ids exist.
    # These rows are reads: the account's read-only token may make them too.
    return {**dict.fromkeys(UNAUTHENTICATED, 401), "other": 404, "own": ok, "readonly": ok, "admin": ok}


def token_managers(ok: int) -> dict[str, int]:
    # The admin or the account's own key; a read-only token may not breed or list tokens.
    return {**dict.fromkeys(UNAUTHENTICATED, 401), "other": 404, "own": ok, "readonly": 403, "admin": ok}


def public(ok: int = 200) -> dict[str, int]:
    return dict.fromkeys(CREDENTIALS, ok)


@dataclass(frozen=True)
class Ctx:
    sec: SecurityMeterd
    who: Principals


@dataclass(frozen=True)
class Row:
    method: str
    path: str  # the route template, exactly as the app declares it
    expect: dict[str, int]
    body: Callable[[Ctx], Any] | None = None
    query: dict[str, str] = field(default_factory=dict)
    conditional: bool = False  # checked only when the build serves the route
    fresh_account: bool = False  # {account_id} is a new account per cell (the call destroys it)
    note: str = ""


def _traffic(ctx: Ctx) -> dict[str, Any]:
    # Records of the target account: its own key may write them, another account's key may not.
    return {"batch_id": unique("matrix"), "records": [record(ctx.who.account)]}


API_ROWS = [
    Row("POST", "/v1/accounts", admin_only(201), body=lambda ctx: {"name": "matrix-created"}),
    Row("GET", "/v1/accounts", admin_only(200)),
    Row("GET", "/v1/accounts/{account_id}", own_or_admin(200)),
    Row("PATCH", "/v1/accounts/{account_id}", admin_only(200), body=lambda ctx: {"name": "matrix-target"}),
    Row("DELETE", "/v1/accounts/{account_id}", admin_only(204), fresh_account=True,
        note="an account made for the cell: the own key is the target's, refused before any lookup"),
    Row("POST", "/v1/accounts/{account_id}/keys", admin_only(201)),
    Row("GET", "/v1/accounts/{account_id}/keys", admin_only(200)),
    Row("DELETE", "/v1/accounts/{account_id}/keys/{key_id}", admin_only(204),
        note="key_id is a fresh key of the target account for every cell"),
    Row("GET", "/v1/accounts/{account_id}/usage", own_or_admin(200)),
    Row("GET", "/v1/accounts/{account_id}/balance", own_or_admin(200)),
    Row("GET", "/v1/accounts/{account_id}/billing", own_or_admin(200)),
    Row("GET", "/v1/accounts/{account_id}/billing/forecast", own_or_admin(200)),
    Row("POST", "/v1/accounts/{account_id}/adjustments", admin_only(201), body=lambda ctx: {
        "idempotency_key": unique("matrix"), "node_id": "matrix-node", "interval": "2026-01-01T00:00:00Z",
        "bytes_in": 1, "reason": "authz matrix"}),
    Row("GET", "/v1/accounts/{account_id}/adjustments", own_or_admin(200)),
    Row("POST", "/v1/accounts/{account_id}/periods/{month}/close", admin_only(409),
        note="the current month has not ended: the admin passes the guard and is told so"),
    Row("GET", "/v1/accounts/{account_id}/events", own_or_admin(200)),
    Row("POST", "/v1/accounts/{account_id}/webhook-secret", admin_only(200)),
    Row("POST", "/v1/accounts/{account_id}/events/{event_id}/redeliver", admin_only(404),
        note="no such event: the admin passes authorization and gets 404"),
    Row("GET", "/v1/regions", admin_only(200)),
    Row("PUT", "/v1/regions/{region}/nodes/{node_id}", admin_only(200)),
    Row("DELETE", "/v1/regions/{region}/nodes/{node_id}", admin_only(404),
        note="a node never mapped: the admin passes the guard and finds nothing"),
    Row("POST", "/v1/accounts/{account_id}/read-tokens", token_managers(201)),
    Row("GET", "/v1/accounts/{account_id}/read-tokens", token_managers(200)),
    Row("DELETE", "/v1/accounts/{account_id}/read-tokens/{token_id}", token_managers(404),
        note="a token id never issued: callers who pass the guard find nothing"),
    Row("POST", "/v1/traffic", {**dict.fromkeys(UNAUTHENTICATED, 401), "other": 403, "own": 202, "readonly": 403,
                                "admin": 202},
        body=_traffic),
    # Batch ids are scoped by the principal that wrote them: only that principal finds the batch
    # (the account's read-only token reads as the account, so it finds the account's batches).
    Row("GET", "/v1/batches/{batch_id}", {**dict.fromkeys(UNAUTHENTICATED, 401), "other": 404, "own": 200,
                                           "readonly": 200, "admin": 404},
        note="a batch the target account's own key wrote"),
    Row("GET", "/healthz", public()),
    Row("GET", "/readyz", public()),
    Row("GET", "/metrics", public()),
    Row("GET", "/openapi.json", public()),
    Row("GET", "/docs", public()),
    Row("GET", "/docs/{asset}", public(), note="Swagger UI's files, a fixed list"),
]
# DESIGN §4: "/debug/profiles… | admin". Wrong, malformed and revoked credentials are 401 like
# everywhere else (RFC 6750: an invalid token is an authentication failure, not a permission one).
# (Before service.api.admin_guard they got 403: profiling's boolean `authorize` cannot tell
# "invalid credentials" from "not the admin".)
PROFILE_ROWS = [
    Row("GET", "/debug/profiles/", admin_only(200), conditional=True),
    Row("GET", "/debug/profiles/index.json", admin_only(200), conditional=True),
    Row("GET", "/debug/profiles/files/{name}", admin_only(404), conditional=True,
        note="no such capture: the admin passes authorization and gets the store's 404"),
    Row("POST", "/debug/profiles/start", admin_only(201), query={"duration_s": "30"}, conditional=True),
    Row("POST", "/debug/profiles/stop", admin_only(200), conditional=True),
]
# The admin HTTP server of roles that serve no user API (writer, consumer).
ADMIN_ROWS = [
    Row("GET", "/healthz", public()),
    Row("GET", "/readyz", public()),
    Row("GET", "/metrics", public()),
]
HTTP_MATRIX: dict[tuple[str, str, str], Row] = {
    **{("api", r.method, r.path): r for r in [*API_ROWS, *PROFILE_ROWS]},
    **{("admin", r.method, r.path): r for r in [*ADMIN_ROWS, *PROFILE_ROWS]},
}


def missing_rows(served: dict[str, list[Endpoint]], matrix: dict[tuple[str, str, str], Row]) -> list[str]:
    return [f"{server}: {m} {p}" for server, endpoints in sorted(served.items()) for m, p in endpoints
            if (server, m, p) not in matrix]


def served_http(up: ServedSurface, writer: ServedSurface) -> dict[str, list[Endpoint]]:
    served: dict[str, set[Endpoint]] = {}
    for surface in (up, writer):
        for server, endpoints in surface.http.items():
            served.setdefault(server, set()).update(endpoints)
    return {k: sorted(v) for k, v in served.items()}


# -- completeness ---------------------------------------------------------------------------------
def test_every_served_http_endpoint_has_a_row(up_surface: ServedSurface, writer_surface: ServedSurface) -> None:
    served = served_http(up_surface, writer_surface)
    assert set(served) == {"api", "admin"}, served
    missing = missing_rows(served, HTTP_MATRIX)
    assert not missing, ("HTTP endpoints without an authorization-matrix row (add a Row to "
                         "tests/security/test_authz_matrix.py saying who may call them):\n  " + "\n  ".join(missing))
    stale = [f"{s}: {m} {p}" for (s, m, p), row in HTTP_MATRIX.items()
             if not row.conditional and (m, p) not in served[s]]
    assert not stale, "matrix rows for endpoints the service no longer serves:\n  " + "\n  ".join(stale)


def test_every_openapi_operation_is_served_and_has_a_row(sec: SecurityMeterd, up_surface: ServedSurface) -> None:
    doc = sec.m.admin.get("/openapi.json").json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item
                  if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}}
    assert len(operations) >= 11, operations
    assert not operations - set(up_surface.http["api"]), "documented but not served"
    assert not [op for op in operations if ("api", *op) not in HTTP_MATRIX]


def test_completeness_check_catches_an_unlisted_route() -> None:
    """The check itself can fail: a route hidden behind middleware and a mount is still found."""

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    class Wrapper:  # ASGI middleware keeps the next app in `.app`, like governance's
        def __init__(self, app: Any) -> None:
            self.app = app

    app = Wrapper(Starlette(routes=[Route("/healthz", ok), Route("/v1/new", ok, methods=["PUT"]),
                                    Mount("/debug/profiles", routes=[Route("/", ok), Route("/secret", ok)])]))
    endpoints = flatten(app)
    assert ("GET", "/debug/profiles/") in endpoints
    assert missing_rows({"api": endpoints}, HTTP_MATRIX) == ["api: GET /debug/profiles/secret", "api: PUT /v1/new"]


# -- HTTP cells -------------------------------------------------------------------------------------
def _base_url(request: pytest.FixtureRequest, server: str, sec: SecurityMeterd) -> str:
    if server == "api":
        assert sec.m.proc.http
        return sec.m.proc.http
    writer: MeterdProc = request.getfixturevalue("sec_writer")
    assert writer.admin
    return writer.admin


def _served(request: pytest.FixtureRequest, server: str) -> list[Endpoint]:
    up: ServedSurface = request.getfixturevalue("up_surface")
    if server == "api":
        return up.http.get("api", [])
    writer: ServedSurface = request.getfixturevalue("writer_surface")
    return writer.http.get("admin", [])


def _path(row: Row, ctx: Ctx) -> str:
    params: dict[str, str] = {}
    if "{account_id}" in row.path:
        params["account_id"] = ctx.sec.new_account("matrix-deleted")[0] if row.fresh_account else ctx.who.account
    if "{key_id}" in row.path:
        params["key_id"] = ctx.sec.new_key(ctx.who.account)["id"]
    if "{name}" in row.path:
        params["name"] = "no-such-capture.svg"
    if "{batch_id}" in row.path:
        params["batch_id"] = ctx.who.own_batch
    if "{event_id}" in row.path:
        params["event_id"] = "evt_nosuchevent"
    if "{asset}" in row.path:
        params["asset"] = "swagger-ui.css"
    if "{month}" in row.path:
        params["month"] = time.strftime("%Y-%m", time.gmtime())
    if "{token_id}" in row.path:
        params["token_id"] = "rt_never_issued"
    if "{region}" in row.path:  # PUT maps matrix-put; DELETE asks for matrix-delete, never mapped
        params.update(region="matrix", node_id=f"matrix-{row.method.lower()}")
    return row.path.format(**params)


def _check_cell(request: pytest.FixtureRequest, sec: SecurityMeterd, who: Principals, server: str, row: Row,
                cred: str) -> str | None:
    """Runs one cell; returns what was wrong, or None."""
    ctx = Ctx(sec, who)
    auth = who.authorization(cred)
    headers = {} if auth is None else {"authorization": auth}
    body = row.body(ctx) if row.body else None
    with httpx.Client(base_url=_base_url(request, server, sec), timeout=15) as client:
        resp = client.request(row.method, _path(row, ctx), headers=headers, json=body, params=row.query)
    if resp.status_code == 201 and row.path == "/v1/accounts/{account_id}/keys":
        sec.issued_keys.append(resp.json()["key"])
    expected = row.expect[cred]
    where = f"{server} {row.method} {row.path} [{cred}]"
    if resp.status_code != expected:
        return f"{where}: expected {expected}, got {resp.status_code}: {resp.text[:300]}"
    if expected == 401 and not resp.headers.get("www-authenticate", "").lower().startswith("bearer"):
        return f"{where}: 401 without 'WWW-Authenticate: Bearer': {dict(resp.headers)}"
    if expected >= 400:
        if not resp.headers.get("content-type", "").startswith(PROBLEM_TYPE):
            return f"{where}: error is not {PROBLEM_TYPE}: {resp.headers.get('content-type')}"
        if resp.json().get("status") != expected:
            return f"{where}: problem status {resp.json().get('status')} != {expected}"
    return None


# One test per cell for the routes every build serves; the conditional (profiling) rows run all
# their credentials in one test, so a build without them shows one skip per route, not seven.
HTTP_CELLS = [pytest.param(server, row, cred, id=f"{server} {method} {path} [{cred}]")
              for (server, method, path), row in HTTP_MATRIX.items() if not row.conditional for cred in CREDENTIALS]
CONDITIONAL_ROWS = [pytest.param(server, row, id=f"{server} {method} {path}")
                    for (server, method, path), row in HTTP_MATRIX.items() if row.conditional]


@pytest.mark.parametrize(("server", "row", "cred"), HTTP_CELLS)
def test_http_cell(request: pytest.FixtureRequest, sec: SecurityMeterd, principals: Principals,
                   server: str, row: Row, cred: str) -> None:
    served = _served(request, server)
    assert (row.method, row.path) in served, f"{row.method} {row.path}: a matrix row, but {server} does not serve it"
    problem = _check_cell(request, sec, principals, server, row, cred)
    assert problem is None, problem


@pytest.mark.parametrize(("server", "row"), CONDITIONAL_ROWS)
def test_http_conditional_row(request: pytest.FixtureRequest, sec: SecurityMeterd, principals: Principals,
                              server: str, row: Row) -> None:
    if (row.method, row.path) not in _served(request, server):
        # CI builds serve them: a CI run without them fails rather than counting a skip.
        skip_or_fail(f"{row.method} {row.path} is not served by this build ({server} server)")
    problems = [p for cred in CREDENTIALS if (p := _check_cell(request, sec, principals, server, row, cred))]
    assert not problems, "\n".join(problems)


def test_malformed_authorization_headers_are_401(sec: SecurityMeterd, principals: Principals) -> None:
    """Variants of a broken header on an own-or-admin endpoint: each is an authentication failure."""
    token = principals.admin_token
    variants = ["", "Bearer", "Basic dXNlcjpwYXNzd29yZA==", f"Token {token}", f"Bearer{token}",
                f"Bearer {token}x", f"Bearer {token[:-1]}", f"Bearer {principals.own_key[:-1]}",
                f"Bearer {principals.own_key.upper()}", "Bearer mk_", "Bearer " + "mk_" + "a" * 300]
    with sec.m.client("") as client:
        for value in variants:
            resp = client.get(f"/v1/accounts/{principals.account}", headers={"authorization": value})
            assert resp.status_code == 401, (value, resp.text)
            assert resp.headers["www-authenticate"].startswith("Bearer")


# -- gRPC -----------------------------------------------------------------------------------------------
OK = grpc.StatusCode.OK
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
GrpcCall = Callable[[grpc.Channel, Principals, list[tuple[str, str]]], None]


def _write(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    stub = traffic_pb2_grpc.TrafficWriterStub(channel)
    resp = stub.Write(pb([record(who.account)], unique("matrix")), metadata=md, timeout=15)
    assert resp.accepted == 1


def _write_stream(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    stub = traffic_pb2_grpc.TrafficWriterStub(channel)
    requests = [pb([record(who.account)], unique("matrix")) for _ in range(2)]
    responses = list(stub.WriteStream(iter(requests), metadata=md, timeout=15))
    assert [r.batch_id for r in responses] == [r.batch_id for r in requests]


def _health_check(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), metadata=md,
                                                      timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _health_list(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    resp = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), metadata=md, timeout=5)
    assert "meterd.v1.TrafficWriter" in resp.statuses


def _health_watch(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="meterd.v1.TrafficWriter"), metadata=md, timeout=5)
    first = next(stream)
    stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def _reflection(channel: grpc.Channel, who: Principals, md: list[tuple[str, str]]) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               metadata=md, timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "meterd.v1.TrafficWriter" in names


WRITE_EXPECT = {**dict.fromkeys(UNAUTHENTICATED, UNAUTH), "other": DENIED, "own": OK, "readonly": DENIED, "admin": OK}
# Health and reflection are public by design (load balancers and grpcurl need no credentials);
# these rows state it, so making them authenticated — or not — is a visible decision.
PUBLIC_GRPC = dict.fromkeys(CREDENTIALS, OK)
# grpcio-health-checking registers List (newer health.proto) but its asyncio servicer does not
# implement it: the same UNIMPLEMENTED for every caller, no credential needed or used.
PUBLIC_UNIMPLEMENTED = dict.fromkeys(CREDENTIALS, grpc.StatusCode.UNIMPLEMENTED)
GRPC_MATRIX: dict[str, tuple[dict[str, grpc.StatusCode], GrpcCall]] = {
    "/meterd.v1.TrafficWriter/Write": (WRITE_EXPECT, _write),
    "/meterd.v1.TrafficWriter/WriteStream": (WRITE_EXPECT, _write_stream),
    "/grpc.health.v1.Health/Check": (PUBLIC_GRPC, _health_check),
    "/grpc.health.v1.Health/List": (PUBLIC_UNIMPLEMENTED, _health_list),
    "/grpc.health.v1.Health/Watch": (PUBLIC_GRPC, _health_watch),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (PUBLIC_GRPC, _reflection),
}


def test_every_served_grpc_method_has_a_row(up_surface: ServedSurface, writer_surface: ServedSurface) -> None:
    for surface in (up_surface, writer_surface):
        assert not surface.unlisted_grpc_services(), "services registered without a method list"
        missing = sorted(set(surface.grpc_methods) - set(GRPC_MATRIX))
        assert not missing, "gRPC methods without an authorization-matrix row:\n  " + "\n  ".join(missing)
        assert {"/meterd.v1.TrafficWriter/Write", "/meterd.v1.TrafficWriter/WriteStream"} <= set(surface.grpc_methods)


GRPC_CELLS = [pytest.param(method, cred, id=f"{method} [{cred}]") for method in GRPC_MATRIX for cred in CREDENTIALS]


@pytest.mark.parametrize(("method", "cred"), GRPC_CELLS)
def test_grpc_cell(sec: SecurityMeterd, principals: Principals, up_surface: ServedSurface,
                   method: str, cred: str) -> None:
    assert method in up_surface.grpc_methods, f"{method} has a matrix row but is not served"
    expected, call = GRPC_MATRIX[method]
    auth = principals.authorization(cred)
    md = [] if auth is None else [("authorization", auth)]
    try:
        call(sec.m.channel, principals, md)
        code = OK
    except grpc.RpcError as err:
        code = err.code()
        if code == UNAUTH:
            assert "authorization" in (err.details() or ""), err.details()
    assert code == expected[cred], f"{method} with {cred}: expected {expected[cred].name}, got {code.name}"


def test_write_stream_messages_after_revocation(sec: SecurityMeterd, principals: Principals) -> None:
    """The WriteStream row holds per message, not per stream: a key revoked while its stream is open
    is refused (UNAUTHENTICATED) on the next message, and within 2 s."""
    import queue
    import time

    key = sec.new_key(principals.account)
    requests: queue.Queue[Any] = queue.Queue()

    def feed() -> Any:
        while (item := requests.get()) is not None:
            yield item

    stub = traffic_pb2_grpc.TrafficWriterStub(sec.m.channel)
    responses = stub.WriteStream(feed(), metadata=[("authorization", f"Bearer {key['key']}")], timeout=30)
    requests.put(pb([record(principals.account)], unique("matrix-stream")))
    assert next(responses).accepted == 1
    assert sec.m.admin.delete(f"/v1/accounts/{principals.account}/keys/{key['id']}").status_code == 204
    revoked_at = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        while True:
            requests.put(pb([record(principals.account)], unique("matrix-stream")))
            next(responses)
            time.sleep(0.1)
    assert err.value.code() == UNAUTH, err.value
    assert time.monotonic() - revoked_at < 2.0
    requests.put(None)


# -- secrets in logs (after the matrix: this file's tests run in order) --------------------------------
def _exercise_all_credentials(sec: SecurityMeterd, who: Principals) -> None:
    """A small pass over every credential, so the log checks mean something when run alone too."""
    for cred in CREDENTIALS:
        auth = who.authorization(cred)
        headers = {} if auth is None else {"authorization": auth}
        with sec.m.client("") as client:
            client.get(f"/v1/accounts/{who.account}", headers=headers)
            client.post("/v1/traffic", headers=headers, json={"batch_id": unique("log"),
                                                               "records": [record(who.account)]})
        try:
            _write(sec.m.channel, who, [] if auth is None else [("authorization", auth)])
        except grpc.RpcError:
            pass


def test_no_token_or_key_in_logs(sec: SecurityMeterd, principals: Principals) -> None:
    _exercise_all_credentials(sec, principals)
    outputs = sec.outputs()
    up = outputs["meterd up"]
    assert "[debug" in up, "meterd was expected to log at DEBUG for this test"
    assert "admin token (development mode" not in up, "METERD_ADMIN_TOKEN is set: nothing may be generated or printed"
    secrets = {"admin token": principals.admin_token, "wrong token": principals.wrong_token,
               **{f"API key {k[:10]}…": k for k in sec.issued_keys}}
    assert len(sec.issued_keys) >= 3
    leaks = [f"{what} in {proc} output" for proc, text in outputs.items() for what, s in secrets.items() if s in text]
    assert not leaks, leaks


def test_no_token_or_key_in_metrics(sec: SecurityMeterd, principals: Principals,
                                    request: pytest.FixtureRequest) -> None:
    """Per-client labels (governance keys clients by credential) must not carry the credential itself."""
    _exercise_all_credentials(sec, principals)
    writer: MeterdProc = request.getfixturevalue("sec_writer")
    texts = {"api /metrics": sec.m.admin.get("/metrics").text,
             "writer admin /metrics": httpx.get(f"{writer.admin}/metrics", timeout=10).text}
    assert all("process_open_fds" in t for t in texts.values())
    secrets = [principals.admin_token, principals.wrong_token, *sec.issued_keys]
    secrets += [hash_key(k) for k in sec.issued_keys]
    leaks = [f"{s[:10]}… in {where}" for where, text in texts.items() for s in secrets if s in text]
    assert not leaks, leaks


# aiosqlite logs every statement with its parameters at DEBUG: before logging_setup silenced it,
# the key-hash lookup of every authenticated request reached the log.
def test_no_key_hash_in_logs(sec: SecurityMeterd, principals: Principals) -> None:
    _exercise_all_credentials(sec, principals)
    hashes = {hash_key(k): k[:10] for k in sec.issued_keys}
    leaks = [f"hash of {prefix}… in {proc} output" for proc, text in sec.outputs().items()
             for h, prefix in hashes.items() if h in text]
    assert not leaks, leaks[:5]
