"""One real `meterd up` for the security suite, started so that everything it serves and logs can be checked.

- It logs at DEBUG (the most talkative level) and its whole stdout/stderr is kept, so the log
  tests can search it for secrets after the authorization matrix ran.
- METERD_ADMIN_TOKEN is set, so no token is generated and printed: the admin token must then never
  appear in the output at all.
- It records the HTTP routes and gRPC methods it really serves (tests/support/served_routes.py).
- A separate `meterd writer` role (same database, so the same database log as the `up` process) covers
  the admin HTTP server that roles without the user API serve.
Limits (body, message, batch, header deadline) are small so the limit tests stay cheap.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.governance_env import roomy_unauthenticated_budget
from tests.support.meterd import MeterdProc, free_port, meterd_env, running_meterd
from tests.support.meterd_client import Meterd, record, shared_meterd, unique
from tests.support.served_routes import ServedSurface, introspection_env

MAX_BODY_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BATCH_RECORDS = 20
# Short, so the slow-client test sees the deadline act within seconds (the default is 10 s).
HEADER_TIMEOUT_S = 3.0

# The credential columns of the authorization matrix, in the order cells run (admin last, so the
# cells that change state — revoking a key, starting a profile — run after the refusals).
CREDENTIALS = ("none", "malformed", "wrong", "revoked", "other", "own", "readonly", "admin")


@dataclass
class SecurityMeterd:
    m: Meterd
    tmp: Path
    env: dict[str, str]
    surface_file: Path
    issued_keys: list[str] = field(default_factory=list)  # every API key created while testing
    writer: MeterdProc | None = None
    writer_surface_file: Path | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.env["METERD_DATA_DIR"])

    def new_account(self, name: str = "sec") -> tuple[str, str]:
        account_id, key = self.m.new_account(name)
        self.issued_keys.append(key)
        return account_id, key

    def new_key(self, account_id: str) -> dict:
        resp = self.m.admin.post(f"/v1/accounts/{account_id}/keys")
        assert resp.status_code == 201, resp.text
        body = resp.json()
        self.issued_keys.append(body["key"])
        return body

    def outputs(self) -> dict[str, str]:
        """Everything each meterd process printed so far (stdout and stderr are one stream)."""
        out = {"meterd up": self.m.proc.output()}
        if self.writer is not None:
            out["meterd writer"] = self.writer.output()
        return out


@dataclass(frozen=True)
class Principals:
    """The credentials of the matrix and the accounts they point at."""

    account: str  # the account every cell targets
    own_key: str  # a key of `account`
    other_account: str
    other_key: str  # a key of `other_account`
    revoked_key: str  # a key of `account`, revoked
    admin_token: str
    wrong_token: str  # shaped like a key, never issued
    own_batch: str  # a batch_id written with own_key
    readonly_token: str = ""  # a read-only customer token of `account`

    def authorization(self, credential: str) -> str | None:
        """The Authorization header value for a credential column; None sends no header."""
        return {
            "none": None,
            "malformed": self.admin_token,  # the right secret without the Bearer scheme
            "wrong": f"Bearer {self.wrong_token}",
            "revoked": f"Bearer {self.revoked_key}",
            "other": f"Bearer {self.other_key}",
            "own": f"Bearer {self.own_key}",
            "readonly": f"Bearer {self.readonly_token}",
            "admin": f"Bearer {self.admin_token}",
        }[credential]


@pytest.fixture(scope="session")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityMeterd]:
    tmp = tmp_path_factory.mktemp("meterd-security")
    surface = tmp / "surface-up.json"
    env = introspection_env(meterd_env(tmp, METERD_LOG__LEVEL="DEBUG",
                                       METERD_HTTP__MAX_BODY_BYTES=str(MAX_BODY_BYTES),
                                       METERD_GRPC__MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
                                       METERD_INGEST__MAX_BATCH_RECORDS=str(MAX_BATCH_RECORDS),
                                       METERD_HTTP__HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT_S),
                                       METERD_CONSUMER__FLUSH_INTERVAL_SECONDS="0.5",
                                       # the matrix sends hundreds of bad credentials from one address:
                                       # it checks their 401s (the per-peer budget has its own tests)
                                       **roomy_unauthenticated_budget()), surface)
    with shared_meterd(tmp, env) as m:
        yield SecurityMeterd(m, tmp, env, surface)


@pytest.fixture(scope="session")
def sec_writer(sec: SecurityMeterd) -> Iterator[MeterdProc]:
    """`meterd writer` on the same database (and so the same database log): its admin HTTP server is
    part of the surface."""
    surface = sec.tmp / "surface-writer.json"
    env = introspection_env({**sec.env, "METERD_GRPC__PORT": str(free_port()), "METERD_ADMIN__PORT": str(free_port()),
                             "METERD_HTTP__PORT": str(free_port())}, surface)
    with running_meterd(sec.tmp, "writer", env=env) as proc:
        assert proc.admin, proc.output()
        sec.writer, sec.writer_surface_file = proc, surface
        yield proc
        assert proc.stop(30) == 0, proc.output()[-3000:]


@pytest.fixture(scope="session")
def principals(sec: SecurityMeterd) -> Principals:
    account, own_key = sec.new_account("matrix-target")
    other_account, other_key = sec.new_account("matrix-other")
    revoked = sec.new_key(account)
    resp = sec.m.admin.delete(f"/v1/accounts/{account}/keys/{revoked['id']}")
    assert resp.status_code == 204, resp.text
    own_batch = unique("matrix-own")
    resp = sec.m.proc.client(own_key).post("/v1/traffic", json={"batch_id": own_batch, "records": [record(account)]})
    assert resp.status_code == 202, resp.text
    resp = sec.m.admin.post(f"/v1/accounts/{account}/read-tokens")
    assert resp.status_code == 201, resp.text
    sec.issued_keys.append(resp.json()["token"])  # searched for in the logs like the keys
    return Principals(account=account, own_key=own_key, other_account=other_account, other_key=other_key,
                      revoked_key=revoked["key"], admin_token=sec.m.admin_token,
                      wrong_token="mk_" + secrets.token_urlsafe(32), own_batch=own_batch,
                      readonly_token=resp.json()["token"])


@pytest.fixture(scope="session")
def up_surface(sec: SecurityMeterd) -> ServedSurface:
    return ServedSurface.load(sec.surface_file)


@pytest.fixture(scope="session")
def writer_surface(sec: SecurityMeterd, sec_writer: MeterdProc) -> ServedSurface:
    assert sec.writer_surface_file is not None
    return ServedSurface.load(sec.writer_surface_file)
