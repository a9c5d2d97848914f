"""Builtin plugin: PostgreSQL as a profile's SQL engine (`profiles.<p>.sql: {engine: postgres, secret: <name>}`).

- A psycopg 3 connection pool per runtime, opened by `open()` and closed by `close()` (a reload does both).
- Each call runs in ONE transaction on one pooled connection, which starts with the caller's identity as
  transaction-local settings (`mxcp.user_id`, `mxcp.username`, `mxcp.role`, `mxcp.email`, `mxcp.provider`: what
  `SET LOCAL` sets), so row-level security policies can read `current_setting('mxcp.username', true)`, and DuckDB's
  `get_username()` & co. in endpoint SQL are rewritten to read them. The call's end commits (or rolls
  back when it failed), resets the session (`DISCARD ALL`: nothing a call set there reaches the next caller) and
  gives the connection back. SQL that would end the transaction early (`COMMIT`, `ROLLBACK`, `BEGIN`...) is refused.
- Endpoint SQL keeps MXCP's `$name` parameters: a scanner finds them outside strings, quoted identifiers,
  dollar-quoted bodies and comments, and turns them into psycopg placeholders, so the values always travel as
  bind parameters, never inside the SQL text.
- What only DuckDB has (`extensions:`, UDF `plugin:` instances, `duckdb.path`, `sql_tools`) stops the start when
  configured, rather than being ignored.

docs/postgres.md is the user's guide.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from mxcp_core import (
    ConfigError,
    ExecutionError,
    NotFoundError,
    SQL_IDENTITY_FUNCTIONS,
    Rows,
    first_line,
    hookimpl,
    mask,
)

from .postgres_connect import connection_parameters, describe, require_psycopg

log = logging.getLogger(__name__)

ENGINE = "postgres"
# How long a call waits for a free pooled connection before it fails (the pool is sized to the workers).
POOL_WAIT_SECONDS = 30.0
# Seconds a cancel request may take; it runs on the interrupting thread (a timeout, an MCP cancellation).
CANCEL_SECONDS = 5.0
# Statements whose rows a server-side cursor can stream (DECLARE ... CURSOR FOR accepts only these, and no
# data-modifying WITH): with a row limit, only the rows asked for leave the server.
_STREAMABLE = re.compile(r"\s*(select|values|table|with)\b", re.IGNORECASE)
_MODIFIES = re.compile(r"\b(insert|update|delete|merge|into)\b", re.IGNORECASE)
# Statements that end (or would start) the call's transaction, which carries the caller's identity and the read-only
# mode: after a COMMIT, the rest of the call ran outside both. `ROLLBACK TO [SAVEPOINT]` keeps the transaction.
_CONTROL = re.compile(r"\s*(begin|start|commit|end|rollback|abort|prepare\s+transaction)\b", re.IGNORECASE)
_TO_SAVEPOINT = re.compile(r"\s*rollback(\s+(work|transaction))?\s+to\b", re.IGNORECASE)
# DuckDB's identity functions (mxcp_core/sql_identity.py), so the same endpoint SQL runs on both engines: a call of
# one becomes a read of the transaction-local setting `acquire()` sets, NULL for the anonymous caller (set to '') as
# on DuckDB. An expression, not a function of ours in the database: nothing to install, and it works in a column
# DEFAULT, where a subquery would not.
# Not rewritten but refused: the upstream token would have to travel in a set_config() parameter, and statement
# logging (log_statement, auto_explain, pg_stat_statements...) can write those to the server's log.
EXTERNAL_TOKEN = "get_user_external_token"
IDENTITY_SETTINGS = {name: field for name, field in SQL_IDENTITY_FUNCTIONS.items() if name != EXTERNAL_TOKEN}
_IDENTITY_NAME = re.compile("(?:" + "|".join(sorted(map(re.escape, SQL_IDENTITY_FUNCTIONS), key=len, reverse=True))
                            + ")", re.IGNORECASE)
# A call: the bare name, optional whitespace, `()` (with arguments it is some other function).
_IDENTITY_CALL = re.compile(_IDENTITY_NAME.pattern + r"\s*\(\s*\)", re.IGNORECASE)
# The word before a name that makes it the name of a function being defined or dropped, not a call.
_DEFINES = re.compile(r"\b(function|procedure|routine|exists)\s*$", re.IGNORECASE)


# -- the SQL scanner --------------------------------------------------------------------------------------------
@attrs.frozen
class Statement:
    """One statement of a SQL text: as written, the `$name` parameters it uses (in order of first use), and its
    text for psycopg (`%(name)s` placeholders, literal `%` doubled) and for the server's PREPARE (`$1`, `$2`...)."""

    text: str
    names: tuple[str, ...]
    query: str
    numbered: str
    streamable: bool
    control: str = ""  # a transaction-control keyword (COMMIT, ROLLBACK, BEGIN...) the statement starts with


