"""DingTalk custom-robot request signing ("加签").

sign = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp_ms}\\n{secret}"))).
The signed URL is built once, as a finished string: handing the already-encoded `sign` to an HTTP
client's `params=` would encode its `%` again (`%2B` -> `%252B`) and DingTalk would answer 310000.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote_plus


def signature(secret: str, timestamp_ms: int) -> str:
    """The base64 signature, not yet URL-encoded."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_url(webhook_url: str, secret: str | None, timestamp_ms: int | None = None) -> str:
    """webhook_url with `timestamp` and `sign` appended (unchanged when the robot has no secret)."""
    if not secret:
        return webhook_url
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    # quote_plus with no safe characters: '+', '/' and '=' of base64 all become %XX exactly once.
    sign = quote_plus(signature(secret, timestamp_ms), safe="")
    separator = "&" if "?" in webhook_url else "?"
    return f"{webhook_url}{separator}timestamp={timestamp_ms}&sign={sign}"
