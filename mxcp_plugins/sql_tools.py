"""Builtin plugin: the tools `execute_sql_query`, `list_tables` and `get_table_schema` (site `sql_tools:`).

`execute_sql_query` runs whatever SQL a client sends, so it never runs on the project's connection: endpoints
need that one with full file and extension access, and DuckDB's security switches are global to an instance
(`duckdb_settings()` scope GLOBAL), so they cannot be flipped for one caller. Each call gets a DuckDB instance
of its own, the sandbox. It attaches the project database READ_ONLY, then locks itself down with DuckDB's own
switches before the client's SQL runs: `disabled_filesystems = 'LocalFileSystem'` and
`enable_external_access = false` (read_csv, read_text, glob, COPY, EXPORT, ATTACH of a file, INSTALL, LOAD of
an extension not built in all fail), extension autoloading and autoinstalling off, no community extensions, no
persistent secrets, no spilling to disk, `memory_limit`, and `lock_configuration = true` (every SET fails).
The instance is closed when the call ends: nothing a call does outlives it (a TEMP table is in-memory scratch).
The tool is read-only whatever the server's mode, and says so (`readOnlyHint: true`).

Which file the sandbox attaches: DuckDB lets a second instance in the same process attach a database file only
when every instance has it read-only ("Unique file handle conflict" otherwise, since DuckDB 1.4). So:
- a read-only server's database file is attached directly; nothing can write it, so it is always current;
- a read-write server's database, and a `:memory:` one (another instance cannot see it at all), are copied by
  the project's connection (`COPY FROM DATABASE`, one consistent transaction) into a private snapshot file that
  sandboxes attach. The snapshot is made again when the database file or its WAL changed since the last one (a
  commit always writes one of them; a `:memory:` database is copied for every call). Copying a large database
  takes a while (seconds per few hundred MB): serve it `--readonly` when clients query it a lot between writes.
The sandbox sees the project database only: not the databases endpoints ATTACH, nor views that read files, nor
the project's UDFs (Python functions with the server's access, for endpoints to call, not for any client).

`list_tables` and `get_table_schema` run fixed SQL on the call's cursor, like any endpoint.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from mxcp_core import (
    ConfigSection,
    Count,
    EndpointCall,
    ExecutionError,
    NotFoundError,
    ProjectContext,
    Seconds,
    ToolDefinition,
    call_cursor,
    first_line,
    hookimpl,
    install_sql_identity,
    parse_parameters,
    parse_type,
    quote_identifier,
    quote_literal,
    split_statements,
    suggest,
)

_SYSTEM_SCHEMAS = ("information_schema", "pg_catalog")
STATE_KEY = "sql_tools"
# Catalogs the project's connection attaches for a moment while it writes a snapshot; listings skip them.
SNAPSHOT_PREFIX = "__mxcp_sql_tools_snapshot"
_BOOT = "__mxcp_sql_tools_boot"

# Fixed when the sandbox instance starts (some can only be set then).
_SANDBOX_CONFIG = {
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,  # no secrets from ~/.duckdb/stored_secrets
    "python_enable_replacements": False,  # `FROM name` must never find a Python variable of the server
    "temp_directory": "",  # no spilling to disk: memory_limit is the limit
}
# Applied after the database is attached (attaching a file needs the file system); the last one freezes the rest.
_LOCKDOWN = (
    "SET enable_external_access = false",
    "SET disabled_filesystems = 'LocalFileSystem'",
    "SET lock_configuration = true",
)

# The call running execute_sql_query (set by the call_endpoint wrapper): its runtime, and how to interrupt it.
_current_call: contextvars.ContextVar[EndpointCall | None] = contextvars.ContextVar("mxcp_sql_tools_call",
                                                                                    default=None)
_state_lock = threading.Lock()


@attrs.define
class SqlToolsSettings:
    """`sql_tools:` of mxcp-site.yml."""

    enabled: bool = False
    # Limits of execute_sql_query. A longer result is cut, and says so (as results cut to the site's `limits:`).
    max_rows: Count = Count(1000)
    timeout: Seconds = Seconds(30.0)  # then the query is interrupted
    memory_limit: str = "1GB"  # of the sandbox instance (DuckDB's syntax)


# -- execute_sql_query ------------------------------------------------------------------------------------
def execute_sql_query(sql: str) -> list[dict[str, Any]]:
    call = _current_call.get()
    if call is None:
        raise ExecutionError("execute_sql_query runs only as a tool call")
    settings = call.runtime.context.plugin_config("sql_tools")
    statements = [text for text, _ in split_statements(sql)]
    if not statements:
        return []
    with _project_database(call) as (path, catalog):
        sandbox = Sandbox(open_sandbox(path, catalog, settings, call.user))
        try:
            return _run(sandbox, statements, settings, call)
        finally:
            sandbox.close()


class Sandbox:
    """A sandbox connection that the timer and the call's interrupt may stop from other threads, even late."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        self._closed = False

    def interrupt(self) -> None:
        # Never on a closed connection: an interrupt may arrive just as the call ends.
        with self._lock:
            if not self._closed:
                self.conn.interrupt()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.conn.close()


