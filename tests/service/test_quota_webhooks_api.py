"""Quota alerts end to end on SQLite and PostgreSQL: thresholds crossed once each, events listed,
webhooks signed with HMAC-SHA256 and retried until a receiver that fails twice takes them."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.api.schemas import Account, Events, WebhookSecret
from tests.service.conftest import assert_problem, problem_fields
from tests.service.metering_support import rec, send, stack
from tests.support.meterd import meterd_env, wait_until
from tests.support.meterd_client import Meterd, shared_meterd

__all__ = ["stack"]


class Receiver:
    """A webhook endpoint that answers 500 to its first `fail_first` requests, then 204."""

    def __init__(self, fail_first: int = 2) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(outer.requests) < outer.fail_first else 204
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/meterd"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b, status in self.requests if status == 204]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the MAC over "<timestamp>.<body>", compare in constant time."""
    mac = hmac.new(secret.encode(), headers["meterd-timestamp"].encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers["meterd-signature"], "v1=" + mac.hexdigest())


def crossings_metric(m: Meterd, threshold: str) -> float:
    text = m.admin.get("/metrics").text
    line = f'meterd_quota_threshold_crossings_total{{threshold="{threshold}"}} '
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(line))


def test_thresholds_events_and_signed_webhooks(stack: Meterd, receiver: Receiver) -> None:
    created = stack.admin.post("/v1/accounts", json={"name": "alerts", "quota_bytes": 1000,
                                                      "alert_thresholds": [0.5, 1.0], "webhook_url": receiver.url})
    assert created.status_code == 201, created.text
    acc, secret = created.json()["id"], created.json()["webhook_secret"]
    assert created.json()["alert_thresholds"] == [0.5, 1.0] and secret.startswith("whsec_")
    assert "webhook_secret" not in stack.admin.get(f"/v1/accounts/{acc}").json()  # shown once
    before = {t: crossings_metric(stack, t) for t in ("0.5", "1")}
    key = stack.admin.post(f"/v1/accounts/{acc}/keys").json()["key"]
    now = int(time.time() * 1000) - 1000

    def events() -> list[dict]:
        with stack.client(key) as c:
            resp = c.get(f"/v1/accounts/{acc}/events")
        assert resp.status_code == 200, resp.text
        return resp.json()["events"]

    send(stack, [rec(acc, now, b_in=300, b_out=100)])
    send(stack, [rec(acc, now, b_in=200, b_out=0)])  # 600 of 1000: 0.5 crossed
    wait_until(lambda: len(events()) == 1, timeout=30, message="first event")
    send(stack, [rec(acc, now, b_in=10, b_out=0)])  # still between the thresholds
    send(stack, [rec(acc, now, b_in=500, b_out=0)])  # 1110: 1.0 crossed
    wait_until(lambda: len(events()) == 2, timeout=30, message="second event")
    send(stack, [rec(acc, now, b_in=5000, b_out=0)])
    stack.wait_totals(acc, {"bytes_in": 6010, "bytes_out": 100, "requests": 5}, step="1h")
    got = events()
    with stack.client(key) as c:
        Events.model_validate(c.get(f"/v1/accounts/{acc}/events").json())
    Account.model_validate(created.json())
    assert [(e["threshold"], e["used_bytes"], e["quota_bytes"], e["type"]) for e in got] == [
        (1.0, 1110, 1000, "quota.threshold_crossed"), (0.5, 600, 1000, "quota.threshold_crossed")]
    assert {t: crossings_metric(stack, t) - before[t] for t in before} == {"0.5": 1.0, "1": 1.0}

    # Delivery: two 500s, then every event arrives, signed, with its id in a header and the body.
    wait_until(lambda: len(receiver.delivered()) == 2, timeout=30, message="both webhooks delivered")
    assert [s for _, _, s in receiver.requests[:2]] == [500, 500]
    ids = set()
    for headers, body in receiver.delivered():
        assert verify(secret, headers, body)
        assert not verify(secret + "x", headers, body)
        assert abs(int(headers["meterd-timestamp"]) - time.time()) < 120
        payload = json.loads(body)
        assert payload["id"] == headers["meterd-event-id"]
        ids.add(payload["id"])
        listed = next(e for e in got if e["id"] == payload["id"])
        assert payload == {k: v for k, v in listed.items() if k != "delivery"}  # the list adds the delivery
    assert ids == {e["id"] for e in got}
    time.sleep(1.0)  # a delivered event is not sent again
    assert len(receiver.delivered()) == 2
    # No secret in meterd's logs: neither the signing key nor the webhook URL's path.
    logs = stack.proc.output()
    assert secret not in logs and "/hooks/meterd" not in logs
    assert f"POST http://127.0.0.1:{receiver.server.server_address[1]}/redacted" in logs  # the line is there

    # Rotation: a new secret, shown once, and the old one no longer signs.
    rotated = stack.admin.post(f"/v1/accounts/{acc}/webhook-secret")
    assert rotated.status_code == 200 and rotated.json()["webhook_secret"] not in (secret, None)
    WebhookSecret.model_validate(rotated.json())
    with stack.client(key) as c:
        assert_problem(c.post(f"/v1/accounts/{acc}/webhook-secret"), 403)


