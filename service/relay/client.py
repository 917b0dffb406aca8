"""One POST to a DingTalk robot, classified as delivered, retry-worthy or rejected for good.

Nothing here logs or returns the webhook URL: it carries the robot's access token, and the signed
URL carries a valid signature.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import httpx

from service.relay.settings import RobotSettings
from service.relay.signing import signed_url

# errcode 130101: "send too fast" (over 20/minute); -1: "system busy". Both pass with time.
RETRYABLE_ERRCODES = frozenset({130101, -1})


class Delivery(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True)
class SendResult:
    delivery: Delivery
    # Short, bounded reason for metrics labels: ok, rate_limited, busy, network, timeout, http_5xx,
    # http_429, http_4xx, bad_response, api_error.
    reason: str
    # Safe for logs and problem details (never contains the URL).
    detail: str = ""


class _RedactQuery(logging.Filter):
    """httpx logs every request URL at INFO; the query holds the access token and the signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(
                a.copy_with(query=b"redacted") if isinstance(a, httpx.URL) and a.query else a for a in record.args
            )
        return True


_REDACT = _RedactQuery()


class DingTalkClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        httpx_logger = logging.getLogger("httpx")
        if _REDACT not in httpx_logger.filters:
            httpx_logger.addFilter(_REDACT)

    async def send(self, robot: RobotSettings, body: bytes) -> SendResult:
        secret = robot.secret.get_secret_value() if robot.secret else None
        # The URL is finished here (already percent-encoded); httpx keeps valid %XX escapes as-is.
        url = signed_url(robot.webhook_url.get_secret_value(), secret)
        try:
            response = await self._http.post(
                url, content=body, headers={"Content-Type": "application/json; charset=utf-8"}
            )
        except httpx.TimeoutException as exc:
            return SendResult(Delivery.RETRY, "timeout", type(exc).__name__)
        except httpx.TransportError as exc:
            return SendResult(Delivery.RETRY, "network", type(exc).__name__)
        return _classify(response)


def _classify(response: httpx.Response) -> SendResult:
    status = response.status_code
    if status >= 500:
        return SendResult(Delivery.RETRY, "http_5xx", f"HTTP {status}")
    if status == 429:
        return SendResult(Delivery.RETRY, "http_429", "HTTP 429")
    if status != 200:
        return SendResult(Delivery.REJECTED, "http_4xx", f"HTTP {status}")
    try:
        data = response.json()
        errcode = int(data.get("errcode", -2))
        errmsg = str(data.get("errmsg", ""))[:200]
    except (ValueError, AttributeError, TypeError):
        # A 200 that is not DingTalk's JSON: a proxy or captive page; try again later.
        return SendResult(Delivery.RETRY, "bad_response", "HTTP 200 without a DingTalk JSON body")
    if errcode == 0:
        return SendResult(Delivery.OK, "ok")
    detail = f"errcode {errcode}: {errmsg}"
    if errcode in RETRYABLE_ERRCODES:
        return SendResult(Delivery.RETRY, "rate_limited" if errcode == 130101 else "busy", detail)
    # 310000 (signature/keyword/IP check failed), 300001 (token invalid), 400xxx (bad message)...
    return SendResult(Delivery.REJECTED, "api_error", detail)
