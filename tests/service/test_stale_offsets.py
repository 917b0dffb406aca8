"""Issue 17: a broker that comes back without its log (a memory-storage Tansu restarted, a topic
recreated) while meterd's database keeps the old offsets. Before, the consumer sought to the old
offsets and skipped the new log's first records in silence; now it says so (log line, metric) and,
by the default policy, counts the new log from its start, exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.broker import running_tansu
from tests.support.meterd import MeterdProc, meterd_env, wait_until


def _post(m: MeterdProc, account: str, batch_id: str, bytes_in: int) -> None:
    body = {"batch_id": batch_id, "records": [{"account_id": account, "node_id": "n", "bytes_in": bytes_in,
                                                "bytes_out": 0, "requests": 1,
                                                "timestamp_ms": int(time.time() * 1000)}]}
    with m.client() as c:
        r = c.post("/v1/traffic", json=body)
        assert r.status_code == 202, r.text


def test_a_reset_broker_is_detected_and_its_new_log_counted(tmp_path: Path) -> None:
    with running_tansu(tmp_path / "tansu") as tansu:
        # One partition, so every batch moves the same stored offset.
        env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=tansu.bootstrap, METERD_KAFKA__PARTITIONS="1",
                         METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.3")
        m = MeterdProc(["up"], env, tmp_path).start()
        try:
            with m.client() as c:
                account = c.post("/v1/accounts", json={"name": "reset"}).json()["id"]

                def requests() -> int:
                    return c.get(f"/v1/accounts/{account}/usage").json()["totals"]["requests"]

                for i in range(6):
                    _post(m, account, f"before-{i}", 1)
                wait_until(lambda: requests() == 6, 30, 0.2, "the first six batches counted")
            m.stop(30)
            tansu.kill()
            tansu.start()  # memory storage: the topic is gone; meterd recreates it, its log starts at 0
            m = MeterdProc(["up"], env, tmp_path).start()
            for i in range(2):
                _post(m, account, f"after-{i}", 100)
            with m.client() as c:
                wait_until(lambda: c.get(f"/v1/accounts/{account}/usage").json()["totals"]["requests"] == 8,
                           30, 0.2, "the new log's batches counted")
                time.sleep(1.0)
                assert c.get(f"/v1/accounts/{account}/usage").json()["totals"] == {
                    "bytes_in": 206, "bytes_out": 0, "requests": 8}
            metrics = httpx.get(f"{m.http}/metrics").text
            assert 'meterd_consumer_stale_offsets_total{policy="earliest"} 1.0' in metrics, metrics[-2000:]
            assert "past the end of the partition" in m.output()
        finally:
            m.kill()


def test_a_reset_whose_new_log_outgrew_the_stored_offset_is_detected(tmp_path: Path) -> None:
    """N4: while no consumer runs, writers fill the new log past the old stored offset (6). The
    consumer must not seek to offset 6 of a different log and skip the new log's first six
    batches: the mismatch is detected (log line, metric) and all 16 batches are counted."""
    with running_tansu(tmp_path / "tansu") as tansu:
        env = meterd_env(tmp_path, METERD_KAFKA__BOOTSTRAP_SERVERS=tansu.bootstrap, METERD_KAFKA__PARTITIONS="1",
                         METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.3")
        m = MeterdProc(["up"], env, tmp_path).start()
        try:
            with m.client() as c:
                account = c.post("/v1/accounts", json={"name": "reset-longer"}).json()["id"]
                for i in range(6):
                    _post(m, account, f"before-{i}", 1)
                wait_until(lambda: c.get(f"/v1/accounts/{account}/usage").json()["totals"]["requests"] == 6,
                           30, 0.2, "the first six batches counted")
            m.stop(30)
            tansu.kill()
            tansu.start()
            m = MeterdProc(["api"], env, tmp_path).start()  # writers only: the new log grows to 10
            for i in range(10):
                _post(m, account, f"after-{i}", 100)
            m.stop(30)
            m = MeterdProc(["up"], env, tmp_path).start()
            with m.client() as c:
                wait_until(lambda: c.get(f"/v1/accounts/{account}/usage").json()["totals"]["requests"] == 16,
                           30, 0.2, "all sixteen batches counted")
                time.sleep(1.0)
                assert c.get(f"/v1/accounts/{account}/usage").json()["totals"] == {
                    "bytes_in": 1006, "bytes_out": 0, "requests": 16}
            metrics = httpx.get(f"{m.http}/metrics").text
            assert 'meterd_consumer_stale_offsets_total{policy="earliest"} 1.0' in metrics, metrics[-2000:]
            assert "does not hold the message last counted" in m.output()
        finally:
            m.kill()