def _ident_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _name_char(char: str) -> bool:
    # What continues an unquoted name for PostgreSQL: also `$` and any non-ASCII character.
    return char.isalnum() or char in "_$" or not char.isascii()


def _identity_call(sql: str, start: int, end: int, before: str) -> tuple[int, str] | None:
    """The end of an identity function's call at `start` (within the code run ending at `end`), and its
    replacement; None when it is no call of ours: part of a longer name, schema-qualified (`x.get_username()`: the
    user's own function), or the name a CREATE/DROP FUNCTION defines. `before` is the code so far, comments and
    strings blanked (a `.` may stand before a comment or whitespace)."""
    matched = _IDENTITY_CALL.match(sql, start, end)
    if matched is None or (start > 0 and _name_char(sql[start - 1])):
        return None
    before = before.rstrip()
    if before.endswith(".") or _DEFINES.search(before):
        return None
    name = _IDENTITY_NAME.match(sql, start).group(0).lower()
    if name == EXTERNAL_TOKEN:
        line = sql.count("\n", 0, start) + 1
        raise ExecutionError(
            f"SQL error: {EXTERNAL_TOKEN}() (line {line}) is DuckDB-only: on PostgreSQL the caller's upstream token "
            "is never sent to the server, where statement logging could record it; read it in a Python endpoint "
            "(get_user_context().external_token)")
    return matched.end(), f"NULLIF(current_setting('mxcp.{IDENTITY_SETTINGS[name]}', true), '')"


def _syntax_error(what: str, sql: str, at: int) -> ExecutionError:
    line = sql.count("\n", 0, at) + 1
    return ExecutionError(f"SQL syntax error: {what} starting on line {line}")


