"""The ``meterd`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys

# meterd never forks a gRPC-using child (py-spy and Tansu are exec'd), so gRPC's fork handlers
# only add log noise when a subprocess is spawned with preexec_fn. Read by grpc at import time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from pathlib import Path
from typing import Annotated, Any

import typer

from service.config import ConfigError, Settings, load_settings
from service.logging_setup import configure_logging

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="meterd: traffic metering and accounts (gRPC/HTTP ingestion, log aggregation, usage API).")
accounts_app = typer.Typer(no_args_is_help=True, help="Manage accounts directly in the database.")
app.add_typer(accounts_app, name="accounts")

ConfigOpt = Annotated[Path | None,
                      typer.Option("--config", "-c", help="YAML config file; METERD_* env vars override it")]
log = logging.getLogger("meterd")


def _fail(message: str) -> None:
    typer.echo(f"meterd: {message}", err=True)
    raise typer.Exit(2)


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        settings = load_settings(config, overrides)
    except ConfigError as exc:
        _fail(str(exc))
        raise AssertionError from exc
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _admin_token(settings: Settings, default_mode: str) -> str:
    mode = settings.mode or default_mode
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        token = settings.admin_token.get_secret_value()
        if len(token) < 16:
            _fail("admin_token: must be at least 16 characters (env METERD_ADMIN_TOKEN)")
        return token
    if mode == "production":
        _fail("admin_token: production mode needs an admin token: set METERD_ADMIN_TOKEN "
              "(or `mode: development` for a generated one)")
    token = secrets.token_urlsafe(24)
    # Printed once to the terminal of whoever started development mode; never logged.
    typer.echo(f"  admin token (generated, development mode): {token}")
    return token


def _run_roles(settings: Settings, roles: tuple[str, ...], *, default_mode: str) -> None:
    from service.runtime.process import MeterdProcess

    token = _admin_token(settings, default_mode)
    settings = settings.model_copy(update={"mode": settings.mode or default_mode})  # the mode in effect

    async def main() -> None:
        proc = MeterdProcess(settings, roles, token)
        proc.install_signal_handlers()
        try:
            await proc.start()
        except BaseException:
            await proc.stop()
            raise
        e = proc.endpoints
        if e.http:
            typer.echo(f"  HTTP API     {e.http}   (docs {e.http}/docs, metrics {e.http}/metrics)")
        if e.grpc:
            typer.echo(f"  gRPC writer  {e.grpc}")
        if e.admin:
            typer.echo(f"  admin        {e.admin}   (/metrics /healthz /readyz)")
        typer.echo(f"  Log          {e.log}")
        typer.echo(f"  meterd {'+'.join(roles)} ready; Ctrl-C drains and stops")
        sys.stdout.flush()
        await proc.wait()
        log.info("draining")
        await proc.stop()
        log.info("stopped")

    from governance import GovernanceConfigError

    try:
        _run(main())
    except (ConfigError, GovernanceConfigError) as exc:
        _fail(str(exc))


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


@app.command()
def up(config: ConfigOpt = None,
       http_port: Annotated[int | None, typer.Option(help="HTTP port (default 8080)")] = None,
       grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051)")] = None,
       data_dir: Annotated[Path | None, typer.Option(help="where the SQLite file lives")] = None) -> None:
    """Run api + writer + consumer in one process (the log is a database table unless Kafka is configured)."""
    settings = _settings(config, {"http": {"port": http_port}, "grpc": {"port": grpc_port}, "data_dir": data_dir})
    _run_roles(settings, ("api", "writer", "consumer"), default_mode="development")


def _role(name: str, config: Path | None) -> None:
    # Without kafka.bootstrap_servers the roles share the database log through the database.
    _run_roles(_settings(config), (name,), default_mode="production")


@app.command()
def api(config: ConfigOpt = None) -> None:
    """Run the HTTP API (accounts, usage, POST /v1/traffic)."""
    _role("api", config)


@app.command()
def writer(config: ConfigOpt = None) -> None:
    """Run the gRPC writer (TrafficWriter), with /metrics on the admin port."""
    _role("writer", config)


@app.command()
def consumer(config: ConfigOpt = None) -> None:
    """Run the aggregating Kafka consumer, with /metrics on the admin port."""
    _role("consumer", config)


@app.command()
def relay(config: ConfigOpt = None) -> None:
    """Run the Alertmanager -> DingTalk relay."""
    settings = _settings(config)
    from service.relay import RelaySettings, serve
    from service.relay.auth import WebhookAuth

    try:
        relay_settings = RelaySettings.model_validate(settings.relay)
    except Exception as exc:  # pydantic.ValidationError, phrased by pydantic
        _fail(f"invalid relay configuration: {exc}")
        raise AssertionError from exc
    try:
        WebhookAuth(relay_settings.auth)  # reads the token/password files: a missing one fails here
    except (OSError, ValueError) as exc:
        _fail(f"relay auth: {exc}")
    _run(serve(relay_settings))


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply pending database migrations."""
    settings = _settings(config)
    from service.storage import create_database

    async def main() -> list[int]:
        db = create_database(settings.database_url())
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = asyncio.run(main())
    typer.echo(f"applied migrations: {applied}" if applied else "database is up to date")


@accounts_app.command("create")
def accounts_create(name: Annotated[str, typer.Option(help="account name")],
                    quota_bytes: Annotated[int | None, typer.Option(help="monthly quota in bytes")] = None,
                    with_key: Annotated[bool, typer.Option(help="also create an API key")] = True,
                    config: ConfigOpt = None) -> None:
    """Create an account (and an API key) directly in the database."""
    settings = _settings(config)
    from service.storage import Repository, create_database

    async def main() -> tuple[dict, dict | None]:
        db = create_database(settings.database_url())
        try:
            await db.migrate()
            repo = Repository(db)
            acc = await repo.create_account(name, quota_bytes)
            key = await repo.create_key(acc["id"]) if with_key else None
            return acc, key
        finally:
            await db.close()

    acc, key = asyncio.run(main())
    typer.echo(f"account {acc['id']} ({acc['name']})")
    if key:
        typer.echo(f"api key {key['key']}   (shown once; id {key['id']})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
