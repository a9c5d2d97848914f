"""Builtin plugin: the tools `execute_sql_query`, `list_tables` and `get_table_schema` (site `sql_tools.enabled`).

They run on the call's cursor like any endpoint; a read-only database refuses writes (DuckDB enforces it).
"""
from __future__ import annotations

from typing import Any

import attrs

from mxcp_core import (
    ConfigSection,
    ExecutionError,
    NotFoundError,
    ProjectContext,
    ToolDefinition,
    hookimpl,
    parse_parameters,
    parse_type,
    suggest,
)

_SYSTEM_SCHEMAS = ("information_schema", "pg_catalog")


def execute_sql_query(sql: str) -> list[dict[str, Any]]:
    from mxcp.runtime import db

    return list(db.execute(sql))


def list_tables() -> list[dict[str, Any]]:
    """Tables and views of the database, `schema.name` outside the main schema."""
    from mxcp.runtime import db

    rows = db.execute(
        "SELECT table_catalog, table_schema, table_name, table_type FROM information_schema.tables "
        "WHERE table_schema NOT IN ('information_schema', 'pg_catalog') "
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
    conditions = ["table_name = $table"]
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
    writes = "Runs in a read-only database: statements that write are refused." if project.readonly else (
        "Statements may change the database."
    )
    return [
        ToolDefinition(
            name="execute_sql_query",
            description=f"Run a DuckDB SQL query against the project's database and return its rows. {writes}",
            parameters=parse_parameters(
                [{"name": "sql", "type": "string", "description": "The SQL query to run (DuckDB dialect)."}]
            ),
            return_type=parse_type(
                {"type": "array", "items": {"type": "object"}, "description": "The rows, one object per row."}
            ),
            function=execute_sql_query,
            annotations={"title": "Execute SQL query", "readOnlyHint": project.readonly, "openWorldHint": False},
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


@attrs.define
class SqlToolsSettings:
    """`sql_tools:` of mxcp-site.yml."""

    enabled: bool = False


@hookimpl
def config_sections():
    return [ConfigSection("sql_tools", SqlToolsSettings, description="the built-in SQL tools")]


@hookimpl
def provide_tool(project):
    if not project.plugin_config("sql_tools").enabled:
        return None
    return tools(project)