@pytest.mark.parametrize(("body", "field"), [
    ({"alert_thresholds": []}, "alert_thresholds"), ({"alert_thresholds": [0]}, "alert_thresholds[0]"),
    ({"alert_thresholds": [0.5, 11]}, "alert_thresholds[1]"), ({"webhook_url": "ftp://x"}, "webhook_url"),
    ({"webhook_url": "http://" + "a" * 2050}, "webhook_url"),
])
def test_alert_settings_validation(stack: Meterd, body: dict, field: str) -> None:
    resp = stack.admin.post("/v1/accounts", json={"name": "v", **body})
    assert field in problem_fields(assert_problem(resp, 400)), resp.text


def test_default_thresholds_and_events_access(stack: Meterd) -> None:
    acc, key = stack.new_account("defaults", quota_bytes=100)
    assert stack.admin.get(f"/v1/accounts/{acc}").json()["alert_thresholds"] == [0.8, 1.0]
    patched = stack.admin.patch(f"/v1/accounts/{acc}", json={"alert_thresholds": [0.9]})
    assert patched.json()["alert_thresholds"] == [0.9]
    reset = stack.admin.patch(f"/v1/accounts/{acc}", json={"alert_thresholds": None})
    assert reset.json()["alert_thresholds"] == [0.8, 1.0]
    _, other_key = stack.new_account("other")
    with stack.client(other_key) as c:
        assert_problem(c.get(f"/v1/accounts/{acc}/events"), 404)
    assert "limit" in problem_fields(assert_problem(stack.admin.get(f"/v1/accounts/{acc}/events",
                                                                    params={"limit": "0"}), 400))


def test_each_new_webhook_url_gets_a_new_secret(stack: Meterd) -> None:
    """The receiver at the old URL knows the old secret: a new URL must not be signed with it."""
    acc, _ = stack.new_account("later-hook", quota_bytes=100)
    first = stack.admin.patch(f"/v1/accounts/{acc}", json={"webhook_url": "https://hooks.example/a"})
    assert first.status_code == 200 and first.json()["webhook_secret"].startswith("whsec_")
    same = stack.admin.patch(f"/v1/accounts/{acc}", json={"webhook_url": "https://hooks.example/a", "name": "n"})
    assert "webhook_secret" not in same.json()  # the same URL keeps its secret
    again = stack.admin.patch(f"/v1/accounts/{acc}", json={"webhook_url": "https://hooks.example/b"})
    assert again.json()["webhook_url"] == "https://hooks.example/b"
    assert again.json()["webhook_secret"].startswith("whsec_")
    assert again.json()["webhook_secret"] != first.json()["webhook_secret"]
    off = stack.admin.patch(f"/v1/accounts/{acc}", json={"webhook_url": None})
    assert off.json()["webhook_url"] is None and "webhook_secret" not in off.json()


def events_of(m: Meterd, acc: str) -> list[dict]:
    resp = m.admin.get(f"/v1/accounts/{acc}/events")
    assert resp.status_code == 200, resp.text
    Events.model_validate(resp.json())
    return resp.json()["events"]


def delivery_of(m: Meterd, acc: str) -> dict | None:
    events = events_of(m, acc)
    return events[0]["delivery"] if events else None


