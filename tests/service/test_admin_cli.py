"""`meterd accounts|keys|usage` as an operator runs them: from another directory, against the running
server's API (URL and token found through the shared data dir), each with --json for scripts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.service.test_operator_startup import dev_env, run_cli, start_in
from tests.support.meterd import wait_until


def cli_json(cwd: Path, env: dict[str, str], *args: str) -> object:
    out = run_cli(cwd, env, *args, "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def test_cli_from_another_directory_manages_the_running_servers_accounts(tmp_path: Path) -> None:
    env = dev_env(tmp_path)
    server = start_in(tmp_path / "server-cwd", env)
    elsewhere = tmp_path / "elsewhere"
    try:
        with server.client() as c:
            made_by_api = c.post("/v1/accounts", json={"name": "from-api"}).json()["id"]
        created = cli_json(elsewhere, env, "accounts", "create", "--name", "from-cli", "--quota-bytes", "1000")
        assert isinstance(created, dict)
        account, key = created["account"]["id"], created["key"]["key"]
        listed = cli_json(elsewhere, env, "accounts", "list")
        assert {a["id"] for a in listed} == {made_by_api, account}  # type: ignore[union-attr]
        human = run_cli(elsewhere, env, "accounts", "list", "--name", "CLI")
        assert human.returncode == 0 and account in human.stdout and made_by_api not in human.stdout, human

        with server.client(key) as c:
            assert c.get(f"/v1/accounts/{account}").status_code == 200  # the printed key works on the server
        keys = cli_json(elsewhere, env, "keys", "list", account)
        (k,) = keys["keys"]  # type: ignore[index]
        assert key.startswith(k["prefix"]) and key not in json.dumps(keys)
        second = cli_json(elsewhere, env, "keys", "create", account)
        revoked = run_cli(elsewhere, env, "keys", "revoke", account, second["id"])  # type: ignore[index]
        assert revoked.returncode == 0, revoked.stderr

        assert cli_json(elsewhere, env, "accounts", "suspend", account)["status"] == "suspended"  # type: ignore[index]
        assert cli_json(elsewhere, env, "accounts", "show", account)["status"] == "suspended"  # type: ignore[index]
        usage = cli_json(elsewhere, env, "usage", account, "--step", "1m")
        assert usage["account_id"] == account and usage["totals"]["requests"] == 0  # type: ignore[index]
        deleted = run_cli(elsewhere, env, "accounts", "delete", account, "--yes")
        assert deleted.returncode == 0 and "usage is kept" in deleted.stdout, deleted.stderr
        assert account not in run_cli(elsewhere, env, "accounts", "list").stdout
        missing = run_cli(elsewhere, env, "accounts", "show", "acc_nope")
        assert missing.returncode == 1 and missing.stderr.strip() == "meterd: 404 Not Found: account not found"
    finally:
        assert server.stop() == 0
    gone = run_cli(elsewhere, env, "accounts", "list")
    assert gone.returncode == 2 and "cannot reach meterd" in gone.stderr and "--url" in gone.stderr, gone


def test_cli_with_a_wrong_token_says_so_in_one_line(tmp_path: Path) -> None:
    env = dev_env(tmp_path)
    server = start_in(tmp_path, env)
    try:
        out = run_cli(tmp_path, env, "accounts", "list", "--token", "wrong-token-0123456789")
        assert out.returncode == 1, out
        (line,) = out.stderr.splitlines()
        assert line.startswith("meterd: 401 Unauthorized") and "--token" in line
        no_token = run_cli(tmp_path, env | {"XDG_DATA_HOME": str(tmp_path / "empty")}, "accounts", "list",
                           "--url", server.http or "")
        assert no_token.returncode == 2 and "no admin token" in no_token.stderr, no_token
    finally:
        server.stop()
    wait_until(lambda: not (tmp_path / "xdg" / "meterd" / "api-url").exists(), timeout=5, message="api-url removed")
