"""Running SQL text with bound parameters on a DuckDB cursor (another engine's cursor runs it itself, through its
`run_sql`); the rows type `db.execute` returns."""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

from . import context
from .errors import ExecutionError, MxcpError

PANDAS_EXTRA = "mxcp-pluggy[pandas]"


class Rows(list):
    """Query results: a list of row dicts that also offers `.fetchone()`, `.fetchall()` and `.df()`."""

    __slots__ = ("_position", "_tuples", "columns", "more")

    def __init__(self, columns: Sequence[str], tuples: list[tuple[Any, ...]], more: bool = False) -> None:
        super().__init__(map(dict, map(zip, repeat(columns), tuples)))
        self.columns = list(columns)
        self._tuples = tuples
        self._position = 0
        # The query had rows past `max_rows` that were never fetched.
        self.more = more

    def fetchone(self) -> dict[str, Any] | None:
        """The next row (the first on the first call), or None when there is none."""
        if self._position >= len(self):
            return None
        row = self[self._position]
        self._position += 1
        return row

    def fetchall(self) -> list[dict[str, Any]]:
        rest = list(self[self._position :])
        self._position = len(self)
        return rest

    def df(self) -> Any:
        """The rows as a pandas DataFrame (needs the pandas extra)."""
        try:
            import pandas as pd
        except ImportError:
            raise MxcpError(
                f"Rows.df() needs pandas, which is not installed: pip install '{PANDAS_EXTRA}'"
            ) from None
        return pd.DataFrame.from_records(self._tuples, columns=self.columns)


@functools.lru_cache(maxsize=512)
def parsed_statements(sql: str) -> tuple[tuple[Any, frozenset[str]], ...]:
    """DuckDB's parsed statements of a SQL text with the parameter names each uses, parsed once per text.

    Executing a parsed statement skips DuckDB's parser on every call (a fifth of a trivial query's cost).
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ExecutionError(f"SQL syntax error: {first_line(exc)}") from None
    return tuple((s, frozenset(s.named_parameters)) for s in statements)


def split_statements(sql: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """Statements of a SQL text as text, with the parameter names each uses."""
    return tuple((statement.query, used) for statement, used in parsed_statements(sql))


def parameter_names(sql: str) -> set[str]:
    names: set[str] = set()
    for _, used in parsed_statements(sql):
        names |= used
    return names


def _bind(used: frozenset[str], params: Mapping[str, Any] | Sequence[Any] | None) -> Any:
    if not used:
        return None
    if params is None:
        params = {}
    if isinstance(params, Mapping):
        if all(name.isdigit() for name in used):
            # `$1, $2` (or `?`) with a dict: the dict's values in order (the seed's cache pattern does this).
            values = list(params.values())
            needed = max(int(name) for name in used)
            if len(values) < needed:
                raise ExecutionError(f"the SQL uses ${needed} but only {len(values)} value(s) were given")
            return values[:needed]
        missing = sorted(used - params.keys())
        if missing:
            raise ExecutionError(f"missing SQL parameter(s): {', '.join('$' + m for m in missing)}")
        return {name: params[name] for name in used}
    return list(params)


def run_sql(
    cursor: Any, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None, *, max_rows: int | None = None
) -> Rows:
    """Run every statement (parameters bound, never formatted into the text); rows of the last one.

    With `max_rows`, at most that many rows are fetched (DuckDB streams the rest, never materialised) and
    `Rows.more` says whether there were more. On the current call's cursor, the caller's identity is bound
    first when the SQL needs it (`get_username()` & co., sql_identity.py).
    """
    engine_run = getattr(cursor, "run_sql", None)
    if engine_run is not None:  # a cursor of another engine (open_sql_engine) runs SQL its own way
        return engine_run(sql, params, max_rows=max_rows)
    import duckdb

    statements = parsed_statements(sql)
    if not statements:
        return Rows([], [])
    slot = context.call_slot(cursor)
    try:
        if slot is not None:
            slot.bind_identity(sql)
        for statement, used in statements[:-1]:
            _execute(cursor, statement, _bind(used, params), slot)
        statement, used = statements[-1]
        _execute(cursor, statement, _bind(used, params), slot)
        if slot is not None and slot.identity is not None:
            slot.identity.ran(sql, statements)
        description = cursor.description
        if description is None:
            return Rows([], [])
        more = False
        if max_rows is None:
            tuples = cursor.fetchall()
        else:
            tuples = cursor.fetchmany(max_rows + 1)
            more = len(tuples) > max_rows
            del tuples[max_rows:]
        return Rows([column[0] for column in description], tuples, more)
    except duckdb.InterruptException:
        raise ExecutionError("query interrupted") from None
    except duckdb.Error as exc:
        raise ExecutionError(f"SQL error: {first_line(exc)}") from None


def _execute(cursor: Any, statement: Any, values: Any, slot: context.CursorSlot | None) -> None:
    import duckdb

    try:
        cursor.execute(statement, values)
    except duckdb.CatalogException as exc:
        # A view using get_username() made behind run_sql's back, met on a cursor not bound yet: bind, run again.
        try:
            rebound = slot is not None and slot.rebind_after(exc)
        except duckdb.Error:
            raise exc from None  # binding failed too (the endpoint's transaction is aborted): the first error
        if not rebound:
            raise
        try:
            cursor.execute(statement, values)
        except duckdb.Error:
            raise exc from None  # e.g. the endpoint's own transaction is aborted by the first failure


def quote_literal(text: str) -> str:
    """A SQL string literal (for statements that take no parameters: ATTACH, CREATE SECRET...)."""
    return "'" + text.replace("'", "''") + "'"


def quote_identifier(text: str) -> str:
    """A SQL identifier, quoted whatever characters it holds."""
    return '"' + text.replace('"', '""') + '"'


def first_line(exc: BaseException) -> str:
    """DuckDB errors carry the SQL text and a caret after the first line: keep the message only."""
    text = str(exc).strip()
    return text.split("\n", 1)[0] if text else type(exc).__name__