@functools.lru_cache(maxsize=512)
def scan(sql: str) -> tuple[Statement, ...]:
    """Split `sql` on `;` and find its `$name` / `$1` parameters, skipping what is not SQL code: single-quoted
    strings (with `''`, and backslash escapes in `E'...'`), double-quoted identifiers, dollar-quoted bodies
    (`$$...$$`, `$tag$...$tag$`), `--` and (nested) `/* */` comments. A cast `x::int` is ordinary text.
    Calls of DuckDB's identity functions in the code (`get_username()`...) become reads of the `mxcp.*` settings in
    `query` and `numbered`; `get_user_external_token()` is refused."""
    statements: list[Statement] = []
    identity = _IDENTITY_NAME.search(sql) is not None  # most SQL has none: no per-run search then
    size = len(sql)
    start = 0  # where the current statement began
    query: list[str] = []  # psycopg's text
    numbered: list[str] = []  # the server's text
    code: list[str] = []  # the text with strings and comments blanked: for keyword checks
    names: list[str] = []
    i = 0

    def verbatim(piece: str, *, is_code: bool) -> None:
        query.append(piece.replace("%", "%%"))
        numbered.append(piece)
        code.append(piece if is_code else " ")

    def code_run(begin: int, end: int) -> None:
        # Plain code; identity function calls in it rewritten (the code buffer keeps what was written).
        done = begin
        for found in _IDENTITY_NAME.finditer(sql, begin, end) if identity else ():
            if found.start() < done:
                continue
            call = _identity_call(sql, found.start(), end, "".join(code) + sql[done:found.start()])
            if call is None:
                continue
            verbatim(sql[done:found.start()], is_code=True)
            done, replacement = call
            query.append(replacement.replace("%", "%%"))
            numbered.append(replacement)
            code.append(sql[found.start():done])
        verbatim(sql[done:end], is_code=True)

    def finish(end: int) -> None:
        text = sql[start:end].strip()
        if "".join(code).strip():
            blank = "".join(code)
            control = _CONTROL.match(blank)
            statements.append(Statement(
                text=text, names=tuple(names), query="".join(query).strip(), numbered="".join(numbered).strip(),
                streamable=bool(_STREAMABLE.match(blank)) and not _MODIFIES.search(blank),
                control="" if control is None or _TO_SAVEPOINT.match(blank) else
                " ".join(control.group(1).upper().split())))
        query.clear()
        numbered.clear()
        code.clear()
        names.clear()

    while i < size:
        char = sql[i]
        if char == "'":
            # E'...' (not the end of an identifier such as `name'`) takes backslash escapes.
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident_char(sql[i - 2]))
            j = i + 1
            while True:
                if j >= size:
                    raise _syntax_error("an unterminated string", sql, i)
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == "'":
                    if j + 1 < size and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            verbatim(sql[i:j + 1], is_code=False)
            i = j + 1
        elif char == '"':
            j = i + 1
            while True:
                j = sql.find('"', j)
                if j < 0:
                    raise _syntax_error("an unterminated quoted identifier", sql, i)
                if j + 1 < size and sql[j + 1] == '"':
                    j += 2
                    continue
                break
            verbatim(sql[i:j + 1], is_code=False)
            i = j + 1
        elif char == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = size if j < 0 else j
            verbatim(sql[i:j], is_code=False)
            i = j
        elif char == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2  # PostgreSQL's block comments nest
            while depth:
                if j >= size:
                    raise _syntax_error("an unterminated /* comment", sql, i)
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            verbatim(sql[i:j], is_code=False)
            i = j
        elif char == "$" and not (i > 0 and _ident_char(sql[i - 1])):  # `a$b` is one identifier
            j = i + 1
            while j < size and _ident_char(sql[j]):
                j += 1
            word = sql[i + 1:j]
            digits = word.isascii() and word.isdigit()  # ASCII: int() refuses some that isdigit() takes (`$²`)
            if j < size and sql[j] == "$" and not word[:1].isdigit():
                # A dollar-quoted body: `$$` or `$tag$`, up to the same delimiter.
                delimiter = sql[i:j + 1]
                end = sql.find(delimiter, j + 1)
                if end < 0:
                    raise _syntax_error(f"an unterminated {delimiter} quote", sql, i)
                verbatim(sql[i:end + len(delimiter)], is_code=False)
                i = end + len(delimiter)
            elif digits or (word and not word[0].isdigit()):
                if digits:
                    word = str(int(word))
                    if word == "0":  # bound as "the last value" otherwise
                        raise ExecutionError("SQL syntax error: $0 is not a parameter (they count from $1)")
                elif not word.isidentifier():  # `$1abc`: digits then letters are nothing PostgreSQL reads
                    raise ExecutionError(f"SQL syntax error: ${word} is not a parameter name")
                if word not in names:
                    names.append(word)
                query.append(f"%({word})s")
                numbered.append(f"${names.index(word) + 1}")
                code.append(" $p ")
                i = j
            else:
                verbatim(char, is_code=True)
                i += 1
        elif char == ";":
            finish(i)
            i += 1
            start = i
        else:
            # Plain code up to the next character that may start something above.
            j = i + 1
            while j < size and sql[j] not in "'\"-/$;":
                j += 1
            code_run(i, j)
            i = j
    finish(size)
    return tuple(statements)


def refuse_transaction_control(statements: Sequence[Statement]) -> None:
    """Each call is one transaction, committed by MXCP at its end: SQL that would end it early is refused."""
    for statement in statements:
        if statement.control:
            raise ExecutionError(
                f"SQL error: {statement.control} is not allowed: each call runs in one transaction, which MXCP "
                "commits when the call ends (rolls back when it fails); SAVEPOINT and ROLLBACK TO SAVEPOINT work")


