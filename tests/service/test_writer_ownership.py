"""Issue 23 / audit note "lookup order in the writer": an account key's batch is checked for foreign
records before any account status is looked up, so a key writing another account's records (up to
10,000 made-up ids per batch) is refused without a query; the lookup then covers only its own id."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.auth import ADMIN, Principal
from service.config import Settings
from service.ingest.errors import ForeignRecords
from service.ingest.writer import IngestService
from service.metrics import PipelineMetrics
from service.pb.meterd.v1 import traffic_pb2
from tests.support.meterd_client import now_ms


class _SpyRepo:
    def __init__(self) -> None:
        self.lookups: list[list[str]] = []

    async def account_statuses(self, account_ids: list[str]) -> dict[str, str]:
        self.lookups.append(sorted(account_ids))
        return dict.fromkeys(account_ids, "active")

    async def register_nodes(self, wanted: dict[str, set[str]], cap: int) -> dict[str, set[str]]:
        return {}  # the node cap admits every node here (tested in test_node_cap.py)


class _NoLog:
    name = "database"

    async def append(self, outgoing: Any) -> bool:
        return False


def records(*accounts: str) -> list[traffic_pb2.TrafficRecord]:
    return [traffic_pb2.TrafficRecord(account_id=a, node_id="n", timestamp_ms=now_ms(), bytes_in=1) for a in accounts]


def service(repo: _SpyRepo) -> IngestService:
    return IngestService(Settings(), repo, _NoLog(), PipelineMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def test_foreign_records_are_refused_before_any_lookup() -> None:
    repo = _SpyRepo()
    batch = records("acc_a", *(f"acc_{i}" for i in range(5000)))
    with pytest.raises(ForeignRecords, match=r"records\[1\]\.account_id"):
        asyncio.run(service(repo).write(Principal("acc_a"), "b1", batch, "http"))
    assert repo.lookups == []


def test_an_account_key_looks_up_only_its_own_account() -> None:
    repo = _SpyRepo()
    result = asyncio.run(service(repo).write(Principal("acc_a"), "b1", records("acc_a", "acc_a"), "http"))
    assert result.accepted == 2 and repo.lookups == [["acc_a"]]


def test_the_admin_still_writes_any_account() -> None:
    repo = _SpyRepo()
    result = asyncio.run(service(repo).write(ADMIN, "b1", records("acc_a", "acc_b"), "http"))
    assert result.accepted == 2 and repo.lookups == [["acc_a", "acc_b"]]
