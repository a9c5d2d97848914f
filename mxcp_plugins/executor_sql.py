"""Builtin plugin: the `sql` executor. Parameters are bound as `$name`, never formatted into the SQL text."""
from __future__ import annotations

import re
from typing import Any

from mxcp_core import (
    EndpointCall,
    EndpointDefinition,
    ExecutionError,
    MxcpError,
    Problem,
    call_cursor,
    hookimpl,
    run_sql,
    split_statements,
    sql_parameter_names,
)

# Database objects an on_init hook may create (`CREATE TABLE ...`), so `validate` cannot tell they are missing.
_ON_INIT_MAY_CREATE = re.compile(r"Catalog Error: (Table|View|Schema|Type|Sequence) with name ", re.IGNORECASE)


class SqlExecutor:
    language = "sql"
    file_suffixes = (".sql",)

    def __init__(self) -> None:
        self._texts: dict[tuple[str, str], str] = {}

    def start(self, runtime: Any) -> None:
        self._texts.clear()

    def _text(self, endpoint: EndpointDefinition) -> str:
        key = (endpoint.kind, endpoint.key)
        text = self._texts.get(key)
        if text is None:
            if endpoint.source is None:
                raise ExecutionError(f"{endpoint.kind} '{endpoint.key}' has no SQL source")
            text = self._texts[key] = endpoint.source.read()
        return text

    def validate(self, endpoint: EndpointDefinition, runtime: Any) -> list[str]:
        try:
            sql = self._text(endpoint)
            statements = split_statements(sql)
        except (OSError, MxcpError) as exc:
            return [str(exc)]
        if not statements:
            return ["the SQL source is empty"]
        problems = []
        used = sql_parameter_names(sql)
        declared = {p.name for p in endpoint.parameters}
        if used - declared:
            problems.append(
                "SQL uses undeclared parameter(s): " + ", ".join(f"${n}" for n in sorted(used - declared))
            )
        if declared - used:
            problems.append(
                "declared parameter(s) not used in the SQL: " + ", ".join(sorted(declared - used))
            )
        if len(statements) == 1:
            problems.extend(_prepare(runtime, statements[0][0]))
        return problems

    def execute(self, call: EndpointCall) -> Any:
        # Rows past the call's limit stay in DuckDB: a huge result never reaches Python memory.
        return run_sql(call_cursor(), self._text(call.endpoint), call.arguments, max_rows=call.max_rows)

    def stop(self) -> None:
        self._texts.clear()


def _prepare(runtime: Any, query: str) -> list[str]:
    """Let DuckDB bind the statement (tables, columns, functions) without running it."""
    import duckdb

    with runtime.cursor() as cursor:
        try:
            cursor.execute(f"PREPARE mxcp_validate AS {query.rstrip().rstrip(';')}")
            cursor.execute("DEALLOCATE mxcp_validate")
        except duckdb.CatalogException as exc:
            first = str(exc).strip().splitlines()[0]
            message = f"SQL does not prepare: {first}"
            if runtime.phase == "serving" or not _ON_INIT_MAY_CREATE.search(first):
                # Functions come from register_functions (plugins, plugins/ folder), which run when `validate`
                # opens the database too: one missing there is missing when serving, so both call it an error.
                return [message]
            # Without on_init hooks (mxcp validate) a table they create is not there yet: worth a look, not a failure.
            return [Problem(message=f"{message} (unless an on_init hook creates it)", severity="warning")]
        except duckdb.Error as exc:
            return [f"SQL does not prepare: {str(exc).strip().splitlines()[0]}"]
    return []


@hookimpl
def provide_executor(project):
    return [SqlExecutor()]