def bind(statement: Statement, params: Mapping[str, Any] | Sequence[Any] | None) -> dict[str, Any] | None:
    """The values of the statement's parameters, by placeholder name, as `mxcp_core`'s DuckDB binding takes them:
    a mapping by name (or, for `$1, $2`, its values in order), a sequence by position."""
    used = statement.names
    if not used:
        return None
    if params is None:
        params = {}
    positional = all(name.isdigit() for name in used)
    if isinstance(params, Mapping) and not positional:
        missing = sorted(set(used) - params.keys())
        if missing:
            raise ExecutionError(f"missing SQL parameter(s): {', '.join('$' + m for m in missing)}")
        return {name: _adapt(params[name]) for name in used}
    if not positional:
        named = sorted(name for name in used if not name.isdigit())
        raise ExecutionError(f"the SQL uses ${named[0]}: give the parameter values by name")
    values = list(params.values()) if isinstance(params, Mapping) else list(params)
    needed = max(int(name) for name in used)
    if len(values) < needed:
        raise ExecutionError(f"the SQL uses ${needed} but only {len(values)} value(s) were given")
    return {name: _adapt(values[int(name) - 1]) for name in used}


def _adapt(value: Any) -> Any:
    """Python values psycopg does not send as DuckDB would take them: mappings (and lists holding containers)
    become jsonb; tuples become arrays like lists."""
    if isinstance(value, Mapping):
        return _jsonb()(dict(value))
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (Mapping, list, tuple)) for item in value):
            return _jsonb()(list(value))
        return list(value)
    return value


def _psycopg() -> Any:
    import psycopg

    return psycopg


def _jsonb() -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb


def _sql_error(exc: BaseException) -> ExecutionError:
    return ExecutionError(f"SQL error: {mask(first_line(exc))}")


