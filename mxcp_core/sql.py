"""Running SQL text with bound parameters on a DuckDB cursor; the rows type `db.execute` returns."""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ExecutionError, MxcpError

PANDAS_EXTRA = "mxcp-pluggy[pandas]"


class Rows(list):
    """Query results: a list of row dicts that also offers `.fetchone()`, `.fetchall()` and `.df()`."""

    __slots__ = ("columns", "_tuples", "_position")

    def __init__(self, columns: Sequence[str], tuples: list[tuple[Any, ...]]) -> None:
        super().__init__(dict(zip(columns, row)) for row in tuples)
        self.columns = list(columns)
        self._tuples = tuples
        self._position = 0

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
def split_statements(sql: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """Statements of a SQL text with the parameter names each uses, from DuckDB's own parser."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ExecutionError(f"SQL syntax error: {_first_line(exc)}") from None
    return tuple((s.query, frozenset(s.named_parameters)) for s in statements)


def parameter_names(sql: str) -> set[str]:
    names: set[str] = set()
    for _, used in split_statements(sql):
        names |= used
    return names


def _bind(used: frozenset[str], params: Mapping[str, Any] | Sequence[Any] | None) -> Any:
    if not used:
        return None
    if params is None:
        params = {}
    if isinstance(params, Mapping):
        if all(name.isdigit() for name in used):
            # `$1, $2` with a dict: the dict's values in order (the seed's cache pattern does this).
            values = list(params.values())
            return [values[int(name) - 1] if int(name) - 1 < len(values) else None for name in sorted(used, key=int)]
        missing = sorted(used - params.keys())
        if missing:
            raise ExecutionError(f"missing SQL parameter(s): {', '.join('$' + m for m in missing)}")
        return {name: params[name] for name in used}
    return list(params)


def run_sql(cursor: Any, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Rows:
    """Run every statement (parameters bound, never formatted into the text); rows of the last one."""
    import duckdb

    statements = split_statements(sql)
    if not statements:
        return Rows([], [])
    try:
        for query, used in statements[:-1]:
            cursor.execute(query, _bind(used, params))
        query, used = statements[-1]
        cursor.execute(query, _bind(used, params))
        if cursor.description is None:
            return Rows([], [])
        columns = [column[0] for column in cursor.description]
        return Rows(columns, cursor.fetchall())
    except duckdb.InterruptException:
        raise ExecutionError("query interrupted") from None
    except duckdb.Error as exc:
        raise ExecutionError(f"SQL error: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """DuckDB errors carry the SQL text and a caret after the first line: keep the message only."""
    text = str(exc).strip()
    return text.split("\n", 1)[0] if text else type(exc).__name__
