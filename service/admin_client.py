"""The admin CLI's connection to a running meterd: its HTTP API, never the database behind its back.

URL: --url, METERD_URL, the `api-url` file a running `meterd up`/`meterd api` keeps in the data dir,
then http.host/http.port from the configuration. Token: --token, METERD_ADMIN_TOKEN, then the
development token file in the data dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings
from service.runtime import datadir


class ClientError(Exception):
    """One line for the person at the terminal; `usage` errors exit 2, the server's answers exit 1."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class AdminClient:
    url: str
    token: str
    timeout: float = 10.0

    @classmethod
    def resolve(cls, settings: Settings, url: str | None, token: str | None) -> AdminClient:
        data_dir = settings.data_dir.expanduser().absolute()
        url = url or _read(data_dir / datadir.URL_FILE) or _configured_url(settings)
        if not token and settings.admin_token is not None:
            token = settings.admin_token.get_secret_value()
        token = token or datadir.read_token(data_dir / datadir.TOKEN_FILE)
        if not token:
            raise ClientError(f"no admin token: pass --token, set METERD_ADMIN_TOKEN, or start `meterd up` "
                              f"(development mode keeps one in {data_dir / datadir.TOKEN_FILE})", exit_code=2)
        return cls(url.rstrip("/"), token)

    def call(self, method: str, path: str, *, params: Any = None, json: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        try:
            resp = httpx.request(method, self.url + path, params=params, json=json, headers=headers,
                                 timeout=self.timeout)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach meterd at {self.url} ({exc}): is it running? "
                              f"(set --url or METERD_URL)", exit_code=2) from None
        if resp.status_code == 204:
            return None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 400:
            raise ClientError(_problem_line(resp.status_code, body))
        return body


def _problem_line(status: int, body: Any) -> str:
    if not isinstance(body, dict):
        return f"HTTP {status}"
    line = f"{status} {body.get('title', '')}: {body.get('detail', '')}".strip()
    if status == 401:
        line += " (the token does not match this server's: check --token / METERD_ADMIN_TOKEN / --data-dir)"
    return line


def _configured_url(settings: Settings) -> str:
    host = settings.http.host
    if host in ("0.0.0.0", "::", ""):  # a wildcard listener is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
