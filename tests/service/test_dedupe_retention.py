"""N3: a batch id is remembered until none of its records can be accepted again, so a retry after
the purge is still a duplicate; a configuration that cannot keep that promise does not start."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from service.api.timeparams import format_rfc3339
from service.storage import Database
from service.storage.ledger import Claim, Flush, Ledger
from tests.service.test_storage import db  # noqa: F401 (the db fixture: both databases)
from tests.support.meterd import MeterdBin, meterd_env, running_meterd, wait_until
from tests.support.meterd_client import record, unique

pytestmark = pytest.mark.timeout(180)
DIGEST = b"d" * 16


async def test_purge_goes_by_the_latest_record_time(db: Database) -> None:  # noqa: F811
    await db.migrate()
    ledger = Ledger(db, future_s=30)
    now = int(time.time())
    await ledger.claim([Claim("a/future", DIGEST, 1, b"p", None, now + 25),
                        Claim("a/past", DIGEST, 1, b"p", None, now - 25)], append_to_log=False)
    await ledger.apply(Flush(applied={"a/future": (DIGEST, 1), "a/past": (DIGEST, 1)}))
    retention = 30
    # 40 s later: the past record (now - 25) is out of the window, the future one (now + 25) is not.
    assert await ledger.purge(now + 40 - retention) == 1
    assert set(await ledger.batch_states(["a/future", "a/past"])) == {"a/future"}
    # Kept for its record time + retention + the clock allowance (max_future), then forgotten.
    assert await ledger.purge(now + 25 + 30 + 29 - retention + 1) == 0
    assert await ledger.purge(now + 25 + 30 + 31 - retention + 1) == 1


def _post(http, key: str, batch_id: str, recs: list) -> dict:  # type: ignore[no-untyped-def]
    resp = http.post("/v1/traffic", json={"batch_id": batch_id, "records": recs},
                     headers={"authorization": f"Bearer {key}"})
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def _bytes_in(admin, acc: str, t0: int) -> int:  # type: ignore[no-untyped-def]
    window = {"start": format_rfc3339(t0 // 1000 - 3600), "end": format_rfc3339(t0 // 1000 + 3600)}
    resp = admin.get(f"/v1/accounts/{acc}/usage", params=window)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["totals"]["bytes_in"])


def test_retry_after_the_purge_is_still_a_duplicate(tmp_path: Path) -> None:
    """The audit's reproduction B with a shorter clock: retention = max_past = 30 s, max_future 30 s,
    one record stamped t0 + 25 s. The old code forgot the id by claim time at the restart and
    counted the retry again."""
    env = meterd_env(tmp_path, METERD_INGEST__MAX_PAST_SECONDS="30", METERD_INGEST__MAX_FUTURE_SECONDS="30",
                     METERD_CONSUMER__DEDUPE_RETENTION_SECONDS="30")
    t0 = int(time.time() * 1000)
    future_id, past_id = unique("future"), unique("past")
    with running_meterd(tmp_path, "up", env=env) as m, m.client() as admin:
        acc = admin.post("/v1/accounts", json={"name": "retry"}).json()["id"]
        key = admin.post(f"/v1/accounts/{acc}/keys").json()["key"]
        assert not _post(admin, key, future_id, [record(acc, t0 + 25_000, bytes_in=7, bytes_out=0)])["duplicate"]
        assert not _post(admin, key, past_id, [record(acc, t0 - 25_000, bytes_in=1, bytes_out=0)])["duplicate"]
        wait_until(lambda: _bytes_in(admin, acc, t0) == 8, message="both batches counted")
        time.sleep(max(0.0, t0 / 1000 + 36 - time.time()))  # both claims are past retention now
    # A restart clears the writer's in-process ack cache and runs the purge at once.
    with running_meterd(tmp_path, "up", env=env) as m, m.client() as admin:
        wait_until(lambda: "purged expired batch ids" in m.output(), timeout=15, message="the start-up purge")
        assert time.time() * 1000 < t0 + 50_000, "too slow to retry while the record is acceptable"
        again = _post(admin, key, future_id, [record(acc, t0 + 25_000, bytes_in=7, bytes_out=0)])
        assert again["duplicate"] is True, again
        time.sleep(2)  # a wrongly appended retry would be counted by now
        assert _bytes_in(admin, acc, t0) == 8
        assert admin.get(f"/v1/batches/{past_id}", headers={"authorization": f"Bearer {key}"}).status_code == 404


def test_retention_shorter_than_the_ingest_window_is_refused(tmp_path: Path) -> None:
    env = meterd_env(tmp_path, METERD_CONSUMER__DEDUPE_RETENTION_SECONDS="5")
    res = subprocess.run([MeterdBin, "up"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "consumer.dedupe_retention_seconds" in lines[0], res.stderr
    assert "ingest.max_past_seconds" in lines[0] and "Traceback" not in res.stderr
