"""`meterd accounts|keys|usage`: admin commands that talk to the running server's HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from service.admin_client import AdminClient, ClientError
from service.config import ConfigError, load_settings

accounts_app = typer.Typer(no_args_is_help=True, help="List and manage accounts through the running server's API.")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke an account's API keys.")

UrlOpt = Annotated[str | None, typer.Option("--url", envvar="METERD_URL",
                                            help="meterd's HTTP API (default: the one running on this data dir)")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="admin token (default METERD_ADMIN_TOKEN, "
                                                              "then the development token file)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the API's JSON, for scripts")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="where to find the server's token and URL")]
AccountArg = Annotated[str, typer.Argument(help="account id (acc_...)")]


def _client(url: str | None, token: str | None, config: Path | None, data_dir: Path | None) -> AdminClient:
    # The same settings as every command (file, env, --data-dir): the same data dir as the server's.
    try:
        return AdminClient.resolve(load_settings(config, {"data_dir": data_dir}), url, token)
    except ConfigError as exc:
        _die(ClientError(str(exc), exit_code=2))
    except ClientError as exc:
        _die(exc)
    raise AssertionError("unreachable")


def _die(exc: ClientError) -> None:
    typer.echo(f"meterd: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _run(call: Callable[[], Any], as_json: bool, human: Callable[[Any], None]) -> None:
    try:
        body = call()
    except ClientError as exc:
        _die(exc)
        return
    if as_json:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        human(body)


def _account_line(a: dict) -> str:
    quota = "unlimited" if a["quota_bytes"] is None else f"{a['quota_bytes']} B/month"
    return f"{a['id']}  {a['status']:<9}  {quota:<22}  {a['name']}"


def _show_account(a: dict) -> None:
    for key, value in a.items():
        typer.echo(f"{key + ':':<18} {value}")


@accounts_app.command("list")
def accounts_list(status: Annotated[str | None, typer.Option(help="active, suspended or deleted")] = None,
                  name: Annotated[str | None, typer.Option(help="case-insensitive part of the name")] = None,
                  limit: Annotated[int, typer.Option(help="at most this many (pages are followed)")] = 1000,
                  as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                  config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List accounts (deleted ones only with --status deleted)."""
    client = _client(url, token, config, data_dir)

    def fetch() -> list[dict]:
        out: list[dict] = []
        params: dict[str, Any] = {k: v for k, v in (("status", status), ("name", name)) if v}
        while len(out) < limit:
            page = client.call("GET", "/v1/accounts", params={**params, "limit": min(500, limit - len(out))})
            out += page["accounts"]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        return out

    def human(rows: list[dict]) -> None:
        for a in rows:
            typer.echo(_account_line(a))
        if not rows:
            typer.echo("no accounts")

    _run(fetch, as_json, human)


