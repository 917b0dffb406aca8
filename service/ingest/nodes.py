"""ingest.max_nodes_per_account at the writer: a node seen before costs a set lookup; only a batch
with nodes this process has not seen goes to the database registry (one short transaction)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.ingest.errors import FieldViolation, InvalidBatch
from service.pb.meterd.v1 import traffic_pb2
from service.storage import Repository

_MAX_VIOLATIONS = 50


class NodeCap:
    def __init__(self, repo: Repository, cap: int, cache_size: int = 200_000) -> None:
        self._repo = repo
        self._cap = cap
        self._cache_size = cache_size
        self._known: set[tuple[str, str]] = set()  # (account, node) registered
        self._lock = asyncio.Lock()  # one registration at a time per process: the count stays honest

    async def admit(self, pairs: set[tuple[str, str]], records: Sequence[traffic_pb2.TrafficRecord]) -> None:
        """Raises InvalidBatch naming every record whose node would take its account past the cap.
        ``pairs`` are the batch's (account, node) pairs, gathered by validation."""
        new_pairs = pairs - self._known
        if not new_pairs:
            return
        unseen: dict[str, set[str]] = {}
        for account, node in new_pairs:
            unseen.setdefault(account, set()).add(node)
        async with self._lock:
            refused = await self._repo.register_nodes(unseen, self._cap)
        if len(self._known) > self._cache_size:
            self._known.clear()  # bounded memory; the registry answers again
        self._known.update((a, n) for a, nodes in unseen.items() for n in nodes - refused.get(a, set()))
        if refused:
            raise InvalidBatch(self._violations(records, refused))

    def _violations(self, records: Sequence[traffic_pb2.TrafficRecord],
                    refused: dict[str, set[str]]) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        for i, r in enumerate(records):
            if r.node_id in refused.get(r.account_id, ()):
                out.append(FieldViolation(
                    f"records[{i}].node_id", f"new node '{r.node_id}' refused: the account would have more than "
                    f"{self._cap} distinct node ids (ingest.max_nodes_per_account)"))
                if len(out) >= _MAX_VIOLATIONS:
                    break
        return out
