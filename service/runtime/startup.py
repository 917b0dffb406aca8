"""Start-up failures a person can act on: each becomes one StartupError line naming what to change."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from service.config import Settings
from service.runtime.datadir import StartupError
from service.storage import Database, create_database

# What to change for each listening port: (flag, setting); `meterd up` has flags for two of them.
PORT_SETTINGS = {"http": ("--http-port or ", "http.port"), "grpc": ("--grpc-port or ", "grpc.port"),
                 "admin": ("", "admin.port")}
DB_HINT = "(database.url, METERD_DATABASE__URL)"


def _port_hint(kind: str) -> str:
    flag, key = PORT_SETTINGS[kind]
    env = "METERD_" + key.upper().replace(".", "__")
    return f"set {flag}{env} ({key}) to a free port, or 0 for any"


def port_in_use(kind: str, host: str, port: int) -> StartupError:
    return StartupError(f"{kind} port {host}:{port} is already in use: {_port_hint(kind)}")


def check_port_free(kind: str, host: str, port: int) -> None:
    """Binds and releases the port first: gRPC's own bind failure is a C-core log line and a RuntimeError."""
    if port == 0:
        return
    try:
        family, kind_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind_, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as exc:
        raise bind_error(kind, host, port, exc) from None


def bind_error(kind: str, host: str, port: int, exc: OSError) -> StartupError:
    if exc.errno == errno.EADDRINUSE:
        return port_in_use(kind, host, port)
    return StartupError(f"{kind} port {host}:{port} cannot be opened ({exc.strerror or exc}): {_port_hint(kind)}")


@contextmanager
def binding(kind: str, host: str, port: int) -> Iterator[None]:
    """Turns a bind failure inside the block into one line naming the port and its setting."""
    try:
        yield
    except OSError as exc:
        raise bind_error(kind, host, port, exc) from None


async def open_database(s: Settings) -> Database:
    """The database, reachable: a malformed URL or one that cannot connect is one line (password hidden)."""
    raw = s.database_url()
    try:
        shown = make_url(raw).render_as_string(hide_password=True)
        db = create_database(raw, pool_size=s.database.pool_size, echo=s.database.echo,
                             sqlite_synchronous=s.database.sqlite_synchronous)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise StartupError(f"not a database URL meterd can use: {_reason(exc)} {DB_HINT}") from None
    try:
        await db.ping()
    except (OSError, DBAPIError, TimeoutError) as exc:
        await db.close()
        raise StartupError(f"cannot connect to the database {shown}: {_reason(exc)} {DB_HINT}") from None
    return db


def _reason(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text[:200]
