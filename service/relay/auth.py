"""Authentication of webhook callers: Alertmanager's `http_config` bearer token or basic auth.

Secrets are compared with hmac.compare_digest over their bytes, so the time taken does not tell a
caller how much of a guess was right.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

from pydantic import SecretStr

from service.auth import bearer_token
from service.relay.settings import MIN_TOKEN_LENGTH, AuthSettings

REALM = "meterd-relay"


def _secret(value: SecretStr | None, path: Path | None, min_length: int = 1) -> bytes | None:
    if value is not None:
        return value.get_secret_value().encode()
    if path is not None:
        secret = path.read_text(encoding="utf-8").strip()
        if not secret:
            raise ValueError(f"{path} is empty")
        if len(secret) < min_length:  # the message never quotes the secret
            raise ValueError(f"{path}: the bearer token needs at least {min_length} characters (use a random one)")
        return secret.encode()
    return None


class WebhookAuth:
    """Checks an Authorization header against the configured token and/or basic credentials."""

    def __init__(self, settings: AuthSettings) -> None:
        self._token = _secret(settings.bearer_token, settings.bearer_token_file, MIN_TOKEN_LENGTH)
        self._user: bytes | None = None
        self._password: bytes | None = None
        if settings.basic is not None:
            self._user = settings.basic.username.encode()
            self._password = _secret(settings.basic.password, settings.basic.password_file)

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._user is not None

    @property
    def challenge(self) -> str:
        """WWW-Authenticate value naming every scheme that would be accepted."""
        schemes = []
        if self._token is not None:
            schemes.append(f'Bearer realm="{REALM}"')
        if self._user is not None:
            schemes.append(f'Basic realm="{REALM}", charset="UTF-8"')
        return ", ".join(schemes)

    def allows(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if self._token is not None:
            token = bearer_token(authorization)
            if token is not None:
                return hmac.compare_digest(token.encode(), self._token)
        if self._user is not None and self._password is not None:
            credentials = _basic(authorization)
            if credentials is not None:
                user, password = credentials
                # Both compared every time (`&`, not `and`): a wrong user costs the same as a wrong password.
                return hmac.compare_digest(user, self._user) & hmac.compare_digest(password, self._password)
        return False


def _basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
