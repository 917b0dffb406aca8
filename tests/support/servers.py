"""Start REAL PostgreSQL and Redis servers for integration tests.

Each server runs in its own temp dir on a random free loopback port and is returned as a small
object with its URLs plus start()/stop()/kill()/restart(), so chaos tests can crash and revive it.
The processes are our direct children (own process group), so kill() really is a crash: for
PostgreSQL the whole group (postmaster and backends) gets SIGKILL, and the next start() runs
crash recovery.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.require import require_binary

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


class PortInUseError(ServerStartError):
    """The chosen port was taken between picking it and binding it (other tests run in parallel)."""


def free_port() -> int:
    """A loopback port the kernel just handed out; it can be raced, so starters retry on collision."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "<no log written>"


@dataclass
class _ManagedProcess:
    """Shared process handling: one child in its own process group, logging to a file."""

    workdir: Path
    port: int
    host: str = LOOPBACK
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_offset: int = field(default=0, init=False, repr=False)

    @property
    def logfile(self) -> Path:
        return self.workdir / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.logfile, lines)

    def _log_since_start(self) -> str:
        try:
            with self.logfile.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _spawn(self, cmd: list[str], **popen_kwargs: object) -> None:
        if self.running:
            raise RuntimeError(f"{type(self).__name__} already running (pid {self.pid})")
        self._log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                process_group=0,  # own group: kill() can take the server's children down with it
                **popen_kwargs,  # type: ignore[arg-type]
            )

    def _wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                log = self._log_since_start()
                err = PortInUseError if "already in use" in log.lower() else ServerStartError
                raise err(
                    f"{what} exited with code {self._proc.returncode} while starting on port "
                    f"{self.port}; log tail ({self.logfile}):\n{self.log_tail()}"
                )
            if probe():
                return
            time.sleep(0.05)
        self.kill()
        raise ServerStartError(
            f"{what} not ready on {self.host}:{self.port} after {timeout:.0f}s; "
            f"log tail ({self.logfile}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown; falls back to kill() if the server does not exit in time."""
        if not self.running or self._proc is None:
            return
        self._proc.send_signal(self._stop_signal)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Crash the server: SIGKILL to its whole process group, no shutdown handling at all."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    _stop_signal = signal.SIGTERM


@dataclass
class PostgresServer(_ManagedProcess):
    """A throwaway PostgreSQL cluster. `url` is for SQLAlchemy+asyncpg, `dsn` for libpq/asyncpg."""

    bindir: Path = Path()
    os_user: str | None = None  # OS account the server runs as (postgres refuses to run as root)
    user: str = "postgres"  # database superuser, trust auth on loopback
    database: str = "meterd_test"
    # Extra `-c name=value` server settings, e.g. {"synchronous_commit": "off"} for bulk-load tests.
    settings: dict[str, str] = field(default_factory=dict)

    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def _as_user(self) -> dict[str, object]:
        if self.os_user is None:
            return {}
        pw = pwd.getpwnam(self.os_user)
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def _bin(self, name: str) -> str:
        return str(self.bindir / name)

    def initdb(self) -> None:
        # --no-sync: a test cluster need not survive a power cut; saves seconds per init.
        cmd = [self._bin("initdb"), "-D", str(self.datadir), "-U", self.user, "--auth=trust",
               "--no-sync", "--no-locale", "-E", "UTF8"]
        res = subprocess.run(cmd, cwd=self.workdir, capture_output=True, text=True, **self._as_user())  # type: ignore[call-overload]
        if res.returncode != 0:
            raise ServerStartError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            self._bin("postgres"), "-D", str(self.datadir), "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-c", f"unix_socket_directories={self.workdir}",
            # No fsync: tests want speed, and a killed *process* loses nothing the kernel already has.
            # synchronous_commit stays on: with fsync off it only costs a write() per commit, and
            # with it off a SIGKILL loses acknowledged commits, which would break crash tests.
            "-c", "fsync=off", "-c", "full_page_writes=off",
        ]
        for name, value in self.settings.items():
            cmd += ["-c", f"{name}={value}"]
        deadline = time.monotonic() + timeout
        while True:
            self._spawn(cmd, **self._as_user())
            try:
                self._wait_ready(self._is_ready, max(deadline - time.monotonic(), 1.0), "postgres")
                return
            except PortInUseError:
                raise
            except ServerStartError:
                # Right after kill() the old backends may still hold the shared memory block for a
                # moment; postgres then refuses to start, so retry until the deadline.
                if time.monotonic() >= deadline or "still in use" not in self._log_since_start():
                    raise
                time.sleep(0.2)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def _is_ready(self) -> bool:
        res = subprocess.run(
            [self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-t", "1"],
            capture_output=True,
        )
        return res.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL statement through the real psql client; returns its unaligned output."""
        res = subprocess.run(
            [self._bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(database),
             "-c", sql],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"psql failed ({res.returncode}) for {sql!r}: {res.stderr.strip()}")
        return res.stdout

    def create_database(self, name: str) -> None:
        self.psql(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a test forgot to close, so cleanup cannot hang on them.
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RedisServer(_ManagedProcess):
    """A throwaway Redis with persistence off. `limits_url` is the form the `limits` library wants."""

    binary: str = "redis-server"

    def url_for(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for(0)

    @property
    def limits_url(self) -> str:
        return f"async+redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
               "--appendonly", "no", "--dir", str(self.workdir)]
        self._spawn(cmd)
        self._wait_ready(self._is_ready, timeout, "redis-server")

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def flushall(self) -> None:
        """Empty every Redis db (used between tests sharing the session server)."""
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def postgres_bindir() -> Path:
    """Directory of the newest installed PostgreSQL server binaries (skips/fails if absent)."""
    initdb = require_binary("initdb", "/usr/lib/postgresql/*/bin/initdb")
    bindir = Path(os.path.realpath(initdb)).parent
    for tool in ("postgres", "pg_isready", "psql"):
        require_binary(str(bindir / tool))
    return bindir


def _server_os_user() -> str | None:
    """As root, postgres must run as an unprivileged account; create `postgres` if the package didn't."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "postgres"], check=True)
    return "postgres"


@contextlib.contextmanager
def running_postgres(
    bindir: Path | None = None,
    *,
    database: str = "meterd_test",
    settings: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[PostgresServer]:
    """A fresh initdb'd cluster with `database` created; removed again on exit."""
    bindir = bindir or postgres_bindir()
    os_user = _server_os_user()
    workdir = Path(tempfile.mkdtemp(prefix="meterd-pg-"))
    server: PostgresServer | None = None
    try:
        if os_user:
            pw = pwd.getpwnam(os_user)
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        for attempt in range(3):
            server = PostgresServer(workdir=workdir, port=free_port(), bindir=bindir, os_user=os_user,
                                    database=database, settings=dict(settings or {}))
            if attempt == 0:
                server.initdb()
            try:
                server.start(timeout)
                break
            except PortInUseError:
                if attempt == 2:
                    raise
        assert server is not None
        server.create_database(database)
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(binary: str | None = None, *, timeout: float = 15.0) -> Iterator[RedisServer]:
    """A fresh Redis on a free loopback port; stopped and its dir removed on exit."""
    binary = binary or require_binary("redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="meterd-redis-"))
    server: RedisServer | None = None
    try:
        for attempt in range(3):
            server = RedisServer(workdir=workdir, port=free_port(), binary=binary)
            try:
                server.start(timeout)
                break
            except PortInUseError:
                if attempt == 2:
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