# -- the cursor of one call ---------------------------------------------------------------------------------------
class PostgresCursor:
    """One call's connection, inside its transaction: `run_sql` for MXCP's SQL, and a DB-API-like face for
    `db.connection` (`execute`, `fetchone`, `fetchall`, `fetchmany`, `description`)."""

    def __init__(self, conn: Any) -> None:
        self._conn: Any = conn
        self._cursor = conn.cursor()
        self._server_cursor: Any = None  # the last statement's, when its rows stream
        self._lock = threading.Lock()
        self._interrupted = False
        self._serial = 0

    # -- MXCP's SQL ------------------------------------------------------------------------------------------
    def run_sql(self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None, *,
                max_rows: int | None = None) -> Any:
        """Run every statement of `sql` (parameters bound by the server); the rows of the last one, at most
        `max_rows` of them (`more` says whether there were more)."""
        statements = scan(sql)
        if not statements:
            return Rows([], [])
        self._run(statements, params, stream=max_rows is not None)
        current = self._current()
        if current.description is None:
            return Rows([], [])
        columns = [column.name for column in current.description]
        try:
            if max_rows is None:
                return Rows(columns, current.fetchall())
            tuples = current.fetchmany(max_rows + 1)
        except _psycopg().Error as exc:
            raise self._error(exc) from None
        more = len(tuples) > max_rows
        del tuples[max_rows:]
        return Rows(columns, tuples, more)

    def _run(self, statements: tuple[Statement, ...], params: Any, *, stream: bool = False) -> None:
        import psycopg

        if self._conn is None:
            raise ExecutionError("this cursor's call has ended; SQL runs on the cursor of the current call")
        if self._interrupted:  # the call was cancelled or timed out: it starts no more SQL
            raise ExecutionError("query interrupted")
        refuse_transaction_control(statements)
        self._close_server_cursor()
        if (isinstance(params, Sequence) and not isinstance(params, str) and params
                and not any(statement.names for statement in statements)):
            # Values that nothing uses would be dropped silently: `?` and `%s` are not placeholders here.
            raise ExecutionError(f"{len(params)} value(s) given but the SQL has no $1 or $name placeholder")
        try:
            for statement in statements[:-1]:
                # Without parameters the server's text as is (psycopg reads no placeholders then).
                self._cursor.execute(statement.query if statement.names else statement.numbered,
                                     bind(statement, params))
            last = statements[-1]
            values = bind(last, params)
            if stream and last.streamable:
                self._serial += 1
                self._server_cursor = self._conn.cursor(name=f"mxcp_rows_{self._serial}")
                self._server_cursor.execute(last.query if last.names else last.numbered, values)
            else:
                self._cursor.execute(last.query if last.names else last.numbered, values)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> BaseException:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            return exc
        if self._interrupted and isinstance(exc, psycopg.errors.QueryCanceled):
            return ExecutionError("query interrupted")
        if isinstance(exc, psycopg.errors.InFailedSqlTransaction):
            # Python code that caught an error and went on: unlike DuckDB, the failure ended the call's work.
            return ExecutionError(f"{_sql_error(exc)} (an earlier statement of this call failed, which aborts the "
                                  "call's transaction on PostgreSQL; wrap statements that may fail in a SAVEPOINT)")
        return _sql_error(exc)

    def _current(self) -> Any:
        return self._server_cursor if self._server_cursor is not None else self._cursor

    def _close_server_cursor(self) -> None:
        server_cursor, self._server_cursor = self._server_cursor, None
        if server_cursor is not None:
            try:
                server_cursor.close()
            except Exception:  # the transaction may be aborted; its end drops the cursor anyway
                log.debug("closing a server-side cursor failed", exc_info=True)

    # -- `db.connection` ------------------------------------------------------------------------------------
    def execute(self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> PostgresCursor:
        """Run `sql` as `run_sql` does (its `$name` parameters bound); fetch its rows with the fetch methods."""
        statements = scan(sql)
        if statements:
            self._run(statements, params)
        return self

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._fetch("fetchone")

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._fetch("fetchall")

    def fetchmany(self, size: int = 1) -> list[tuple[Any, ...]]:
        return self._fetch("fetchmany", size)

    def _fetch(self, method: str, *args: Any) -> Any:
        if self._conn is None:
            raise ExecutionError("this cursor's call has ended")
        try:
            return getattr(self._current(), method)(*args)
        except _psycopg().Error as exc:
            raise self._error(exc) from None

    @property
    def description(self) -> Any:
        return self._current().description if self._conn is not None else None

    @property
    def rowcount(self) -> int:
        return self._current().rowcount if self._conn is not None else -1

    # -- the call's end ---------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """Cancel the statement running on the server (from another thread: timeouts, MCP cancellation)."""
        with self._lock:
            self._interrupted = True
            if self._conn is None:
                return  # released: the connection may already serve another call
            try:
                self._conn.cancel_safe(timeout=CANCEL_SECONDS)
            except Exception:  # best effort, as DuckDB's interrupt: the call is abandoned anyway
                log.warning("cancelling a PostgreSQL query failed", exc_info=True)

    def _detach(self) -> Any:
        """The connection, taken away from this cursor for good (an interrupt after this does nothing)."""
        with self._lock:
            conn, self._conn = self._conn, None
        return conn


# -- the engine ------------------------------------------------------------------------------------------------
class PostgresEngine:
    """A profile's PostgreSQL server, as the core's engine contract has it (hookspecs.md, `open_sql_engine`)."""

    name = ENGINE

    def __init__(self, settings: Any, project: Any) -> None:
        self.settings = settings
        self.project = project
        self.paused = False
        self.identity = None  # nothing to bind: the caller is in `mxcp.*` settings, which the rewritten calls read
        self._pool: Any = None
        self._where = ""
        self._lock = threading.Lock()
        self._stopped = False

    def open(self) -> None:
        """Check the configuration, connect once (so a bad address or password fails here, naming where), then
        open the pool."""
        with self._lock:
            if self._pool is not None:
                return
            self._stopped = False
            project = self.project
            refuse_duckdb_only(project)
            psycopg = require_psycopg(f"profiles.{project.profile}.sql.engine: postgres")
            from psycopg_pool import ConnectionPool

            keywords = connection_parameters(project, self.settings.secret,
                                             key_path=f"profiles.{project.profile}.sql.secret")
            self._where = where = describe(keywords)
            try:
                psycopg.connect(**keywords).close()
            except psycopg.Error as exc:
                # libpq's messages name the host and user, never the password; mask() keeps it that way.
                raise ExecutionError(f"cannot connect to PostgreSQL at {where} (profiles.{project.profile}.sql."
                                     f"secret '{self.settings.secret}'): {mask(first_line(exc))}") from None
            readonly = project.readonly

            def configure(conn: Any) -> None:
                # Auto-prepared statements break with "cached plan must not change result type" after a schema
                # change; parsing each statement is cheap next to that.
                conn.prepare_threshold = None
                conn.read_only = readonly or None

            self._pool = ConnectionPool(
                kwargs=keywords, min_size=1, max_size=project.site.limits.workers + 2, open=False,
                configure=configure, check=ConnectionPool.check_connection, timeout=POOL_WAIT_SECONDS,
                name=f"mxcp-{project.name}")
            try:
                self._pool.open(wait=True, timeout=POOL_WAIT_SECONDS)
            except psycopg.Error as exc:  # PoolTimeout among them
                self._pool.close()
                self._pool = None
                raise ExecutionError(f"cannot open a connection pool to PostgreSQL at {where}: "
                                     f"{mask(first_line(exc))}") from None
            log.info("SQL engine: PostgreSQL at %s (pool of up to %d connections)", where,
                     project.site.limits.workers + 2)

    def close(self, *, final: bool = False) -> None:
        with self._lock:
            self._stopped = final
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.close()
            except Exception:
                log.debug("closing the PostgreSQL pool failed", exc_info=True)

    def _available_pool(self) -> Any:
        pool = self._pool
        if pool is None:
            if self.paused:
                raise ExecutionError("the SQL engine is closed while a reload payload runs")
            if self._stopped:
                raise ExecutionError("the runtime has stopped; the SQL engine is closed")
            self.open()
            pool = self._pool
        return pool

    def acquire(self, user: Any = None) -> PostgresCursor:
        """A pooled connection in a new transaction that knows the caller (transaction-local settings)."""
        import psycopg
        from psycopg_pool import PoolTimeout

        pool = self._available_pool()
        try:
            conn = pool.getconn()
        except PoolTimeout:
            # Also what a server that went away looks like: the pool keeps trying to reconnect meanwhile.
            raise ExecutionError(f"no PostgreSQL connection to {self._where} within {POOL_WAIT_SECONDS:g}s: the "
                                 "server is unreachable (see the log), or every pooled connection is busy "
                                 "(limits.workers sizes the pool)") from None
        except psycopg.Error as exc:
            raise ExecutionError(f"cannot connect to PostgreSQL at {self._where}: {mask(first_line(exc))}") from None
        cursor = PostgresCursor(conn)
        try:
            identity = _identity(user)
            conn.execute("SELECT set_config('mxcp.user_id', %s, true), set_config('mxcp.username', %s, true), "
                         "set_config('mxcp.role', %s, true), set_config('mxcp.email', %s, true), "
                         "set_config('mxcp.provider', %s, true)", identity)
        except BaseException as exc:
            self.release(cursor, healthy=False)
            if isinstance(exc, psycopg.Error):
                raise ExecutionError(f"cannot start a transaction on PostgreSQL at {self._where}: "
                                     f"{mask(first_line(exc))}") from None
            raise
        return cursor

    def release(self, cursor: PostgresCursor, healthy: bool = True) -> None:
        """End the call's transaction (commit when it went well) and give the connection back. A failed commit
        fails the call: what it wrote is not there."""
        import psycopg

        conn = cursor._detach()
        if conn is None:
            return
        failed: BaseException | None = None
        try:
            cursor._close_server_cursor()
            if healthy:
                conn.commit()
            else:
                conn.rollback()
        except psycopg.Error as exc:
            failed = exc
            try:
                conn.rollback()
            except psycopg.Error:
                pass  # a broken connection: the pool discards it
        finally:
            _discard_session(conn)
            pool = self._pool
            if pool is not None:
                try:
                    pool.putconn(conn)
                except Exception:  # noqa: BLE001 - the pool closed meanwhile
                    conn.close()
            else:
                conn.close()
        if failed is not None and healthy:
            raise ExecutionError(f"SQL error: the transaction did not commit: {mask(first_line(failed))}")

    @contextmanager
    def cursor(self) -> Iterator[PostgresCursor]:
        """A cursor for work outside a call, as the anonymous caller."""
        cursor = self.acquire()
        healthy = False
        try:
            yield cursor
            healthy = True
        finally:
            self.release(cursor, healthy)

    # -- checking SQL (`validate`, and `serve` at start) --------------------------------------------------------
    def statements(self, sql: str) -> tuple[tuple[str, frozenset[str]], ...]:
        found = scan(sql)
        refuse_transaction_control(found)  # `validate` says so, not only the first call
        return tuple((statement.text, frozenset(statement.names)) for statement in found)

    def check(self, statement: str, *, phase: str) -> list[Any]:
        """Let the server prepare the statement (tables, columns, functions, types) without running it."""
        from psycopg import pq

        found = scan(statement)
        if len(found) != 1:
            return [] if not found else ["SQL does not prepare: more than one statement"]
        cursor = self.acquire()
        try:
            result = cursor._conn.pgconn.prepare(b"", found[0].numbered.encode("utf-8"))
            if result.status != pq.ExecStatus.COMMAND_OK:
                message = (result.error_message or b"").decode("utf-8", "replace")
                # "ERROR:  relation ... does not exist": the message without libpq's severity prefix.
                message = re.sub(r"^\s*(ERROR|FATAL):\s*", "", message.strip().split("\n", 1)[0])
                return [f"SQL does not prepare: {mask(message)}"]
            return []
        finally:
            self.release(cursor, healthy=False)  # validation never writes


def _discard_session(conn: Any) -> None:
    """Reset the session after a call: what it may have changed there (SET ROLE, a session-level SET or set_config,
    temporary tables, LISTEN, advisory locks, prepared statements) must never reach the next caller. Here, not in the
    pool's `reset`, which runs on a pool thread: handing the connection over cost more than this round trip."""
    try:
        conn.autocommit = True  # DISCARD ALL cannot run inside a transaction
        try:
            conn.execute("DISCARD ALL")
        finally:
            conn.autocommit = False
    except Exception:  # noqa: BLE001 - a session that could not be reset never serves again
        log.debug("resetting a PostgreSQL session failed; closing the connection", exc_info=True)
        conn.close()


def _identity(user: Any) -> tuple[str, str, str, str, str]:
    # The anonymous caller is nobody, as DuckDB's get_user_role() & co. have it (NULL there, '' here; the rewritten
    # get_user_role() & co. read '' as NULL).
    if user is None or user.is_anonymous:
        return ("", "", "", "", "")
    return (user.user_id or "", user.username or "", user.role or "", user.email or "", user.provider or "")


# -- what only DuckDB does ------------------------------------------------------------------------------------------
def refuse_duckdb_only(project: Any) -> None:
    """A DuckDB-only feature configured for a profile on PostgreSQL stops the start: it would silently do nothing."""
    profile = project.profile
    why = f"is DuckDB-only, and profile '{profile}' runs its SQL on PostgreSQL (profiles.{profile}.sql.engine)"

    def section(name: str) -> Any:
        try:
            return project.plugin_config(name)
        except NotFoundError:  # its plugin is not loaded: the section cannot be configured either
            return None

    if section("extensions"):
        raise ConfigError(f"DuckDB extensions {why}; remove them", file=project.site_file, key_path="extensions")
    if section("plugin"):
        raise ConfigError(f"UDF plugin instances (DuckDB functions) {why}; remove them, or create the functions "
                          "in PostgreSQL", file=project.site_file, key_path="plugin")
    if project.site.profile_config(profile).duckdb.path is not None:
        raise ConfigError(f"a DuckDB database file {why}; remove it", file=project.site_file,
                          key_path=f"profiles.{profile}.duckdb.path")
    sql_tools = section("sql_tools")
    if sql_tools is not None and getattr(sql_tools, "enabled", False):
        raise ConfigError(f"the SQL tools sandbox {why}; set it to false", file=project.site_file,
                          key_path="sql_tools.enabled")


@hookimpl
def open_sql_engine(settings, project):
    if settings.engine != ENGINE:
        return None
    return PostgresEngine(settings, project)
