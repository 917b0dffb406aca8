"""A short-lived cache of account statuses, so validating a batch is not a query per record."""

from __future__ import annotations

import time

from service.storage import Repository


class AccountStatusCache:
    def __init__(self, repo: Repository, ttl_seconds: float) -> None:
        self._repo = repo
        self._ttl = ttl_seconds
        # account id -> (status or None for unknown, expiry)
        self._entries: dict[str, tuple[str | None, float]] = {}

    async def statuses(self, account_ids: set[str]) -> dict[str, str]:
        now = time.monotonic()
        out: dict[str, str] = {}
        missing = []
        for acc in account_ids:
            hit = self._entries.get(acc)
            if hit is not None and hit[1] > now:
                if hit[0] is not None:
                    out[acc] = hit[0]
            else:
                missing.append(acc)
        if missing:
            found = await self._repo.account_statuses(missing)
            expiry = now + self._ttl
            if len(self._entries) > 100_000:  # bounded: forget everything rather than grow
                self._entries.clear()
            for acc in missing:
                status = found.get(acc)
                self._entries[acc] = (status, expiry)
                if status is not None:
                    out[acc] = status
        return out

    def invalidate(self, account_id: str) -> None:
        self._entries.pop(account_id, None)
