"""The capture directory: safe creation, file naming, listing, meta files and retention.

Files are named `<UTC time YYYYmmddTHHMMSSZ>_<pid>_<service>_<kind>.<ext>`; the part before the
kind is the capture id that groups a capture's files.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import stat
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .errors import UnsafeDirectory
from .info import KINDS, CaptureInfo

log = logging.getLogger("profiling")

_NAME = re.compile(
    r"^(?P<id>(?P<time>\d{8}T\d{6}Z)_(?P<pid>\d+)_(?P<service>[A-Za-z0-9.-]+))"
    r"_(?P<kind>folded|flamegraph|threads|alloc|meta)\.(?P<ext>txt|svg|json)$"
)
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def file_name(capture_id: str, kind: str) -> str:
    return f"{capture_id}_{kind}.{KINDS[kind]}"


@dataclass(frozen=True)
class _Group:
    capture_id: str
    files: dict[str, Path]

    @property
    def size(self) -> int:
        return sum(_size(p) for p in self.files.values())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class CaptureStore:
    def __init__(self, directory: Path, service: str) -> None:
        self.directory = directory
        self.service = service

    # -- directory -----------------------------------------------------------------------------

    def prepare(self) -> Path:
        """Create the directory 0700, or tighten it; refuse one another user could swap under us."""
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = directory.lstat()
        except OSError as exc:
            raise UnsafeDirectory(
                f"cannot create profile directory {directory}: {exc}",
                "set profiling.directory to a writable path",
            ) from exc
        # A shared /tmp lets anybody create /tmp/<service>_profile first: never follow a link or
        # write into a directory somebody else owns.
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafeDirectory(
                f"profile directory {directory} is not a plain directory",
                "remove it or set profiling.directory",
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UnsafeDirectory(
                f"profile directory {directory} belongs to uid {st.st_uid}, not {os.getuid()}",
                "remove it or set profiling.directory to a directory this user owns",
            )
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(directory, 0o700)
        return directory

    # -- naming --------------------------------------------------------------------------------

    def new_capture_id(self, started_at: datetime, pid: int) -> str:
        """A fresh id; two captures in the same second get the next free second."""
        existing = {g.capture_id for g in self._groups()}
        moment = started_at
        while True:
            capture_id = f"{moment.strftime(_TIME_FORMAT)}_{pid}_{self.service}"
            if capture_id not in existing:
                return capture_id
            moment += timedelta(seconds=1)

    def path(self, capture_id: str, kind: str) -> Path:
        return self.directory / file_name(capture_id, kind)

    # -- writing -------------------------------------------------------------------------------

    def write_text(self, capture_id: str, kind: str, text: str) -> Path:
        path = self.path(capture_id, kind)
        write_private(path, text.encode())
        return path

    def write_meta(self, info: CaptureInfo) -> Path:
        path = self.path(info.id, "meta")
        payload = json.dumps(info.to_dict(), indent=2, sort_keys=True).encode()
        # Readers poll the meta file: replace it atomically so they never see half of it.
        tmp = path.with_name(f".{path.name}.tmp")
        write_private(tmp, payload)
        os.replace(tmp, path)
        return path

    # -- reading -------------------------------------------------------------------------------

    def _groups(self) -> list[_Group]:
        groups: dict[str, dict[str, Path]] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            match = _NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False):
                groups.setdefault(match["id"], {})[match["kind"]] = Path(entry.path)
        return [_Group(cid, files) for cid, files in sorted(groups.items())]

    def read(self, capture_id: str) -> CaptureInfo | None:
        for group in self._groups():
            if group.capture_id == capture_id:
                return self._info(group)
        return None

    def list(self) -> list[CaptureInfo]:
        """Every capture in the directory, newest first."""
        return [self._info(g) for g in reversed(self._groups())]

    def _info(self, group: _Group) -> CaptureInfo:
        info: CaptureInfo | None = None
        meta = group.files.get("meta")
        if meta is not None:
            try:
                info = CaptureInfo.from_dict(json.loads(meta.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("unreadable meta file %s: %s", meta, exc)
        if info is None:
            match = _NAME.match(file_name(group.capture_id, "meta"))
            assert match is not None
            started = datetime.strptime(match["time"], _TIME_FORMAT).replace(tzinfo=UTC)
            info = CaptureInfo(
                id=group.capture_id,
                service=match["service"],
                pid=int(match["pid"]),
                trigger="unknown",
                status="interrupted",
                started_at=started,
            )
        files = {kind: group.files[kind].name for kind in KINDS if kind in group.files}
        status = info.status
        if status == "running" and not _alive(info.pid):
            status = "interrupted"  # the process died mid-capture
        return info.replace(files=files, status=status)

    def resolve_file(self, name: str) -> Path | None:
        """The path of a listed capture file, or None: names are matched, never joined blindly."""
        if not _NAME.match(name):
            return None
        for group in self._groups():
            for path in group.files.values():
                if path.name == name:
                    return path
        return None

    # -- retention -----------------------------------------------------------------------------

    def enforce_retention(self, max_files: int, max_bytes: int,
                          keep: AbstractSet[str] = frozenset()) -> builtins.list[str]:
        """Delete whole captures, oldest first, until both limits hold. Returns the deleted ids."""
        groups = self._groups()
        files = sum(len(g.files) for g in groups)
        size = sum(g.size for g in groups)
        deleted: list[str] = []
        for group in groups:  # oldest first: ids start with the UTC time
            if files <= max_files and size <= max_bytes:
                break
            if group.capture_id in keep:
                continue
            group_size = group.size
            for path in group.files.values():
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            files -= len(group.files)
            size -= group_size
            deleted.append(group.capture_id)
        if deleted:
            log.info("profiling retention removed %d old capture(s): %s", len(deleted), ", ".join(deleted))
        return deleted


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        handle.write(data)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