@accounts_app.command("show")
def accounts_show(account: AccountArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                  config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Show one account."""
    client = _client(url, token, config, data_dir)
    _run(lambda: client.call("GET", f"/v1/accounts/{account}"), as_json, _show_account)


@accounts_app.command("create")
def accounts_create(name: Annotated[str, typer.Option(help="account name")],
                    quota_bytes: Annotated[int | None, typer.Option(help="monthly quota in bytes")] = None,
                    with_key: Annotated[bool, typer.Option(help="also create an API key")] = True,
                    as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                    config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Create an account (and an API key, shown once)."""
    client = _client(url, token, config, data_dir)

    def create() -> dict:
        acc = client.call("POST", "/v1/accounts", json={"name": name, "quota_bytes": quota_bytes})
        key = client.call("POST", f"/v1/accounts/{acc['id']}/keys") if with_key else None
        return {"account": acc, "key": key}

    def human(out: dict) -> None:
        typer.echo(f"account {out['account']['id']} ({out['account']['name']})")
        if out["key"]:
            typer.echo(f"api key {out['key']['key']}   (shown once; id {out['key']['id']})")

    _run(create, as_json, human)


def _set_status(account: str, status: str, as_json: bool, client: AdminClient) -> None:
    _run(lambda: client.call("PATCH", f"/v1/accounts/{account}", json={"status": status}), as_json,
         lambda a: typer.echo(f"{a['id']} is {a['status']}"))


@accounts_app.command("suspend")
def accounts_suspend(account: AccountArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                     config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Suspend an account: its writes are refused (within ingest.account_cache_seconds); reads still work."""
    _set_status(account, "suspended", as_json, _client(url, token, config, data_dir))


@accounts_app.command("resume")
def accounts_resume(account: AccountArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                    config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Make a suspended account active again."""
    _set_status(account, "active", as_json, _client(url, token, config, data_dir))


@accounts_app.command("delete")
def accounts_delete(account: AccountArg,
                    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
                    as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                    config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Delete an account: its keys are revoked; its usage is kept and stays readable by the admin."""
    client = _client(url, token, config, data_dir)
    if not yes and not typer.confirm(f"delete {account} and revoke its keys?"):
        raise typer.Exit(1)
    _run(lambda: client.call("DELETE", f"/v1/accounts/{account}") or {"id": account, "deleted": True}, as_json,
         lambda out: typer.echo(f"{account} deleted; its keys are revoked, its usage is kept"))


@keys_app.command("create")
def keys_create(account: AccountArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Create an API key for an account (the key is shown once)."""
    client = _client(url, token, config, data_dir)
    _run(lambda: client.call("POST", f"/v1/accounts/{account}/keys"), as_json,
         lambda k: typer.echo(f"api key {k['key']}   (shown once; id {k['id']})"))


@keys_app.command("list")
def keys_list(account: AccountArg, as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
              config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List an account's keys: prefix, created, last used, revoked (never the secrets)."""
    client = _client(url, token, config, data_dir)

    def human(body: dict) -> None:
        for k in body["keys"] or [None]:
            typer.echo("no keys" if k is None else
                       f"{k['id']}  {k['prefix']}...  created {k['created_at']}  "
                       f"last used {k['last_used_at'] or 'never'}"
                       + (f"  revoked {k['revoked_at']}" if k["revoked_at"] else ""))

    _run(lambda: client.call("GET", f"/v1/accounts/{account}/keys"), as_json, human)


@keys_app.command("revoke")
def keys_revoke(account: AccountArg, key_id: Annotated[str, typer.Argument(help="key id (key_...)")],
                as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
                config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Revoke a key: it stops working at once on that server, within 1 s everywhere."""
    client = _client(url, token, config, data_dir)
    _run(lambda: client.call("DELETE", f"/v1/accounts/{account}/keys/{key_id}") or {"id": key_id, "revoked": True},
         as_json, lambda out: typer.echo(f"{key_id} revoked"))


def usage(account: AccountArg,
          step: Annotated[str, typer.Option(help="1m, 1h or 1d")] = "1h",
          start: Annotated[str | None, typer.Option(help="RFC 3339 (default end - 1h)")] = None,
          end: Annotated[str | None, typer.Option(help="RFC 3339 (default now)")] = None,
          tz: Annotated[str | None, typer.Option(help="IANA zone of the buckets")] = None,
          as_json: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None,
          config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """An account's usage in a window (the API's GET /v1/accounts/{id}/usage)."""
    client = _client(url, token, config, data_dir)
    params = {k: v for k, v in (("step", step), ("start", start), ("end", end), ("tz", tz)) if v}

    def human(body: dict) -> None:
        typer.echo(f"{body['account_id']}  {body['start']} .. {body['end']}  step {body['step']}")
        for p in body.get("points", []):
            typer.echo(f"  {p['ts']}  in {p['bytes_in']}  out {p['bytes_out']}  requests {p['requests']}")
        t = body["totals"]
        typer.echo(f"  total  in {t['bytes_in']}  out {t['bytes_out']}  requests {t['requests']}")

    _run(lambda: client.call("GET", f"/v1/accounts/{account}/usage", params=params), as_json, human)