def test_delivery_status_failure_log_and_redeliver(stack: Meterd, receiver: Receiver) -> None:
    """Issue 28 item 10: /events shows each delivery's state, failed attempts are logged (at most
    one line per account per minute, no secret, no URL path), and the admin can send one again."""
    acc = stack.admin.post("/v1/accounts", json={"name": "hook-ok", "quota_bytes": 10, "alert_thresholds": [1.0],
                                                 "webhook_url": receiver.url}).json()["id"]
    down = Receiver(fail_first=10**9)
    try:
        bad = stack.admin.post("/v1/accounts", json={"name": "hook-down", "quota_bytes": 10,
                                                     "alert_thresholds": [1.0], "webhook_url": down.url}).json()
        now = int(time.time() * 1000) - 1000
        send(stack, [rec(acc, now, b_in=10, b_out=0), rec(bad["id"], now, b_in=10, b_out=0)])
        # Two 500s, then 204: delivered, with the time and the receiver's status.
        done = wait_until(lambda: (d := delivery_of(stack, acc)) and d["status"] == "delivered" and d,
                          timeout=30, message="delivered status")
        assert done["attempts"] == 3 and done["http_status"] == 204 and done["next_attempt_at"] is None
        assert done["delivered_at"].endswith("Z") and done["given_up_at"] is None
        # Always 500: retrying, with the next attempt's time.
        retrying = wait_until(lambda: (d := delivery_of(stack, bad["id"])) and d["attempts"] >= 3 and d,
                              timeout=30, message="three failed attempts")
        assert retrying["status"] == "retrying" and retrying["http_status"] == 500 and retrying["next_attempt_at"]
        logs = stack.proc.output()
        lines = [ln for ln in logs.splitlines() if "webhook attempt failed" in ln and bad["id"] in ln]
        assert len(lines) == 1, lines  # rate-limited: one line per account per minute
        assert "HTTP 500" in lines[0] and bad["webhook_secret"] not in logs and "/hooks/meterd" not in lines[0]
    finally:
        down.server.shutdown()

    # Redeliver: admin only; the event goes out again with a fresh retry budget.
    (event,) = events_of(stack, acc)
    path = f"/v1/accounts/{acc}/events/{event['id']}/redeliver"
    key = stack.admin.post(f"/v1/accounts/{acc}/keys").json()["key"]
    with stack.client(key) as c:
        assert_problem(c.post(path), 403)
    before = len(receiver.delivered())
    again = stack.admin.post(path)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == event["id"] and again.json()["delivery"]["status"] == "pending"
    wait_until(lambda: len(receiver.delivered()) == before + 1, timeout=30, message="redelivered")
    assert json.loads(receiver.delivered()[-1][1])["id"] == event["id"]
    assert_problem(stack.admin.post(f"/v1/accounts/{acc}/events/evt_nosuchevent/redeliver"), 404)
    assert_problem(stack.admin.post(f"/v1/accounts/{bad['id']}/events/{event['id']}/redeliver"), 404)
    stack.admin.patch(f"/v1/accounts/{acc}", json={"webhook_url": None})
    assert_problem(stack.admin.post(path), 409)


@pytest.mark.parametrize(("setting", "delivered"), [(None, True), ("false", False)])
def test_meterd_up_private_destination_default(tmp_path: Path, receiver: Receiver, setting: str | None,
                                               delivered: bool) -> None:
    """N18 as `meterd up` runs it: development mode posts to a loopback receiver unless the setting
    says false; then the attempt is refused before any connection (retrying, no HTTP status)."""
    env = meterd_env(tmp_path, METERD_WEBHOOKS__RETRY_BASE_SECONDS="0.3",
                     METERD_WEBHOOKS__POLL_INTERVAL_SECONDS="0.1", METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.3")
    env.pop("METERD_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS")
    if setting is not None:
        env["METERD_WEBHOOKS__ALLOW_PRIVATE_DESTINATIONS"] = setting
    receiver.fail_first = 0
    with shared_meterd(tmp_path, env) as m:
        acc = m.admin.post("/v1/accounts", json={"name": "dev", "quota_bytes": 10, "alert_thresholds": [1.0],
                                                 "webhook_url": receiver.url}).json()["id"]
        send(m, [rec(acc, int(time.time() * 1000) - 1000, b_in=10, b_out=0)])
        state = wait_until(lambda: (d := delivery_of(m, acc)) and d["attempts"] >= 1 and d, timeout=30,
                           message="an attempt")
        if delivered:
            assert state["status"] == "delivered" and len(receiver.requests) == 1
        else:
            assert state["status"] == "retrying" and state["http_status"] is None and receiver.requests == []
            assert "destination refused" in m.proc.output()
