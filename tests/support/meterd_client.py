"""Client-side helpers for tests that talk to a real meterd: accounts, records, problem checks.

Shared by tests/service, tests/security and tests/fuzz. `shared_meterd()` starts one `meterd up`
and wraps it in a `Meterd` handle (admin HTTP client, gRPC channel and stub).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service.pb.meterd.v1 import traffic_pb2, traffic_pb2_grpc
from tests.support.meterd import MeterdProc, running_meterd, wait_until

PROBLEM_TYPE = "application/problem+json"


def now_ms() -> int:
    return int(time.time() * 1000)


def unique(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def record(account_id: str, ts_ms: int | None = None, *, node_id: str = "edge-1", bytes_in: int = 1,
           bytes_out: int = 2, requests: int = 1) -> dict[str, Any]:
    """A record as JSON (POST /v1/traffic); `pb()` turns it into the gRPC message."""
    return {"account_id": account_id, "node_id": node_id, "timestamp_ms": now_ms() if ts_ms is None else ts_ms,
            "bytes_in": bytes_in, "bytes_out": bytes_out, "requests": requests}


def pb(records: list[dict[str, Any]], batch_id: str) -> traffic_pb2.WriteRequest:
    return traffic_pb2.WriteRequest(batch_id=batch_id, records=[traffic_pb2.TrafficRecord(**r) for r in records])


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def assert_problem(resp: httpx.Response, status: int, detail_contains: str | None = None) -> dict[str, Any]:
    """Every error is RFC 9457: problem+json with type, title, status and detail."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM_TYPE), resp.headers
    body = resp.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert body["title"] and body["type"]
    if detail_contains is not None:
        assert detail_contains in body["detail"], body
    return body


def problem_fields(body: dict[str, Any]) -> dict[str, str]:
    """field -> detail of a 400's `errors` list."""
    return {e["field"]: e["detail"] for e in body.get("errors", [])}


def grpc_violations(err: grpc.RpcError) -> dict[str, str]:
    """field -> description of the google.rpc.BadRequest detail of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


@dataclass
class Meterd:
    proc: MeterdProc
    admin: httpx.Client  # carries the admin token
    channel: grpc.Channel
    stub: traffic_pb2_grpc.TrafficWriterStub

    @property
    def admin_token(self) -> str:
        return self.proc.admin_token

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client with `token`, or with no Authorization header when token is ''."""
        assert self.proc.http is not None
        headers = {} if token == "" else {"authorization": f"Bearer {token or self.admin_token}"}
        return httpx.Client(base_url=self.proc.http, headers=headers, timeout=10)

    def new_account(self, name: str = "acct", quota_bytes: int | None = None) -> tuple[str, str]:
        """Creates an account and one API key; returns (account_id, key)."""
        resp = self.admin.post("/v1/accounts", json={"name": name, "quota_bytes": quota_bytes})
        assert resp.status_code == 201, resp.text
        account_id = resp.json()["id"]
        resp = self.admin.post(f"/v1/accounts/{account_id}/keys")
        assert resp.status_code == 201, resp.text
        return account_id, resp.json()["key"]

    def write(self, token: str, batch_id: str, records: list[dict[str, Any]]) -> traffic_pb2.WriteResponse:
        return self.stub.Write(pb(records, batch_id), metadata=bearer(token), timeout=15)

    def usage(self, account_id: str, **params: str) -> dict[str, Any]:
        resp = self.admin.get(f"/v1/accounts/{account_id}/usage", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_totals(self, account_id: str, expected: dict[str, int], timeout: float = 45.0,
                    **params: str) -> dict[str, Any]:
        """Polls usage until the totals equal `expected` (the consumer flushes on an interval)."""
        def reached() -> dict[str, Any] | None:
            body = self.usage(account_id, **params)
            return body if body["totals"] == expected else None

        return wait_until(reached, timeout=timeout, interval=0.25, message=f"usage totals {expected}")


@contextlib.contextmanager
def shared_meterd(tmp: Path, env: dict[str, str]) -> Iterator[Meterd]:
    """One real `meterd up` with `env` (see `meterd_env`), stopped gracefully (exit code 0) afterwards."""
    with running_meterd(tmp, "up", env=env) as proc:
        assert proc.http and proc.grpc, proc.output()
        admin = proc.client()
        # Client-side limits must not hide the server's: let big messages reach the server.
        channel = grpc.insecure_channel(proc.grpc, options=[("grpc.max_send_message_length", 16 << 20),
                                                            ("grpc.max_receive_message_length", 16 << 20)])
        try:
            yield Meterd(proc, admin, channel, traffic_pb2_grpc.TrafficWriterStub(channel))
        finally:
            channel.close()
            admin.close()
            # SIGTERM, not the context manager's SIGKILL: the graceful drain runs (and must exit 0).
            assert proc.stop(30) == 0, proc.output()[-3000:]
