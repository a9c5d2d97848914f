"""The SQL engine of a profile: the core's DuckDB database, or one a plugin opens (`open_sql_engine`).

DuckDB: one database per project and profile, a cursor per call, safe from many threads.
"""
from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ExecutionError
from .records import Problem

if TYPE_CHECKING:
    import duckdb

    from .hooks import Hooks
    from .records import ProjectContext, UserContext
    from .sql_identity import IdentityFunctions

log = logging.getLogger(__name__)

DUCKDB = "duckdb"
# Database objects an on_init hook may create (`CREATE TABLE ...`), so `validate` cannot tell they are missing.
_ON_INIT_MAY_CREATE = re.compile(r"Catalog Error: (Table|View|Schema|Type|Sequence) with name ", re.IGNORECASE)


def open_engine(project: ProjectContext, hooks: Hooks) -> Any:
    """The engine the active profile's `sql.engine` names: DuckDB (the core's), or the one a plugin provides.

    Fails closed: an engine no loaded plugin provides (not installed, or disabled) stops the start, naming the key.
    """
    settings = project.site.profile_config(project.profile).sql
    if settings.engine == DUCKDB:
        if settings.secret:  # DuckDB's database is `duckdb.path`: a connection secret would be silently unused
            raise ConfigError("a secret is for an engine that connects to a server; DuckDB's database is "
                              f"profiles.{project.profile}.duckdb.path", file=project.site_file,
                              key_path=f"profiles.{project.profile}.sql.secret")
        return Database(project, hooks)
    engine = hooks.open_sql_engine(settings=settings, project=project)
    if engine is None:
        hint = " (pip install 'mxcp-pluggy[postgres]')" if settings.engine == "postgres" else ""
        raise ConfigError(
            f"no loaded plugin provides the SQL engine '{settings.engine}'{hint}; is its plugin installed and "
            "enabled?", file=project.site_file, key_path=f"profiles.{project.profile}.sql.engine")
    return engine


class Database:
    """The project's DuckDB database: one connection; each call gets its own cursor (sharing its functions).

    Any engine offers what this class offers to the rest of the core (hookspecs.md, `open_sql_engine`): `open`,
    `close`, `acquire`/`release` of a call's cursor, `cursor()` for work outside calls, `statements` and `check`
    for `validate`, and the `project`, `paused` and `identity` attributes.
    """

    name = DUCKDB

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

    def acquire(self, user: UserContext | None = None) -> duckdb.DuckDBPyConnection:
        """A fresh cursor for one call: its own transaction and temporary objects, never seen by the next call.

        The caller (`user`) is bound later, by the identity functions, only when the SQL asks for it."""
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

    # -- checking SQL (`validate`, and `serve` at start) ----------------------------------------------------
    def statements(self, sql: str) -> tuple[tuple[str, frozenset[str]], ...]:
        """The statements of a SQL text, each with the `$name` parameters it uses (DuckDB's parser)."""
        from .sql import split_statements

        return split_statements(sql)

    def check(self, statement: str, *, phase: str) -> list[str | Problem]:
        """Let DuckDB bind one statement (tables, columns, functions) without running it: what is wrong."""
        import duckdb

        with self.cursor() as cursor:
            try:
                cursor.execute(f"PREPARE mxcp_validate AS {statement.rstrip().rstrip(';')}")
                cursor.execute("DEALLOCATE mxcp_validate")
            except duckdb.CatalogException as exc:
                first = str(exc).strip().splitlines()[0]
                message = f"SQL does not prepare: {first}"
                if phase == "serving" or not _ON_INIT_MAY_CREATE.search(first):
                    # Functions come from register_functions (plugins, plugins/ folder), which run when `validate`
                    # opens the database too: one missing there is missing when serving, so both call it an error.
                    return [message]
                # Without on_init hooks (mxcp validate) a table they create is not there yet: worth a look only.
                return [Problem(message=f"{message} (unless an on_init hook creates it)", severity="warning")]
            except duckdb.Error as exc:
                return [f"SQL does not prepare: {str(exc).strip().splitlines()[0]}"]
        return []


def _quietly_close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        log.debug("closing a DuckDB connection failed", exc_info=True)
