"""One real `meterd up` (embedded Tansu broker, SQLite) shared by the service tests of a session.

Starting meterd and letting its consumer join the group costs several seconds, so the bad-input,
account-API and contract tests share one process; each test creates its own accounts, so tests do
not see each other's data. The limits are set small so oversized batches/messages stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The helpers live in tests/support/meterd_client.py (shared with tests/security and tests/fuzz);
# they are re-exported here because the service tests import them from this module.
from tests.support.meterd import meterd_env
from tests.support.meterd_client import (  # noqa: F401
    PROBLEM_TYPE,
    Meterd,
    assert_problem,
    bearer,
    grpc_violations,
    now_ms,
    pb,
    problem_fields,
    record,
    shared_meterd,
    unique,
)

MAX_BATCH_RECORDS = 20
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_PAST_SECONDS = 7 * 24 * 3600  # the default, stated here so tests can aim just outside it
MAX_FUTURE_SECONDS = 300


@pytest.fixture
async def sqlite_ledger(tmp_path):  # type: ignore[no-untyped-def]
    """The pipeline's bookkeeping on a fresh SQLite file."""
    from service.storage import create_database
    from service.storage.ledger import Ledger

    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await db.migrate()
    yield Ledger(db)
    await db.close()


@pytest.fixture(scope="session")
def meterd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meterd]:
    tmp = tmp_path_factory.mktemp("meterd-shared")
    env = meterd_env(tmp, METERD_INGEST__MAX_BATCH_RECORDS=str(MAX_BATCH_RECORDS),
                     METERD_GRPC__MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
                     METERD_HTTP__MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                     METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.5")
    with shared_meterd(tmp, env) as m:
        yield m
