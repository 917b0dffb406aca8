"""A real `meterd up` per database backend for the metering tests (rollups, time zones, nodes,
billing, export), with an ingest window wide enough to write last year's traffic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.meterd import meterd_env
from tests.support.meterd_client import Meterd, shared_meterd, unique

PAST_SECONDS = 800 * 86400


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meterd]:
    tmp = tmp_path_factory.mktemp(f"metering-{request.param}")
    extra = {"METERD_INGEST__MAX_PAST_SECONDS": str(PAST_SECONDS),
             "METERD_CONSUMER__DEDUPE_RETENTION_SECONDS": str(PAST_SECONDS),  # at least max_past
             "METERD_CONSUMER__FLUSH_INTERVAL_SECONDS": "0.3",
             # Quick webhook retries so the failing receiver's retries land within the test.
             "METERD_WEBHOOKS__RETRY_BASE_SECONDS": "0.3", "METERD_WEBHOOKS__POLL_INTERVAL_SECONDS": "0.1"}
    server = None
    name = f"t_{uuid.uuid4().hex[:16]}"
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


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def rec(account: str, ts_ms: int, node: str = "edge-1", b_in: int = 1, b_out: int = 2, reqs: int = 1) -> dict:
    return {"account_id": account, "node_id": node, "timestamp_ms": ts_ms, "bytes_in": b_in,
            "bytes_out": b_out, "requests": reqs}


def send(m: Meterd, records: list[dict[str, Any]], chunk: int = 5000) -> None:
    """POST /v1/traffic in batches (admin token), each acknowledged with 202."""
    for i in range(0, len(records), chunk):
        resp = m.admin.post("/v1/traffic", json={"batch_id": unique(), "records": records[i:i + chunk]})
        assert resp.status_code == 202, resp.text


def totals(records: list[dict[str, Any]]) -> dict[str, int]:
    return {"bytes_in": sum(r["bytes_in"] for r in records), "bytes_out": sum(r["bytes_out"] for r in records),
            "requests": sum(r["requests"] for r in records)}


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

