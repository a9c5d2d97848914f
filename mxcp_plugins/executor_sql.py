"""Builtin plugin: the `sql` executor. Parameters are bound as `$name`, never formatted into the SQL text."""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from mxcp_core import (
    EndpointCall,
    EndpointDefinition,
    ExecutionError,
    MxcpError,
    call_cursor,
    hookimpl,
    run_sql,
    tracing,
)

# OpenTelemetry's `db.system.name` of the SQL engines whose MXCP name differs.
_OTEL_SYSTEMS = {"postgres": "postgresql"}
# The statement's first keyword (SELECT, WITH, ...): the only part of the SQL text a span may carry.
_FIRST_KEYWORD = re.compile(r"\s*([A-Za-z]+)\b")


class SqlExecutor:
    language = "sql"
    file_suffixes = (".sql",)

    def __init__(self) -> None:
        self._texts: dict[tuple[str, str], str] = {}
        self._system = "duckdb"

    def start(self, runtime: Any) -> None:
        self._texts.clear()
        # Spans name the profile's engine.
        name = runtime.database.name
        self._system = _OTEL_SYSTEMS.get(name, name)

    def _text(self, endpoint: EndpointDefinition) -> str:
        key = (endpoint.kind, endpoint.key)
        text = self._texts.get(key)
        if text is None:
            if endpoint.source is None:
                raise ExecutionError(f"{endpoint.kind} '{endpoint.key}' has no SQL source")
            text = self._texts[key] = endpoint.source.read()
        return text

    def validate(self, endpoint: EndpointDefinition, runtime: Any) -> list[str]:
        engine = runtime.database
        try:
            sql = self._text(endpoint)
            statements = engine.statements(sql)
        except (OSError, MxcpError) as exc:
            return [str(exc)]
        if not statements:
            return ["the SQL source is empty"]
        problems = []
        used = frozenset().union(*(names for _, names in statements))
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
            problems.extend(engine.check(statements[0][0], phase=runtime.phase))
        return problems

    def execute(self, call: EndpointCall) -> Any:
        # Rows past the call's limit stay in DuckDB: a huge result never reaches Python memory.
        text = self._text(call.endpoint)
        if not tracing.active():
            return run_sql(call_cursor(), text, call.arguments, max_rows=call.max_rows)
        with tracing.span("mxcp.sql", sql_span_attributes(text, self._system)) as span:
            rows = run_sql(call_cursor(), text, call.arguments, max_rows=call.max_rows)
            span.set_attribute("db.response.returned_rows", len(rows))
            return rows

    def stop(self) -> None:
        self._texts.clear()


@functools.lru_cache(maxsize=512)  # an endpoint's text is the same on every call: hashed once
def sql_span_attributes(text: str, system: str) -> dict[str, Any]:
    """What a span says about a statement: a hash of its text and its first keyword. Never the text itself, which
    may hold literals as sensitive as any argument; never the parameter values."""
    attributes = {"db.system.name": system, "db.system": system,
                  "mxcp.sql.sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    keyword = _FIRST_KEYWORD.match(text)
    if keyword:
        attributes["db.operation.name"] = keyword.group(1).upper()
    return attributes


@hookimpl
def provide_executor(project):
    return [SqlExecutor()]
