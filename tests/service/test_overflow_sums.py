"""N1: no sum a writer can reach stops the consumer. A month of maximum-size batches passes 2^63
bytes; the quota event recording that month must not overflow, and every other account keeps
being counted (a real `meterd up`, the audit's reproduction)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage.rollup import BIGINT_MAX
from tests.support.meterd import meterd_env
from tests.support.meterd_client import Meterd, bearer, now_ms, pb, record, shared_meterd

pytestmark = pytest.mark.timeout(240)

MAX_BYTES = 1 << 44  # ingest.max_bytes_per_record's default
MAX_RECORDS = 10_000  # ingest.max_batch_records' default


@pytest.fixture(scope="module")
def meterd(tmp_path_factory: pytest.TempPathFactory) -> Meterd:
    tmp: Path = tmp_path_factory.mktemp("overflow")
    with shared_meterd(tmp, meterd_env(tmp)) as m:
        yield m  # type: ignore[misc]


def test_month_total_past_bigint_does_not_stop_metering(meterd: Meterd) -> None:
    heavy, heavy_key = meterd.new_account("heavy")  # no quota yet: no crossing checked while it fills
    victim, victim_key = meterd.new_account("victim", quota_bytes=10**12)
    ts = now_ms()
    big = [record(heavy, ts, node_id="n", bytes_in=MAX_BYTES, bytes_out=MAX_BYTES)] * MAX_RECORDS
    for i in range(27):  # 27 x 10,000 x 2^45 > 2^63
        meterd.stub.Write(pb(big, f"big-{i}"), metadata=bearer(heavy_key), timeout=60)
    expected_requests = 27 * MAX_RECORDS
    totals = meterd.wait_totals(heavy, {"bytes_in": 27 * MAX_RECORDS * MAX_BYTES,
                                        "bytes_out": 27 * MAX_RECORDS * MAX_BYTES,
                                        "requests": expected_requests}, timeout=120)["totals"]
    assert totals["bytes_in"] + totals["bytes_out"] > BIGINT_MAX
    # A quota on the heavy account makes its next flush record a crossing with a sum past 2^63.
    assert meterd.admin.patch(f"/v1/accounts/{heavy}", json={"quota_bytes": 10**12}).status_code == 200
    meterd.write(heavy_key, "small-1", [record(heavy, ts)])
    meterd.write(victim_key, "v-1", [record(victim, ts, bytes_in=5, bytes_out=0)])
    meterd.wait_totals(victim, {"bytes_in": 5, "bytes_out": 0, "requests": 1}, timeout=10)
    events = meterd.admin.get(f"/v1/accounts/{heavy}/events").json()
    used = [e["used_bytes"] for e in events["events"]]
    assert used and all(u == BIGINT_MAX for u in used), events  # clamped, documented as saturating
    assert meterd.admin.get("/readyz").status_code == 200