@contextlib.contextmanager
def _project_database(call: EndpointCall) -> Iterator[tuple[str, str]]:
    """The file a sandbox may attach read-only for this call, and the catalog name it has on the project side."""
    project = call.runtime.context
    cursor = call_cursor()
    catalog = cursor.execute("SELECT current_database()").fetchone()[0]
    if project.readonly and project.duckdb_path != ":memory:":
        yield project.duckdb_path, catalog
        return
    with _state_lock:
        snapshots = project.state.get(STATE_KEY)
        if snapshots is None:
            snapshots = project.state[STATE_KEY] = Snapshots()
    # The call's cursor with get_username() & co. bound, which copying views, macros and column defaults that use
    # them needs.
    snapshot = snapshots.acquire(call_cursor(bind_identity=True), project.duckdb_path, catalog)
    try:
        yield str(snapshot.path), catalog
    finally:
        snapshots.release(snapshot)


def open_sandbox(path: str, catalog: str, settings: SqlToolsSettings, user: Any = None) -> Any:
    """A new DuckDB instance with `path` attached READ_ONLY as `catalog` (the default), then locked down.

    `get_username()` & co. return `user`'s values there, as in endpoints, so the project's views using them work.
    They are a convenience, not a guard: the client may SET VARIABLE as it likes, and it can read every table of
    the project database anyway (the sandbox is read-only, not row-filtered).
    """
    import duckdb

    try:
        conn = duckdb.connect(":memory:", config={**_SANDBOX_CONFIG, "memory_limit": settings.memory_limit})
    except duckdb.Error as exc:
        raise ExecutionError(f"cannot start the SQL sandbox (sql_tools.memory_limit?): {first_line(exc)}") from None
    try:
        # The attached database takes the project's catalog name, so names qualified with it work here too;
        # that name may be `memory`, the sandbox's own default catalog, hence the detour through _BOOT.
        for statement in (
            f"ATTACH ':memory:' AS {_BOOT}",
            f"USE {_BOOT}",
            "DETACH memory",
            f"ATTACH {quote_literal(path)} AS {quote_identifier(catalog)} (READ_ONLY)",
            f"USE {quote_identifier(catalog)}",
            f"DETACH {_BOOT}",
        ):
            conn.execute(statement)
        install_sql_identity(conn, user)  # before the lockdown: it attaches a catalog and sets search_path
        for statement in _LOCKDOWN:
            conn.execute(statement)
    except duckdb.Error as exc:
        conn.close()
        raise ExecutionError(f"cannot start the SQL sandbox: {first_line(exc)}") from None
    return conn


