"""The ``meterd`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

# meterd never forks a gRPC-using child (py-spy and Tansu are exec'd), so gRPC's fork handlers
# only add log noise when a subprocess is spawned with preexec_fn. Read by grpc at import time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
from pathlib import Path
from typing import Annotated, Any

import typer

from service.admin_cli import accounts_app, keys_app, usage
from service.config import ConfigError, Settings, load_settings
from service.logging_setup import configure_logging
from service.runtime import datadir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="meterd: traffic metering and accounts (gRPC/HTTP ingestion, log aggregation, usage API).")
app.add_typer(accounts_app, name="accounts")
app.add_typer(keys_app, name="keys")
app.command("usage")(usage)

ConfigOpt = Annotated[Path | None,
                      typer.Option("--config", "-c", help="YAML config file; METERD_* env vars override it")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="SQLite file, dev admin token, pid file (default $XDG_DATA_HOME/meterd or "
                       "~/.local/share/meterd; env METERD_DATA_DIR)")]
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


def _admin_token(settings: Settings, default_mode: str) -> tuple[str, Path | None]:
    """The admin token and, in development mode without one set, the data-dir file it is kept in."""
    mode = settings.mode or default_mode
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        token = settings.admin_token.get_secret_value()
        if len(token) < 16:
            _fail("admin_token: must be at least 16 characters (env METERD_ADMIN_TOKEN)")
        return token, None
    if mode == "production":
        _fail("admin_token: production mode needs an admin token: set METERD_ADMIN_TOKEN "
              "(or `mode: development` for a generated one)")
    path = datadir.dev_token(settings.data_dir)
    return datadir.read_token(path) or "", path


def _run_roles(settings: Settings, roles: tuple[str, ...], *, default_mode: str, name: str,
               workers: int = 1, config: Path | None = None, slot: str | None = None) -> None:
    from governance import GovernanceConfigError

    try:
        # the mode in effect travels with the settings (the webhook dispatcher reads it)
        settings = settings.model_copy(update={"data_dir": datadir.prepare(settings.data_dir),
                                               "mode": settings.mode or default_mode})
        token, token_file = _admin_token(settings, default_mode)
        if workers > 1:
            _run_supervisor(settings, workers, config, token, token_file)
        else:
            _run(_serve(settings, roles, token, token_file, name, slot))
    except (ConfigError, GovernanceConfigError, datadir.StartupError) as exc:
        _fail(str(exc))


def _run_supervisor(settings: Settings, workers: int, config: Path | None, token: str,
                    token_file: Path | None) -> None:
    from service.runtime.multi import serve_supervised

    def banner(lines: list[str]) -> None:
        if token_file is not None:  # printed to whoever started development mode; never logged
            typer.echo(f"  admin token (development mode, kept in {token_file}): {token}")
        for line in lines:
            typer.echo(line)
        typer.echo(f"  Data dir     {settings.data_dir}")
        pid_path = datadir.PidFile(settings.data_dir, "up").path
        typer.echo(f"  pid          {os.getpid()}   (the supervisor, in {pid_path}; SIGTRAP profiles every process)")
        typer.echo(f"  meterd api+{workers}x writer+consumer ready; Ctrl-C drains and stops")
        sys.stdout.flush()

    code = 0

    async def main() -> None:
        nonlocal code
        code = await serve_supervised(settings, workers, config, banner)

    _run(main())
    if code:
        raise typer.Exit(code)


async def _serve(settings: Settings, roles: tuple[str, ...], token: str, token_file: Path | None,
                 name: str, slot: str | None = None) -> None:
    from service.runtime.process import MeterdProcess

    proc = MeterdProcess(settings, roles, token, shared_grpc_port=slot is not None)
    proc.install_signal_handlers()
    if slot is not None:
        _as_child(proc)
    try:
        await proc.start()
    except BaseException:
        await proc.stop()
        raise
    pid_file = datadir.PidFile(settings.data_dir, name)
    if slot is None:
        pid_file.write()
    try:
        if slot is None:
            _print_ready(proc, settings, roles, token, token_file, pid_file)
        else:
            _report_ready(proc, settings)
        await proc.wait()
        log.info("draining")
        await proc.stop()
        log.info("stopped")
    finally:
        pid_file.remove()
        if proc.endpoints.http:
            datadir.remove_api_url(settings.data_dir, proc.endpoints.http)


def _as_child(proc: Any) -> None:
    """Under `meterd up`'s supervisor: its SIGTERM starts our drain, in its order; a terminal's Ctrl-C
    (sent to the whole group) is the supervisor's to act on; if the supervisor dies, we drain and stop."""
    import signal

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)

    def on_stdin() -> None:  # the supervisor holds our stdin pipe open and never writes to it
        if not os.read(0, 4096):
            loop.remove_reader(0)
            log.warning("supervisor is gone; draining")
            proc.request_stop()

    loop.add_reader(0, on_stdin)


