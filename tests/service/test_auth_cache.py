"""Unit tests of the Authenticator's cache (a fake repository stands in for the database): one lookup
per credential per second whatever its spelling, revocation seen once the entry expires, bounded."""

from __future__ import annotations

import asyncio
import time

from service.auth import MISSING, STALE, Authenticator, Principal


class _Repo:
    def __init__(self) -> None:
        self.keys = {"mk_good": "acc_1"}
        self.lookups = 0

    async def account_for_key(self, key: str) -> str | None:
        self.lookups += 1
        return self.keys.get(key)


def test_spellings_share_one_cached_lookup() -> None:
    repo = _Repo()
    auth = Authenticator(repo, "admin-token", cache_seconds=60)  # type: ignore[arg-type]

    async def go() -> list[Principal | None]:
        return [await auth.authenticate(h) for h in ("Bearer mk_good", "bearer mk_good", "Bearer  mk_good",
                                                      "BEARER mk_good ")]

    assert asyncio.run(go()) == [Principal("acc_1")] * 4
    assert repo.lookups == 1
    assert auth.peek("bearer  mk_good") == Principal("acc_1")


def test_revocation_is_seen_when_the_entry_expires() -> None:
    repo = _Repo()
    auth = Authenticator(repo, "admin-token", cache_seconds=0.2)  # type: ignore[arg-type]
    assert asyncio.run(auth.authenticate("Bearer mk_good")) == Principal("acc_1")
    del repo.keys["mk_good"]
    assert asyncio.run(auth.authenticate("Bearer mk_good")) == Principal("acc_1")  # cached
    time.sleep(0.25)
    assert auth.peek("Bearer mk_good") is STALE  # was valid lately: looked up again, not budgeted
    assert asyncio.run(auth.authenticate("Bearer mk_good")) is None
    assert repo.lookups == 2


def test_forget_account_drops_its_keys_at_once() -> None:
    repo = _Repo()
    auth = Authenticator(repo, "admin-token", cache_seconds=60)  # type: ignore[arg-type]
    assert asyncio.run(auth.authenticate("Bearer mk_good")) == Principal("acc_1")
    del repo.keys["mk_good"]
    auth.forget_account("acc_1")
    assert asyncio.run(auth.authenticate("Bearer mk_good")) is None


def test_bad_tokens_are_cached_too_and_the_cache_is_bounded() -> None:
    repo = _Repo()
    auth = Authenticator(repo, "admin-token", cache_seconds=60, cache_size=100)  # type: ignore[arg-type]

    async def go() -> None:
        for i in range(1_000):
            assert await auth.authenticate(f"Bearer mk_bad{i}") is None
        assert await auth.authenticate("Bearer mk_bad999") is None  # negative answer cached

    asyncio.run(go())
    assert repo.lookups == 1_000
    assert auth.peek("Bearer mk_bad0") is MISSING  # evicted: the cache holds at most 100
    assert auth.peek("Bearer mk_bad999") is None
    assert auth.peek("Bearer admin-token") is not None and auth.peek("Basic x") is None
