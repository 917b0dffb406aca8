"""One real `meterd up` for the fuzzers (HTTP via schemathesis, gRPC via hypothesis).

Small limits (64 KiB body and message, 20 records a batch) keep generated oversize inputs cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.governance_env import roomy_unauthenticated_budget
from tests.support.meterd import meterd_env
from tests.support.meterd_client import Meterd, shared_meterd

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BATCH_RECORDS = 20


@pytest.fixture(scope="session")
def fuzz_meterd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meterd]:
    tmp = tmp_path_factory.mktemp("meterd-fuzz")
    env = meterd_env(tmp, METERD_HTTP__MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                     METERD_GRPC__MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
                     METERD_INGEST__MAX_BATCH_RECORDS=str(MAX_BATCH_RECORDS),
                     # the fuzzers send many bad credentials from one address: let them reach the
                     # handlers (the per-address budget has tests of its own)
                     **roomy_unauthenticated_budget())
    with shared_meterd(tmp, env) as m:
        yield m


@dataclass(frozen=True)
class FuzzAccounts:
    admin_target: str  # an account the admin fuzzer may change (PATCH, keys)
    own: str  # the account of `own_key`
    own_key: str
    other: str  # another account, for records a key may not write


@pytest.fixture(scope="session")
def fuzz_accounts(fuzz_meterd: Meterd) -> FuzzAccounts:
    admin_target, _ = fuzz_meterd.new_account("fuzz-admin-target")
    own, own_key = fuzz_meterd.new_account("fuzz-own")
    other, _ = fuzz_meterd.new_account("fuzz-other")
    return FuzzAccounts(admin_target, own, own_key, other)
