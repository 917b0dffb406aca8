"""Secrets at rest and in code: API keys are stored hashed, tokens are compared in constant time.

(No secret in logs is checked at the end of test_authz_matrix.py, over the matrix's output.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.storage.repository import hash_key
from tests.security.conftest import SecurityMeterd
from tests.security.ct_compare import check_file, check_source, compare_digest_calls
from tests.support.meterd import wait_until

ROOT = Path(__file__).resolve().parents[2]
# Where credentials are checked or passed around: authentication, key storage, both transports,
# and the process wiring (where the profiling routes get their admin check).
AUTH_MODULES = ["service/auth.py", "service/storage/repository.py", "service/grpc_writer.py",
                "service/api/app.py", "service/api/context.py", "service/runtime/process.py", "service/cli.py",
                "service/relay/auth.py", "service/relay/signing.py", "service/relay/client.py",
                "service/relay/settings.py"]


def _database_bytes(data_dir: Path) -> bytes:
    """The SQLite database with its WAL and shared-memory files: recent writes live in the WAL."""
    files = sorted(data_dir.glob("meterd.db*"))
    assert any(f.name == "meterd.db" for f in files), list(data_dir.iterdir())
    return b"".join(f.read_bytes() for f in files)


def test_api_keys_are_hashed_at_rest(sec: SecurityMeterd) -> None:
    account, key = sec.new_account("at-rest")
    revoked = sec.new_key(account)
    assert sec.m.admin.delete(f"/v1/accounts/{account}/keys/{revoked['id']}").status_code == 204
    keys = list(sec.issued_keys)
    # Committed rows reach the WAL file at once; wait until the newest key's row is on disk.
    wait_until(lambda: hash_key(keys[-1]).encode() in _database_bytes(sec.data_dir), timeout=10,
               message="the newest key's hash in the database files")
    stored = _database_bytes(sec.data_dir)
    for k in keys:
        assert k.encode() not in stored, f"plaintext key {k[:10]}… stored"
        # The first 10 characters are the key's public `prefix` (stored to tell keys apart); the rest is secret.
        assert k[10:].encode() not in stored, f"secret part of key {k[:10]}… stored"
        assert hash_key(k).encode() in stored, f"no hash of key {k[:10]}… stored: is the key stored at all?"
    assert sec.m.admin_token.encode() not in stored


@pytest.mark.parametrize("module", AUTH_MODULES)
def test_tokens_compared_only_in_constant_time(module: str) -> None:
    findings = check_file(ROOT / module)
    assert not findings, "early-exit comparisons of secrets (use hmac.compare_digest):\n" + "\n".join(
        f"  {f.path}:{f.line}: {f.source}" for f in findings)


@pytest.mark.parametrize("module", ["service/auth.py", "service/storage/repository.py", "service/relay/auth.py"])
def test_token_checks_use_compare_digest(module: str) -> None:
    assert compare_digest_calls((ROOT / module).read_text()) >= 1


@pytest.mark.parametrize("snippet", [
    "ok = token == self._admin",
    "ok = token.encode() != admin_token",
    "ok = hash_key(key) == row.key_hash",
    "ok = digest in known_digests",
    "ok = request.headers.get('authorization') == f'Bearer {admin}'",
    "ok = api_key == expected",
    "ok = secret == other",
    "ok = key == expected",
    # Whatever the variables are called: the value came from a secret source.
    "x = settings.relay.get_secret_value()\nok = x == y",
    "x = s.get_secret_value()\nok = y != x",
    "given = bearer_token(header)\nok = given == admin",
    "got = bearer_token(header).encode()\nok = expected == got",
    "stored = hash_key(k)\nok = stored in rows",
    "mac = hmac.new(k, m, 'sha256').digest()\nok = mac == sent",
    "a = s.get_secret_value()\nb = a.strip()\nc = b[:8]\nok = c == guess",
    "a, b = s.get_secret_value(), 1\nok = a == guess",
    "def check(v: SecretStr, guess):\n    return v == guess",
    "def check(v: SecretStr | None, guess):\n    w = v\n    return guess == w",
    "x = os_env.get('METERD_ADMIN_TOKEN')\nok = x == guess",
    "ok = (t := bearer_token(h)) == admin",
    "def outer(s):\n    x = s.get_secret_value()\n    def inner(y):\n        return x == y\n    return inner",
    "async def f(r):\n    x = await r.get_secret_value()\n    return x == y",
    "x = str(settings.token)\nok = x == y",
    "x = f'Bearer {t}'\nok = x == header_value",
])
def test_checker_flags_early_exit_comparisons(snippet: str) -> None:
    assert len(check_source(snippet)) == 1, snippet


def test_checker_names_the_line_of_a_flowed_secret() -> None:
    source = "def check(s, y):\n    x = s.get_secret_value()\n    z = 1\n    return x == y\n"
    [finding] = check_source(source)
    assert finding.line == 4 and finding.source == "x == y"


@pytest.mark.parametrize("snippet", [
    "ok = hmac.compare_digest(token.encode(), self._admin)",
    "ok = scheme.lower() != 'bearer'",
    "ok = k == 'authorization'",
    "q = select(t).where(schema.api_keys.c.key_hash == digest)",
    "ok = key_id == other_id",
    "ok = self.account_id == account_id",
    "ok = len(token) > 200",
    # Values that did not come from a secret, compared to constants, or results of other calls.
    "x = compute()\nok = x == y",
    "scheme, _, rest = authorization.partition(' ')\nok = scheme.lower() != 'basic'",
    "ok = key not in ('batch_id', 'records')",
    "ok = kind in KNOWN_KINDS",
    "p = await auth.authenticate(request.headers.get('authorization'))\nok = p.account_id == account_id",
    "x = s.get_secret_value()\nok = len(x) == 32",
    "x = s.get_secret_value()\nok = x is None",
])
def test_checker_leaves_other_comparisons_alone(snippet: str) -> None:
    assert check_source(snippet) == []