def _run(
    sandbox: Sandbox, statements: list[str], settings: SqlToolsSettings, call: EndpointCall
) -> list[dict[str, Any]]:
    import duckdb

    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sandbox.interrupt()

    call.on_interrupt(sandbox.interrupt)  # a cancelled or timed-out call (server limits, reload) stops it too
    if call.cancelled:
        raise ExecutionError("query interrupted")
    conn = sandbox.conn
    timer = threading.Timer(settings.timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        for statement in statements:
            conn.execute(statement)
        if conn.description is None:
            return []
        columns = [column[0] for column in conn.description]
        # Results stream: at most one row past the cap is ever fetched.
        limit = min(settings.max_rows, call.max_rows or settings.max_rows)
        rows, cut = _fetch_bounded(conn, limit, call.runtime.context.site.limits.max_result_bytes)
    except duckdb.InterruptException:
        if expired.is_set():
            raise ExecutionError(
                f"the query was stopped after {settings.timeout:g}s, the time limit of execute_sql_query "
                "(sql_tools.timeout)"
            ) from None
        raise ExecutionError("query interrupted") from None
    except duckdb.Error as exc:
        raise ExecutionError(f"SQL error: {first_line(exc)}") from None
    finally:
        timer.cancel()
    if cut is not None:
        # The client reads the cut in the result (its `_meta` and a note the model sees); counting the rest
        # would run the whole query.
        reason, cap = cut
        if reason == "rows":
            reason = "sql_tools.max_rows" if limit == settings.max_rows else "limits.max_rows"
        call.notes["truncated"] = {"reason": reason, "limit": cap, "rows_returned": len(rows), "rows_total": None}
    return [dict(zip(columns, row)) for row in rows]


def _fetch_bounded(conn: Any, max_rows: int, max_bytes: int) -> tuple[list[tuple[Any, ...]], Any]:
    """Rows one at a time, until `max_rows` or about `max_bytes` of values: a client's query can never pull
    more into the server than one row past the limits (DuckDB's memory_limit bounds that row)."""
    rows: list[tuple[Any, ...]] = []
    used = 0
    while True:
        row = conn.fetchone()
        if row is None:
            return rows, None
        if len(rows) == max_rows:
            return rows, ("rows", max_rows)
        used += sum(len(value) if isinstance(value, (str, bytes)) else 8 for value in row) + 4 * len(row)
        if used > max_bytes:
            return rows, ("limits.max_result_bytes", max_bytes)
        rows.append(row)


@attrs.define(eq=False)
class Snapshot:
    path: Path
    version: Any
    catalog: str
    users: int = 0


class Snapshots:
    """Copies of a database the server has open read-write (or in memory), for sandboxes to attach read-only.

    One current snapshot, made again when the database changed; a replaced one is deleted once no call uses it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folder: Path | None = None
        self._cleanup: Any = None
        self._current: Snapshot | None = None
        self.copies = 0
        self._closed = False

    @property
    def folder(self) -> Path:
        if self._folder is None:
            # Private (mode 0700): a snapshot holds the project's data.
            self._folder = Path(tempfile.mkdtemp(prefix="mxcp-sql-tools-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._folder), True)
        return self._folder

    def acquire(self, cursor: Any, source: str, catalog: str) -> Snapshot:
        # Read before copying: a write landing during the copy makes the next call copy again, never miss it.
        version = _file_version(source)
        with self._lock:
            if self._closed:
                raise ExecutionError("the server is stopping")
            current = self._current
            if current is None or version is None or current.version != version or current.catalog != catalog:
                fresh = self._copy(cursor, catalog, version)
                if current is not None and current.users == 0:
                    _remove(current.path)
                self._current = current = fresh
            current.users += 1
            return current

    def release(self, snapshot: Snapshot) -> None:
        with self._lock:
            snapshot.users -= 1
            if snapshot is not self._current and snapshot.users == 0:
                _remove(snapshot.path)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._current = None
            if self._cleanup is not None:
                self._cleanup()

    def _copy(self, cursor: Any, catalog: str, version: Any) -> Snapshot:
        import duckdb

        self.copies += 1
        path = self.folder / f"snapshot-{self.copies}.duckdb"
        # A name of its own per copy: a copy that failed half-way cannot block the next one's ATTACH.
        alias = quote_identifier(f"{SNAPSHOT_PREFIX}_{self.copies}")
        try:
            cursor.execute(f"ATTACH {quote_literal(str(path))} AS {alias}")
            try:
                cursor.execute(f"COPY FROM DATABASE {quote_identifier(catalog)} TO {alias}")
            finally:
                cursor.execute(f"DETACH {alias}")
        except duckdb.InterruptException:
            _remove(path)
            raise ExecutionError("query interrupted") from None
        except duckdb.Error as exc:
            _remove(path)
            raise ExecutionError(f"cannot copy the database for the SQL sandbox: {first_line(exc)}") from None
        return Snapshot(path=path, version=version, catalog=catalog)


def _file_version(path: str) -> Any:
    """What changes when a commit reaches the file or its WAL; None for a database without a file."""
    if path == ":memory:":
        return None
    version = []
    for name in (path, f"{path}.wal"):
        try:
            stat = os.stat(name)
        except FileNotFoundError:
            version.append(None)
        else:
            version.append((stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return tuple(version)


def _remove(path: Path) -> None:
    for name in (path, Path(f"{path}.wal")):
        with contextlib.suppress(OSError):
            name.unlink()

# -- list_tables, get_table_schema -------------------------------------------------------------------------
_NOT_SNAPSHOT = f"NOT starts_with(table_catalog, '{SNAPSHOT_PREFIX}')"


def list_tables() -> list[dict[str, Any]]:
    """Tables and views of the database, `schema.name` outside the main schema."""
    from mxcp.runtime import db

    rows = db.execute(
        "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables "
        f"WHERE table_schema NOT IN ('information_schema', 'pg_catalog') AND {_NOT_SNAPSHOT} "
        "ORDER BY table_catalog <> current_database(), table_catalog, table_schema <> 'main', table_schema, table_name"
    )
    current = db.execute("SELECT current_database() AS name").fetchone()["name"]
    return [
        {"name": _qualified(row, current), "type": _table_kind(row["table_type"])}
        for row in rows
    ]


def get_table_schema(table_name: str) -> list[dict[str, Any]]:
    """Columns of a table or view (`name`, `schema.name` or `catalog.schema.name`), in order."""
    from mxcp.runtime import db

    parts = table_name.split(".")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ExecutionError(f"'{table_name}' is not a table name (expected name, schema.name or catalog.schema.name)")
    conditions = ["table_name = $table", _NOT_SNAPSHOT]
    params: dict[str, Any] = {"table": parts[-1]}
    if len(parts) >= 2:
        conditions.append("table_schema = $schema")
        params["schema"] = parts[-2]
    else:
        conditions.append("table_schema NOT IN ('information_schema', 'pg_catalog')")
    if len(parts) == 3:
        conditions.append("table_catalog = $catalog")
        params["catalog"] = parts[0]
    rows = db.execute(
        "SELECT table_catalog, table_schema, column_name, data_type, is_nullable FROM information_schema.columns "
        f"WHERE {' AND '.join(conditions)} "
        "ORDER BY table_catalog <> current_database(), table_schema <> 'main', table_catalog, table_schema, "
        "ordinal_position",
        params,
    )
    if not rows:
        known = [table["name"] for table in list_tables()]
        raise NotFoundError(f"table '{table_name}' not found{suggest(table_name, known)}")
    # The same name in several schemas: the first (main schema of the current database first) answers.
    first = (rows[0]["table_catalog"], rows[0]["table_schema"])
    return [
        {"name": row["column_name"], "type": row["data_type"], "nullable": row["is_nullable"] == "YES"}
        for row in rows
        if (row["table_catalog"], row["table_schema"]) == first
    ]


def _qualified(row: dict[str, Any], current_catalog: str) -> str:
    if row["table_catalog"] not in (current_catalog, "temp"):
        return f"{row['table_catalog']}.{row['table_schema']}.{row['table_name']}"
    if row["table_schema"] != "main":
        return f"{row['table_schema']}.{row['table_name']}"
    return row["table_name"]


def _table_kind(table_type: str) -> str:
    return {"BASE TABLE": "table", "VIEW": "view", "LOCAL TEMPORARY": "temporary table"}.get(
        table_type, str(table_type).lower()
    )


def _row_list(properties: dict[str, str]) -> Any:
    return parse_type(
        {
            "type": "array",
            "items": {"type": "object", "properties": {k: {"type": v} for k, v in properties.items()}},
        },
        key_path="return",
    )


def tools(project: ProjectContext) -> list[ToolDefinition]:
    settings = project.plugin_config("sql_tools")
    return [
        ToolDefinition(
            name="execute_sql_query",
            description=(
                "Run a read-only DuckDB SQL query against the project's database and return its rows. It runs "
                "in a sandbox: statements that write, read or write files, attach databases, load extensions or "
                f"change settings are refused; at most {settings.max_rows} rows (a longer result is cut and says so); "
                f"stopped after {settings.timeout:g}s."
            ),
            parameters=parse_parameters(
                [{"name": "sql", "type": "string", "description": "The SQL query to run (DuckDB dialect)."}]
            ),
            return_type=parse_type(
                {"type": "array", "items": {"type": "object"}, "description": "The rows, one object per row."}
            ),
            function=execute_sql_query,
            # Read-only in every server mode: the sandbox attaches the database READ_ONLY.
            annotations={"title": "Execute SQL query", "readOnlyHint": True, "openWorldHint": False},
            tags=("sql",),
        ),
        ToolDefinition(
            name="list_tables",
            description="List the tables and views of the project's database.",
            parameters=(),
            return_type=_row_list({"name": "string", "type": "string"}),
            function=list_tables,
            annotations={"title": "List tables", "readOnlyHint": True, "idempotentHint": True},
            tags=("sql",),
        ),
        ToolDefinition(
            name="get_table_schema",
            description="The columns of a table or view: name, DuckDB type and whether it accepts NULL.",
            parameters=parse_parameters(
                [{"name": "table_name", "type": "string", "description": "Table name, optionally schema.table."}]
            ),
            return_type=_row_list({"name": "string", "type": "string", "nullable": "boolean"}),
            function=get_table_schema,
            annotations={"title": "Get table schema", "readOnlyHint": True, "idempotentHint": True},
            tags=("sql",),
        ),
    ]


@hookimpl
def config_sections():
    return [ConfigSection("sql_tools", SqlToolsSettings, description="the built-in SQL tools")]


@hookimpl
def provide_tool(project):
    if not project.plugin_config("sql_tools").enabled:
        return None
    return tools(project)


@hookimpl(wrapper=True)
def call_endpoint(call):
    # The tool's function gets its arguments only; the sandbox needs the call (runtime, interrupt).
    if call.endpoint.function is not execute_sql_query:
        return (yield)
    token = _current_call.set(call)
    try:
        return (yield)
    finally:
        _current_call.reset(token)


@hookimpl
def on_shutdown(runtime):
    # Stopping or reloading: snapshots are stale after either.
    with _state_lock:
        snapshots = runtime.context.state.pop(STATE_KEY, None)
    if snapshots is not None:
        snapshots.close()
