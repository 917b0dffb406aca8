"""DingTalk signing: verified the way DingTalk verifies, and encoded exactly once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlsplit

import httpx

from service.relay.signing import signature, signed_url
from tests.relay.fake_dingtalk import FakeDingTalk

SECRET = "SECb1e2d3c4a5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
WEBHOOK = "https://oapi.dingtalk.com/robot/send?access_token=abc123"


def _dingtalk_expected(secret: str, timestamp: str) -> str:
    # Written from DingTalk's documentation, independently of service.relay.signing.
    mac = hmac.new(secret.encode("utf-8"), (timestamp + "\n" + secret).encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _timestamp_with_special_chars(start: int = 1_700_000_000_000) -> int:
    """A timestamp whose signature contains '+' and '/', the characters double encoding breaks."""
    ts = start
    while not ("+" in signature(SECRET, ts) and "/" in signature(SECRET, ts)):
        ts += 1
    return ts


def test_signature_matches_dingtalk_algorithm() -> None:
    ts = 1_700_000_000_123
    assert signature(SECRET, ts) == _dingtalk_expected(SECRET, str(ts))


def test_sign_in_url_decodes_back_exactly_once() -> None:
    ts = _timestamp_with_special_chars()
    url = signed_url(WEBHOOK, SECRET, ts)
    query = urlsplit(url).query
    # Each base64 special character is percent-encoded once; no '%25' (an encoded '%').
    assert "%25" not in query and "+" not in query and "/" not in query
    params = parse_qs(query)
    assert params["access_token"] == ["abc123"]
    assert params["timestamp"] == [str(ts)]
    assert params["sign"] == [_dingtalk_expected(SECRET, str(ts))]


def test_httpx_keeps_the_encoded_query_unchanged() -> None:
    # The relay passes the finished URL to httpx; httpx must not re-encode it.
    url = signed_url(WEBHOOK, SECRET, _timestamp_with_special_chars())
    request = httpx.Request("POST", url)
    assert request.url.query.decode() == urlsplit(url).query


def test_no_secret_leaves_url_unchanged_and_question_mark_when_no_query() -> None:
    assert signed_url(WEBHOOK, None) == WEBHOOK
    assert signed_url(WEBHOOK, "") == WEBHOOK
    bare = signed_url("https://example.test/robot", SECRET, 5)
    assert bare.startswith("https://example.test/robot?timestamp=5&sign=")


def test_default_timestamp_is_current_milliseconds() -> None:
    before = int(time.time() * 1000)
    url = signed_url(WEBHOOK, SECRET)
    after = int(time.time() * 1000)
    ts = int(parse_qs(urlsplit(url).query)["timestamp"][0])
    assert before <= ts <= after


async def test_signed_request_passes_the_fake_robot_verification() -> None:
    fake = FakeDingTalk(secret=SECRET)
    # The fake accepts timestamps within an hour of now (as DingTalk does): search forward from now
    # for a signature with the special characters.
    ts = _timestamp_with_special_chars(int(time.time() * 1000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app)) as client:
        body = b'{"msgtype":"markdown","markdown":{"title":"t","text":"x"}}'
        good = await client.post(signed_url(fake.webhook_url, SECRET, ts), content=body)
        assert good.json() == {"errcode": 0, "errmsg": "ok"}
        # What a double-encoding client would send is refused, proving the fake really checks.
        doubly = signed_url(fake.webhook_url, SECRET, ts).replace("%", "%25")
        bad = await client.post(doubly, content=body)
        assert bad.json()["errcode"] == 310000
        wrong = await client.post(signed_url(fake.webhook_url, "SECwrong", ts), content=body)
        assert wrong.json()["errcode"] == 310000
    assert len(fake.messages) == 1
    assert len(fake.violations) == 2
