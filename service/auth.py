"""Bearer-token authentication shared by HTTP and gRPC."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

from governance import Rejection
from service.credential_gate import KeyHashFilter, PeerBudget
from service.storage import Repository


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: str | None  # None: the admin
    read_only: bool = False  # a customer token (mr_...): reads its account, writes nothing

    @property
    def is_admin(self) -> bool:
        return self.account_id is None

    @property
    def name(self) -> str:
        return "admin" if self.account_id is None else self.account_id

    def may_read(self, account_id: str) -> bool:
        return self.account_id is None or self.account_id == account_id


ADMIN = Principal(None)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


MISSING = object()  # Authenticator.peek: nothing cached for this credential
STALE = object()  # Authenticator.peek: valid within the last `known_seconds`, to be checked again


def credential_digest(token: str) -> bytes:
    """A stable, non-reversible id of a (normalised) token: cache and quota keys never hold one."""
    return hashlib.blake2b(token.encode(), digest_size=16).digest()


class Authenticator:
    """Bearer tokens -> principals, with a short cache keyed by the normalised token's digest (valid
    and invalid answers alike), so a credential costs one lookup a second however often it is sent,
    and a revoked key stops working within `cache_seconds` (+ one lookup)."""

    def __init__(self, repo: Repository, admin_token: str, *, cache_seconds: float = 1.0,
                 cache_size: int = 100_000, known_seconds: float = 600.0) -> None:
        self._repo = repo
        self._admin = admin_token.encode()
        self._ttl = cache_seconds
        self._size = cache_size
        # digest -> (principal or None, expiry); insertion order = expiry order, oldest evicted first
        self._cache: OrderedDict[bytes, tuple[Principal | None, float]] = OrderedDict()
        # digests of credentials that were valid lately (-> expiry): a lookup for one of these is
        # never a flood's made-up token, so it is not held back by its peer's budget
        self._known: OrderedDict[bytes, float] = OrderedDict()
        self._known_ttl = known_seconds
        # Every path that authenticates charges its failures here (the `auth` plugin installs its own).
        self.budget = PeerBudget()
        self.valid_keys = KeyHashFilter(lambda since_ms: repo.active_key_hashes(since_ms))

    def _local(self, authorization: str | None) -> tuple[Principal | None, str, bytes, float]:
        """What can be answered without I/O: (principal, token, digest, now); an empty digest
        means the answer is final (no, bad or admin credentials, or a cache hit)."""
        token = bearer_token(authorization)
        if token is None:
            return None, "", b"", 0.0
        if hmac.compare_digest(token.encode(), self._admin):
            return ADMIN, "", b"", 0.0
        if not token.startswith(("mk_", "mr_")) or len(token) > 200:
            return None, "", b"", 0.0
        digest, now = credential_digest(token), time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0], "", b"", 0.0
        return None, token, digest, now

    def peek(self, authorization: str | None) -> Principal | None | object:
        """The cached answer for this header without any I/O: a Principal, None (no or bad
        credentials), STALE (a lookup is needed; it was valid lately) or MISSING (a lookup is needed)."""
        principal, _, digest, now = self._local(authorization)
        if not digest:
            return principal
        known = self._known.get(digest)
        return STALE if known is not None and known > now else MISSING

    async def authenticate(self, authorization: str | None) -> Principal | None:
        principal, token, digest, now = self._local(authorization)
        if not digest:
            return principal
        read_only = token.startswith("mr_")
        lookup = self._repo.account_for_read_token if read_only else self._repo.account_for_key
        account_id = await lookup(token)
        principal = Principal(account_id, read_only) if account_id else None
        if self._ttl > 0:
            cache = self._cache
            cache.pop(digest, None)
            cache[digest] = (principal, time.monotonic() + self._ttl)
            while len(cache) > self._size or (cache and next(iter(cache.values()))[1] <= now):
                cache.popitem(last=False)  # O(1): the oldest entries expire first
        if principal is not None:
            known = self._known
            known.pop(digest, None)
            known[digest] = now + self._known_ttl
            while known and (len(known) > self._size or next(iter(known.values())) <= now):
                known.popitem(last=False)
        return principal

    async def check(self, authorization: str | None, peer: str | None,
                    budget: PeerBudget | None = None) -> Principal | Rejection | None:
        """authenticate() behind the peer budget: a Principal, None (no or bad credentials: charged to
        `peer`), or the budget's Rejection when `peer` is over it and the credential cannot be a valid
        key (neither valid lately nor in the valid-key filter): refused without a database lookup.
        Raises DependencyUnavailable when the lookup cannot be made."""
        budget = budget or self.budget
        known = self.peek(authorization)
        if isinstance(known, Principal):
            return known
        peer_key, now = f"ip:{peer or 'unknown'}", time.time()
        if known is not STALE:  # a key valid lately is looked up whatever its peer's neighbours do
            refused = budget.refusal(peer_key, now)
            if refused is not None and (known is not MISSING or not await self._may_be_key(authorization)):
                return refused
        if known is MISSING or known is STALE:
            principal = await self.authenticate(authorization)
            if principal is not None:
                return principal
        budget.charge(peer_key, now)
        return None

    async def _may_be_key(self, authorization: str | None) -> bool:
        token = bearer_token(authorization)
        return token is not None and await self.valid_keys.may_be_valid(token)

    def forget_account(self, account_id: str) -> None:
        """Drop the cached answers for an account's keys (a key was revoked here: it stops at once in
        this process; other processes see it when their entry expires). An admin action: a scan is fine."""
        for digest in [d for d, (p, _) in self._cache.items() if p is not None and p.account_id == account_id]:
            del self._cache[digest]
