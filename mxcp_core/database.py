"""DuckDB ownership: one database per project and profile, a pooled cursor per call, safe from many threads."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ExecutionError

if TYPE_CHECKING:
    import duckdb

    from .hooks import Hooks
    from .records import ProjectContext
    from .sql_identity import IdentityFunctions

log = logging.getLogger(__name__)


class Database:
    """The project's DuckDB database: one connection; each call gets its own cursor (sharing its functions)."""

    def __init__(self, project: ProjectContext, hooks: Hooks) -> None:
        self.project = project
        self.hooks = hooks
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        # Set while a reload payload has exclusive use of the file: nothing may reopen it behind its back.
        self.paused = False
        self._stopped = False
        # The caller's identity in SQL (sql_identity.py): made at each open, binds the cursors handed out.
        self.identity: IdentityFunctions | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            if self.paused:
                raise ExecutionError(
                    "the database is closed while a reload payload runs; the payload has the file to itself "
                    f"(open it with duckdb.connect({self.project.duckdb_path!r}))"
                )
            if self._stopped:
                raise ExecutionError("the runtime has stopped; the database is closed")
            self.open()
        assert self._conn is not None
        return self._conn

    def open(self) -> None:
        """Connect, let plugins configure the database and register their functions, add the identity functions."""
        import duckdb

        from .sql import first_line
        from .sql_identity import IdentityFunctions

        with self._lock:
            if self._conn is not None:
                return
            self._stopped = False
            path = self.project.duckdb_path
            readonly = self.project.readonly
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                if readonly and not Path(path).exists():
                    # A read-only open of a missing file fails; create it empty once, then reopen read-only.
                    duckdb.connect(path).close()
            try:
                conn = duckdb.connect(path, read_only=readonly and path != ":memory:")
            except duckdb.Error as exc:
                raise ExecutionError(f"cannot open DuckDB database {path}: {exc}") from None
            try:
                self.hooks.configure_database(conn=conn, project=self.project)
                self.hooks.register_functions(conn=conn, project=self.project)
                # After the plugins: a function of theirs with the same name is kept (see IdentityFunctions).
                try:
                    identity = IdentityFunctions(conn)
                except duckdb.Error as exc:
                    raise ExecutionError(f"cannot add the identity functions to {path}: {first_line(exc)}") from None
            except Exception:
                conn.close()
                raise
            self._conn = conn
            self.identity = identity

    def close(self, *, final: bool = False) -> None:
        """Close the database; `final` (the runtime stopped) keeps late calls from reopening it."""
        with self._lock:
            self._stopped = final
            if self._conn is not None:
                _quietly_close(self._conn)
                self._conn = None
                self.identity = None

    def acquire(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor for one call: its own transaction and temporary objects, never seen by the next call."""
        return self.connection.cursor()

    def release(self, cursor: duckdb.DuckDBPyConnection, healthy: bool = True) -> None:
        """Closing the cursor rolls back what the call left open and drops its temporary objects."""
        _quietly_close(cursor)

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor for work outside a call (validation, drift): the identity functions resolve, to NULL."""
        cursor = self.acquire()
        healthy = False
        try:
            if self.identity is not None:
                self.identity.bind(cursor, None)
            yield cursor
            healthy = True
        finally:
            self.release(cursor, healthy)


def _quietly_close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        log.debug("closing a DuckDB connection failed", exc_info=True)
