"""Notifications the relay owns (answered 202), kept in SQLite until they are sent or given up.

A row is committed before the 202 goes out and deleted when the notification is settled, so a
relay killed in between sends it after its restart. Calls are synchronous: one small transaction
per accepted notification or sent batch (about a millisecond), and keeping them on the event loop
means a row can never be deleted before its insert has run.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

FILENAME = "notifications.sqlite3"


@dataclass(frozen=True)
class StoredNotification:
    id: int
    robot: str
    received_at: float  # wall-clock seconds (time.time()): ages survive a restart
    payload: str  # the webhook message as JSON


class NotificationStore:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / FILENAME
        # isolation_level=None: each statement commits on its own (autocommit).
        self._db = sqlite3.connect(self.path, isolation_level=None)
        # WAL + FULL: a committed row survives a killed process and a power cut.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS notifications ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, robot TEXT NOT NULL,"
            " received_at REAL NOT NULL, payload TEXT NOT NULL)"
        )
        # Sends of the last minutes, so a restarted relay still knows how much of DingTalk's
        # 20/minute budget is spent (a robot over it is throttled by DingTalk for minutes).
        self._db.execute("CREATE TABLE IF NOT EXISTS sends (robot TEXT NOT NULL, at REAL NOT NULL)")

    def add(self, robot: str, payload: str, received_at: float | None = None) -> int:
        cursor = self._db.execute(
            "INSERT INTO notifications (robot, received_at, payload) VALUES (?, ?, ?)",
            (robot, time.time() if received_at is None else received_at, payload),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def remove(self, ids: list[int]) -> None:
        if ids:  # one transaction (one sync to disk) for a whole sent batch
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM notifications WHERE id = ?", [(i,) for i in ids])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record_send(self, robot: str, keep_s: float, at: float | None = None) -> None:
        """One send attempt of `robot`, now (wall clock); forgets sends older than keep_s."""
        now = time.time() if at is None else at
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM sends WHERE at < ?", (now - keep_s,))
            self._db.execute("INSERT INTO sends (robot, at) VALUES (?, ?)", (robot, now))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def recent_sends(self, robot: str, within_s: float) -> list[float]:
        """Wall-clock times of `robot`'s sends in the last within_s seconds, oldest first."""
        rows = self._db.execute("SELECT at FROM sends WHERE robot = ? AND at >= ? ORDER BY at",
                                (robot, time.time() - within_s)).fetchall()
        return [at for (at,) in rows]

    def load(self) -> list[StoredNotification]:
        rows = self._db.execute("SELECT id, robot, received_at, payload FROM notifications ORDER BY id").fetchall()
        return [StoredNotification(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
