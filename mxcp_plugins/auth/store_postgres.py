"""Builtin plugin: the sign-in proxy's state in PostgreSQL, shared by every replica of a server.

    auth:
      persistence: {type: postgres, secret: pg_main, table: mxcp_sign_in}

`secret` names a user-config secret of `type: postgres` (see mxcp_plugins/postgres_connect.py); `table`
(default `mxcp_sign_in`, `schema.table` allowed) is created when missing. One row per `(kind, key)` with the
record as jsonb, its grant and its expiry (epoch seconds, as the SQLite store keeps them).

Replicas share everything through the table: tokens are looked up by hash on every request, `take` is one
`DELETE ... RETURNING` (a code or refresh token is handed out once across processes and machines), and the
proxy's encryption key is created with `put_if_absent`, so replicas starting together agree on one key.
Connections come from a small psycopg pool (thread-safe); a connection the server dropped is replaced and the
statement tried once more. psycopg is imported only when this store is configured.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from mxcp_core import ConfigError, MxcpError, hookimpl, user_config_path

from ..postgres_connect import connection_parameters, describe, require_psycopg

log = logging.getLogger(__name__)

TYPE = "postgres"
DEFAULT_TABLE = "mxcp_sign_in"
KEYS = ("type", "secret", "table")
PURGE_EVERY = 60.0  # seconds between opportunistic purges of expired rows (per process)
POOL_SIZE = 4  # the proxy's store calls are short; a few connections serve a replica's threads
CONNECT_WAIT = 5.0  # seconds a call waits for a pooled connection (the request it serves waits as long)
# Seconds one statement may run (or wait for a lock) before the server cancels it: the proxy runs store calls in
# worker threads, but a statement stuck behind a lock would still hold a thread and its request indefinitely.
STATEMENT_TIMEOUT = 5.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SignInStoreError(MxcpError):
    """The PostgreSQL store failed; the message names the store (user@host:port/db, table), never the password."""


def table_name(value: Any, *, file: Any, key_path: str) -> tuple[str, ...]:
    """`table` or `schema.table` as identifier parts; ConfigError for anything else (it is quoted, never formatted)."""
    parts = tuple(str(value).split("."))
    if not isinstance(value, str) or len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise ConfigError(f"'{value}' is not a table name (letters, digits and _, optionally schema.table)",
                          file=file, key_path=key_path)
    return parts


class PostgresSignInStore:
    """A `SignInStore` (mxcp_core.sign_in) over one PostgreSQL table; safe to share between threads and replicas.

    `keywords` are libpq connection keywords (`connection_parameters`); the pool opens when the store does and the
    table is created if missing (under an advisory lock, so replicas starting together do not collide).
    """

    def __init__(self, keywords: Mapping[str, Any], *, table: tuple[str, ...] = (DEFAULT_TABLE,),
                 pool_size: int = POOL_SIZE, connect_wait: float = CONNECT_WAIT,
                 statement_timeout: float = STATEMENT_TIMEOUT) -> None:
        self._psycopg = require_psycopg("the sign-in store 'postgres' (auth.persistence.type)")
        from psycopg import sql
        from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

        self._password = str(keywords.get("password") or "")
        self.where = f"{describe(keywords)} table {'.'.join(table)}"
        self._table = sql.Identifier(*table)
        self._index = {suffix: sql.Identifier(f"{table[-1]}_{suffix}") for suffix in ("grant", "expiry")}
        self._lock_id = int.from_bytes(hashlib.sha256(f"mxcp-sign-in:{'.'.join(table)}".encode()).digest()[:8],
                                       "big", signed=True)
        self._sql = sql
        self._pool_errors = (PoolTimeout, PoolClosed)
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0
        # The table first, on a connection of its own: a wrong host or password fails here, before serving, with
        # libpq's own reason (the pool would only time out).
        self._guarded("could not be opened", lambda: self._create_table(keywords))
        timeout_ms = str(max(1, int(statement_timeout * 1000)))

        def configure(conn: Any) -> None:  # session-wide: the pool's connections are autocommit
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))

        self._pool = ConnectionPool(kwargs={**keywords, "autocommit": True}, min_size=1, max_size=max(1, pool_size),
                                    timeout=connect_wait, name="mxcp-sign-in", configure=configure, open=True)

    def __repr__(self) -> str:
        return f"PostgresSignInStore({self.where})"

    # -- helpers ------------------------------------------------------------------------------------------
    def _error(self, what: str, exc: BaseException) -> SignInStoreError:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")  # libpq never echoes it; belt and braces
        return SignInStoreError(f"sign-in store postgres ({self.where}) {what}: {reason}")

    def _guarded(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except self._psycopg.Error as exc:
            raise self._error(what, exc) from None

    def _create_table(self, keywords: Mapping[str, Any]) -> None:
        sql = self._sql
        with self._psycopg.connect(**keywords) as conn, conn.transaction():
            # Two replicas creating the table at once would collide on the catalog: one waits for the other.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            found = conn.execute("SELECT to_regclass(%s)", (self._table.as_string(conn),)).fetchone()
            if found is not None and found[0] is not None:
                return  # there already: no CREATE privilege needed
            conn.execute(sql.SQL(
                'CREATE TABLE {} (kind text NOT NULL, key text NOT NULL, "grant" text, record jsonb NOT NULL, '
                "expires_at double precision, PRIMARY KEY (kind, key))").format(self._table))
            conn.execute(sql.SQL('CREATE INDEX {} ON {} ("grant")').format(self._index["grant"], self._table))
            conn.execute(sql.SQL("CREATE INDEX {} ON {} (expires_at)").format(self._index["expiry"], self._table))

    def _run(self, what: str, statement: Any, params: tuple[Any, ...]) -> tuple[list[tuple[Any, ...]], int]:
        """One statement in its own transaction: its rows and row count. A connection the server dropped (a
        restart, a failover, `pg_terminate_backend`) is replaced and the statement tried once more; every
        statement here is safe to repeat (a `take` whose first try deleted the row answers None: used)."""
        pool = self._pool
        for attempt in (1, 2):
            try:
                with pool.connection() as conn:
                    cursor = conn.execute(statement, params)
                    return (cursor.fetchall() if cursor.description else []), cursor.rowcount
            except self._pool_errors as exc:  # no connection to be had (PoolTimeout, PoolClosed): no retry
                raise self._error(what, exc) from None
            except self._psycopg.OperationalError as exc:
                if attempt == 2 or not _connection_lost(exc):
                    raise self._error(what, exc) from None
                log.info("sign-in store postgres (%s): connection lost, retrying on a new one", self.where)
                pool.check()  # drop every idle connection the server closed, not just this one
            except self._psycopg.Error as exc:
                raise self._error(what, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _maybe_purge(self, now: float) -> None:
        with self._purge_lock:
            if now - self._last_purge < PURGE_EVERY:
                return
            self._last_purge = now
        try:
            self._purge(now)
        except SignInStoreError as exc:
            # Opportunistic: the record being stored matters more (and a purge over a large backlog may run into
            # the statement timeout). The next purge, a minute on, tries again.
            log.warning("%s; expired rows are purged later", exc)

    def _purge(self, now: float) -> int:
        statement = self._sql.SQL("DELETE FROM {} WHERE expires_at IS NOT NULL AND expires_at <= %s").format(
            self._table)
        return self._run("could not purge", statement, (now,))[1]

    @staticmethod
    def _decode(rows: list[tuple[Any, ...]], now: float) -> dict[str, Any] | None:
        if not rows:
            return None
        record, expires_at = rows[0]
        if expires_at is not None and expires_at <= now:
            return None
        return record if isinstance(record, dict) else json.loads(record)

    # -- SignInStore --------------------------------------------------------------------------------------
    def put(self, kind: str, key: str, record: Mapping[str, Any], *, expires_at: float | None = None,
            grant: str | None = None) -> None:
        data = json.dumps(dict(record), separators=(",", ":"))
        now = time.time()
        self._maybe_purge(now)
        statement = self._sql.SQL(
            'INSERT INTO {} (kind, key, "grant", record, expires_at) VALUES (%s, %s, %s, %s::jsonb, %s) '
            'ON CONFLICT (kind, key) DO UPDATE SET "grant" = EXCLUDED."grant", record = EXCLUDED.record, '
            "expires_at = EXCLUDED.expires_at").format(self._table)
        self._run("could not store a record", statement, (kind, key, grant, data, expires_at))

    def put_if_absent(self, kind: str, key: str, record: Mapping[str, Any], *, expires_at: float | None = None,
                      grant: str | None = None) -> dict[str, Any]:
        """Store `record` unless a live record is there already; answers the record stored now (the first
        writer's, when several race). An expired record counts as absent."""
        data = json.dumps(dict(record), separators=(",", ":"))
        statement = self._sql.SQL(
            'INSERT INTO {t} AS old (kind, key, "grant", record, expires_at) VALUES (%s, %s, %s, %s::jsonb, %s) '
            'ON CONFLICT (kind, key) DO UPDATE SET "grant" = EXCLUDED."grant", record = EXCLUDED.record, '
            "expires_at = EXCLUDED.expires_at WHERE old.expires_at IS NOT NULL AND old.expires_at <= %s "
            "RETURNING record, expires_at").format(t=self._table)
        for _ in range(3):  # the live record may expire or be deleted between the insert and the read
            now = time.time()
            rows, _count = self._run("could not store a record", statement, (kind, key, grant, data, expires_at, now))
            found = self._decode(rows, now) if rows else self.get(kind, key)
            if found is not None:
                return found
        raise SignInStoreError(f"sign-in store postgres ({self.where}): the record {kind} kept changing")

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        now = time.time()
        statement = self._sql.SQL("SELECT record, expires_at FROM {} WHERE kind = %s AND key = %s").format(
            self._table)
        return self._decode(self._run("could not read a record", statement, (kind, key))[0], now)

    def take(self, kind: str, key: str) -> dict[str, Any] | None:
        now = time.time()
        # One statement: the row is gone for every other session the moment it is read.
        statement = self._sql.SQL("DELETE FROM {} WHERE kind = %s AND key = %s RETURNING record, expires_at").format(
            self._table)
        return self._decode(self._run("could not take a record", statement, (kind, key))[0], now)

    def delete(self, kind: str, key: str) -> None:
        statement = self._sql.SQL("DELETE FROM {} WHERE kind = %s AND key = %s").format(self._table)
        self._run("could not delete a record", statement, (kind, key))

    def delete_grant(self, grant: str) -> int:
        statement = self._sql.SQL('DELETE FROM {} WHERE "grant" = %s').format(self._table)
        return self._run("could not revoke a grant", statement, (grant,))[1]

    def purge(self) -> int:
        """Delete every expired row now; answers how many went."""
        now = time.time()
        with self._purge_lock:
            self._last_purge = now
        return self._purge(now)

    def close(self) -> None:
        self._pool.close()


def _connection_lost(exc: BaseException) -> bool:
    # psycopg raises OperationalError both for a dead connection and for e.g. a cancelled query; only the first
    # is worth a retry on a new connection (SQLSTATE class 08, 57P01 admin_shutdown, or no SQLSTATE at all).
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


@hookimpl
def open_sign_in_store(persistence, project):
    persistence = persistence or {}
    if persistence.get("type") != TYPE:
        return None
    where = f"projects.{project.name}.profiles.{project.profile}.auth.persistence"
    file = project.user_config_file or user_config_path()
    unknown = sorted(set(map(str, persistence)) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} for type postgres (known: {', '.join(KEYS)})",
                          file=file, key_path=f"{where}.{unknown[0]}")
    keywords = connection_parameters(project, persistence.get("secret"), key_path=f"{where}.secret", file=file)
    table = table_name(persistence.get("table", DEFAULT_TABLE), file=file, key_path=f"{where}.table")
    return PostgresSignInStore(keywords, table=table)
