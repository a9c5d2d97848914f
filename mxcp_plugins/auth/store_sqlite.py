"""Builtin plugin: the sign-in proxy's state (clients, pending logins, codes, tokens) in one SQLite file.

`persistence: {type: sqlite, path: ...}` (the default type). The file defaults to
`~/.mxcp/oauth/<project>-<profile>.db`; its folder is created 0700 and the file 0600, since it holds the
proxy's encryption key and client secrets (tokens and codes only ever arrive as hashes).

One table `(kind, key, grant, record, expires_at)` keyed by `(kind, key)`. `take` is a single
`DELETE ... RETURNING` statement, so a code or refresh token is handed out once even when several processes
share the file (WAL mode lets readers and the writer proceed together). Expired rows are never returned and
are purged now and then. Only `sqlite3` is imported here: the module loads with every `mxcp` invocation.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mxcp_core import hookimpl

SCHEMA = """
CREATE TABLE IF NOT EXISTS sign_in (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    "grant" TEXT,
    record TEXT NOT NULL,
    expires_at REAL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS sign_in_grant ON sign_in ("grant");
CREATE INDEX IF NOT EXISTS sign_in_expiry ON sign_in (expires_at);
"""

PURGE_EVERY = 60.0  # seconds between opportunistic purges of expired rows
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


def default_path(project: Any) -> Path:
    return Path("~/.mxcp/oauth").expanduser() / f"{project.site.project}-{project.profile}.db"


def store_path(persistence: Mapping[str, Any], project: Any) -> Path:
    raw = persistence.get("path")
    if not raw:
        return default_path(project)
    path = Path(str(raw)).expanduser()
    if not path.is_absolute():
        path = Path(project.root) / path
    return path


class SqliteSignInStore:
    """A `SignInStore` (mxcp_core.sign_in) over one SQLite file; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                # Create the file with 0600 before SQLite opens it (no window with a wider umask).
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA busy_timeout = 30000")
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)
        self._last_purge = 0.0

    # -- helpers ------------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("sign-in store is closed")
        return self._db

    def _maybe_purge(self, now: float) -> None:
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            self._conn().execute("DELETE FROM sign_in WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))

    @staticmethod
    def _decode(row: tuple[Any, ...] | None, now: float) -> dict[str, Any] | None:
        if row is None:
            return None
        record, expires_at = row
        if expires_at is not None and expires_at <= now:
            return None
        return json.loads(record)

    # -- SignInStore --------------------------------------------------------------------------------------
    def put(self, kind: str, key: str, record: Mapping[str, Any], *, expires_at: float | None = None,
            grant: str | None = None) -> None:
        data = json.dumps(dict(record), separators=(",", ":"))
        with self._lock:
            now = time.time()
            self._maybe_purge(now)
            self._conn().execute(
                'INSERT OR REPLACE INTO sign_in (kind, key, "grant", record, expires_at) VALUES (?, ?, ?, ?, ?)',
                (kind, key, grant, data, expires_at),
            )

    def put_if_absent(self, kind: str, key: str, record: Mapping[str, Any], *, expires_at: float | None = None,
                      grant: str | None = None) -> dict[str, Any]:
        """Store `record` unless a live one is there; the record stored now (the first writer's when processes
        sharing the file race: one IMMEDIATE transaction takes the write lock before reading)."""
        data = json.dumps(dict(record), separators=(",", ":"))
        with self._lock:
            db = self._conn()
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                found = self._decode(db.execute("SELECT record, expires_at FROM sign_in WHERE kind = ? AND key = ?",
                                                (kind, key)).fetchone(), now)
                if found is None:
                    db.execute('INSERT OR REPLACE INTO sign_in (kind, key, "grant", record, expires_at) '
                               "VALUES (?, ?, ?, ?, ?)", (kind, key, grant, data, expires_at))
                    found = json.loads(data)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return found

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            now = time.time()
            row = self._conn().execute(
                "SELECT record, expires_at FROM sign_in WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return self._decode(row, now)

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            now = time.time()
            db = self._conn()
            if _RETURNING:
                # One statement: the row is gone for every other connection the moment it is read.
                row = db.execute(
                    "DELETE FROM sign_in WHERE kind = ? AND key = ? RETURNING record, expires_at", (kind, key)
                ).fetchone()
            else:  # pragma: no cover - SQLite < 3.35
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute(
                        "SELECT record, expires_at FROM sign_in WHERE kind = ? AND key = ?", (kind, key)
                    ).fetchone()
                    db.execute("DELETE FROM sign_in WHERE kind = ? AND key = ?", (kind, key))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            return self._decode(row, now)

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM sign_in WHERE kind = ? AND key = ?", (kind, key))

    def delete_grant(self, grant: str) -> int:
        with self._lock:
            cur = self._conn().execute('DELETE FROM sign_in WHERE "grant" = ?', (grant,))
            return cur.rowcount

    def purge(self) -> int:
        """Delete every expired row now; answers how many went."""
        with self._lock:
            now = time.time()
            self._last_purge = now
            cur = self._conn().execute(
                "DELETE FROM sign_in WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@hookimpl
def open_sign_in_store(persistence, project):
    persistence = persistence or {}
    if persistence.get("type", "sqlite") != "sqlite":
        return None
    return SqliteSignInStore(store_path(persistence, project))
