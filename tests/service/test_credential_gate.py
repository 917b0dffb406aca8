"""Unit tests of Authenticator.check and the valid-key filter (a fake repository stands in for the
database): once a peer is over its budget, a flood of made-up tokens costs no key lookup and at most
one filter refresh per interval, while a valid key never seen before is still looked up and passes."""

from __future__ import annotations

import asyncio
import secrets

from governance import Rejection
from service.auth import Authenticator, Principal
from service.credential_gate import KeyHashFilter, PeerBudget
from service.storage.repository import hash_key


class _Repo:
    def __init__(self) -> None:
        self.keys = {"mk_fresh_valid": "acc_1"}
        self.lookups = self.loads = 0

    async def account_for_key(self, key: str) -> str | None:
        self.lookups += 1
        return self.keys.get(key)

    async def active_key_hashes(self, since_ms: int = 0) -> list[tuple[str, int]]:
        self.loads += 1
        return [(hash_key(k), 1) for k in self.keys]


def test_a_flood_costs_no_lookup_once_over_budget_and_a_fresh_key_passes() -> None:
    repo = _Repo()
    auth = Authenticator(repo, "admin-token")  # type: ignore[arg-type]
    auth.budget = PeerBudget("5/minute")

    async def go() -> tuple[list[object], object]:
        answers = [await auth.check(f"Bearer mk_{secrets.token_hex(16)}", "10.0.0.1") for _ in range(1000)]
        return answers, await auth.check("Bearer mk_fresh_valid", "10.0.0.1")

    answers, fresh = asyncio.run(go())
    assert answers[:5] == [None] * 5 and all(isinstance(a, Rejection) for a in answers[5:])
    assert repo.lookups == 5 + 1  # five failures charged, then only the valid key
    assert repo.loads <= 2  # the filter: loaded once (plus at most one refresh), not per token
    assert fresh == Principal("acc_1")


def test_another_peer_keeps_its_own_budget() -> None:
    auth = Authenticator(_Repo(), "admin-token")  # type: ignore[arg-type]
    auth.budget = PeerBudget("1/minute")

    async def go() -> list[object]:
        return [await auth.check("Bearer mk_bad", "10.0.0.1"), await auth.check("Bearer mk_bad2", "10.0.0.1"),
                await auth.check("Bearer mk_bad3", "10.0.0.2")]

    first, second, other = asyncio.run(go())
    assert first is None and isinstance(second, Rejection) and other is None


def test_the_filter_learns_new_keys_and_forgets_revoked_ones_on_rebuild() -> None:
    repo = _Repo()
    filt = KeyHashFilter(repo.active_key_hashes, refresh_seconds=0.05, rebuild_seconds=0.2)

    async def go() -> list[bool]:
        seen = [await filt.may_be_valid("mk_fresh_valid"), await filt.may_be_valid("mk_later")]
        repo.keys["mk_later"] = "acc_2"
        await asyncio.sleep(0.06)
        seen.append(await filt.may_be_valid("mk_later"))  # topped up after refresh_seconds
        del repo.keys["mk_fresh_valid"]
        await asyncio.sleep(0.25)
        await filt.may_be_valid("mk_unknown")  # a miss after rebuild_seconds rebuilds the set
        seen.append(await filt.may_be_valid("mk_fresh_valid"))
        return seen

    assert asyncio.run(go()) == [True, False, True, False]


def test_the_filter_turns_itself_off_beyond_max_keys() -> None:
    repo = _Repo()
    repo.keys.update({f"mk_{i}": "acc" for i in range(10)})
    filt = KeyHashFilter(repo.active_key_hashes, max_keys=5)
    assert asyncio.run(filt.may_be_valid("mk_1")) is False and not filt.enabled
