"""Locate the real binaries integration tests need.

Locally a missing binary skips the test with a hint on how to install it; in CI (CI=true) the
same situation is a failure, so a broken CI image can never turn into a green run of skips.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from typing import NoReturn

import pytest

# Which Debian package ships each binary, so the skip/fail message says what to install.
DEBIAN_PACKAGES: dict[str, str] = {
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "postgres": "postgresql",
    "pg_isready": "postgresql-client",
    "psql": "postgresql-client",
    "createdb": "postgresql-client",
    "dropdb": "postgresql-client",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "docker-compose": "docker-compose",
}

_GLOB_CHARS = re.compile(r"[*?\[]")


def _version_key(path: str) -> tuple[tuple[int, ...], str]:
    # "/usr/lib/postgresql/15/bin/initdb" -> (15,): numeric parts sort 9 < 10 < 15 correctly.
    return tuple(int(n) for n in re.findall(r"\d+", path)), path


def _executable(path: str) -> str | None:
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _lookup(candidate: str) -> str | None:
    if _GLOB_CHARS.search(candidate):
        # Several installed versions (e.g. postgresql 15 and 16): prefer the highest.
        for match in sorted(glob.glob(candidate), key=_version_key, reverse=True):
            if found := _executable(match):
                return found
        return None
    if os.sep in candidate:
        return _executable(candidate)
    return shutil.which(candidate)


def find_binary(name: str, *candidates: str) -> str | None:
    """First existing executable among name and candidates (PATH names, absolute paths or globs)."""
    for candidate in (name, *candidates):
        if found := _lookup(candidate):
            return found
    return None


def require_binary(name: str, *candidates: str) -> str:
    """Path of the binary, or skip the test (locally) / fail it (CI=true) with an install hint."""
    found = find_binary(name, *candidates)
    if found:
        return found
    package = DEBIAN_PACKAGES.get(os.path.basename(name), os.path.basename(name))
    msg = (
        f"required binary {name!r} not found (looked for: {', '.join((name, *candidates))}); "
        f"install the Debian package {package!r} — `make test` installs it via .ci/system-deps.sh"
    )
    skip_or_fail(msg)


def skip_or_fail(msg: str) -> NoReturn:
    """The one place a test may give up for a missing prerequisite: a skip locally, a failure
    under CI=true (so CI reports 0 skipped or fails)."""
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)