def _report_ready(proc: Any, settings: Settings) -> None:
    from service.runtime.supervisor import READY_PREFIX

    e = proc.endpoints
    if e.http:
        datadir.write_api_url(settings.data_dir, e.http)
    typer.echo(READY_PREFIX + json.dumps({"http": e.http, "grpc": e.grpc, "admin": e.admin, "log": e.log}))
    sys.stdout.flush()


def _print_ready(proc: Any, settings: Settings, roles: tuple[str, ...], token: str, token_file: Path | None,
                 pid_file: datadir.PidFile) -> None:
    # Only now, with every server bound, is the token worth printing (a failed start prints none).
    e = proc.endpoints
    if token_file is not None:
        # Printed to the terminal of whoever started development mode; never logged.
        typer.echo(f"  admin token (development mode, kept in {token_file}): {token}")
    if e.http:
        datadir.write_api_url(settings.data_dir, e.http)
        typer.echo(f"  HTTP API     {e.http}   (docs {e.http}/docs, metrics {e.http}/metrics)")
    if e.grpc:
        typer.echo(f"  gRPC writer  {e.grpc}")
    if e.admin:
        typer.echo(f"  admin        {e.admin}   (/metrics /healthz /readyz)")
    typer.echo(f"  Log          {e.log}")
    typer.echo(f"  Data dir     {settings.data_dir}")
    typer.echo(f"  pid          {pid_file.pid}   (in {pid_file.path}; SIGTRAP starts/stops a profile)")
    typer.echo(f"  meterd {'+'.join(roles)} ready; Ctrl-C drains and stops")
    sys.stdout.flush()


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
       data_dir: DataDirOpt = None,
       workers: Annotated[str | None, typer.Option(
           help="gRPC writer processes: auto (the CPUs meterd may use) or N; 1 runs everything in one "
                "process (default auto; env METERD_WORKERS)")] = None) -> None:
    """Run api + writer + consumer: N writer processes, the API and the consumer under one supervisor,
    or all in one process with --workers 1 (the log is a database table unless Kafka is configured)."""
    settings = _settings(config, {"http": {"port": http_port}, "grpc": {"port": grpc_port}, "data_dir": data_dir})
    from service.runtime.workers import parse_workers

    try:
        count = parse_workers(str(workers if workers is not None else settings.workers))
    except datadir.StartupError as exc:
        _fail(str(exc))
        raise AssertionError from exc
    _run_roles(settings, ("api", "writer", "consumer"), default_mode="development", name="up",
               workers=count, config=config)


@app.command("child", hidden=True)
def child(role: str, slot: Annotated[str, typer.Option()], config: ConfigOpt = None) -> None:
    """One role under `meterd up`'s supervisor (started by it, not by hand)."""
    if role not in ("api", "writer", "consumer"):
        _fail(f"unknown role {role!r}")
    _run_roles(_settings(config), (role,), default_mode="production", name=slot, slot=slot)


def _role(name: str, config: Path | None, data_dir: Path | None) -> None:
    # Without kafka.bootstrap_servers the roles share the database log through the database.
    _run_roles(_settings(config, {"data_dir": data_dir}), (name,), default_mode="production", name=name)


@app.command()
def api(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Run the HTTP API (accounts, usage, POST /v1/traffic)."""
    _role("api", config, data_dir)


@app.command()
def writer(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Run the gRPC writer (TrafficWriter), with /metrics on the admin port."""
    _role("writer", config, data_dir)


@app.command()
def consumer(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Run the aggregating Kafka consumer, with /metrics on the admin port."""
    _role("consumer", config, data_dir)


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
def migrate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Apply pending database migrations."""
    settings = _settings(config, {"data_dir": data_dir})
    from service.storage import create_database

    async def main() -> list[int]:
        db = create_database(settings.database_url())
        try:
            return await db.migrate()
        finally:
            await db.close()

    applied = asyncio.run(main())
    typer.echo(f"applied migrations: {applied}" if applied else "database is up to date")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
