"""What meterd keeps in its data dir besides the database: the development admin token and pid files.

Every command resolves the same data dir (see ``service.config.default_data_dir``), so the token a
`meterd up` printed yesterday, and the CLI that reads it, find each other from any directory.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE = "admin-token"
URL_FILE = "api-url"


class StartupError(Exception):
    """A start-up failure, already phrased as one line for a person (the CLI prints it and exits 2)."""


def prepare(data_dir: Path) -> Path:
    """The data dir, absolute and created, or one line saying why it cannot be used."""
    path = data_dir.expanduser().absolute()
    hint = "(set --data-dir or METERD_DATA_DIR)"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"data dir {path} is not a directory {hint}") from None
    except OSError as exc:
        raise StartupError(f"data dir {path} cannot be created: {exc.strerror} {hint}") from None
    if not path.is_dir():
        raise StartupError(f"data dir {path} is not a directory {hint}")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise StartupError(f"data dir {path} is not readable and writable by this user {hint}")
    return path


def dev_token(data_dir: Path) -> Path:
    """The development admin token's file, created once (0600) with a fresh token; later starts reuse it."""
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _checked(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(24) + "\n")
    return path


def _checked(path: Path) -> Path:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise StartupError(f"{path} is readable by other users: chmod 600 {path}")
    if len(read_token(path) or "") < 16:
        raise StartupError(f"{path} holds no usable token (16+ characters): delete it to get a new one")
    return path


def read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class PidFile:
    """``<data_dir>/meterd-<name>.pid`` while the servers are up; removed by the drain if still ours."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.path = data_dir / f"meterd-{name}.pid"
        self.pid = os.getpid()

    def write(self) -> None:
        tmp = self.path.with_suffix(".pid.tmp")
        tmp.write_text(f"{self.pid}\n")
        tmp.replace(self.path)  # atomic: a reader never sees a half-written pid

    def remove(self) -> None:
        try:
            if self.path.read_text().strip() == str(self.pid):
                self.path.unlink()
        except OSError:
            pass


def write_api_url(data_dir: Path, url: str) -> None:
    """Where this data dir's API listens, for the CLI (`meterd accounts list` and friends)."""
    tmp = data_dir / (URL_FILE + ".tmp")
    tmp.write_text(url + "\n")
    tmp.replace(data_dir / URL_FILE)


def remove_api_url(data_dir: Path, url: str) -> None:
    """On stop, unless another server on this data dir has written its own since."""
    path = data_dir / URL_FILE
    try:
        if path.read_text().strip() == url:
            path.unlink()
    except OSError:
        pass
