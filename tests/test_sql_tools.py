"""The built-in SQL tools (`sql_tools.enabled`): execute_sql_query, list_tables, get_table_schema."""
from __future__ import annotations

import duckdb
import pytest

from mxcp_core.errors import MxcpError, NotFoundError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project

ENABLED_SITE = "mxcp: 1\nproject: demo\nprofile: default\nsql_tools: {enabled: true}\n"


@pytest.fixture
def project_root(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": ENABLED_SITE})
    db_file = root / "data" / "db-default.duckdb"
    db_file.parent.mkdir(parents=True)
    conn = duckdb.connect(str(db_file))
    conn.execute("CREATE TABLE people (id INTEGER NOT NULL, name VARCHAR, born DATE)")
    conn.execute("INSERT INTO people VALUES (1, 'Ada', DATE '1815-12-10'), (2, 'Alan', DATE '1912-06-23')")
    conn.execute("CREATE VIEW adults AS SELECT name FROM people")
    conn.execute("CREATE SCHEMA hr")
    conn.execute("CREATE TABLE hr.salaries (person_id INTEGER, amount DECIMAL(10, 2))")
    conn.close()
    return root


def test_tools_absent_unless_enabled(make_project, tmp_path):
    root = make_project(tmp_path / "p")
    assert not set(open_project(root).endpoints().tools) & {"execute_sql_query", "list_tables", "get_table_schema"}


def test_tools_are_declared_with_parameters_and_types(project_root):
    tools = open_project(project_root).endpoints().tools
    assert [p.name for p in tools["execute_sql_query"].parameters] == ["sql"]
    assert [p.name for p in tools["get_table_schema"].parameters] == ["table_name"]
    assert tools["list_tables"].parameters == ()
    assert tools["list_tables"].annotations["readOnlyHint"] is True
    # Read-only on a read-write server too: the hint tells the truth (the sandbox attaches READ_ONLY).
    assert tools["execute_sql_query"].annotations["readOnlyHint"] is True
    assert tools["execute_sql_query"].origin == "plugin 'sql_tools'"


def test_execute_sql_query(project_root):
    with Runtime(open_project(project_root)) as runtime:
        rows = runtime.call("tool", "execute_sql_query", {"sql": "SELECT id, name FROM people ORDER BY id"})
        assert rows == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Alan"}]
        # The tool never writes, even when the server may; what the project itself writes, later calls see.
        with pytest.raises(MxcpError, match="read-only"):
            runtime.call("tool", "execute_sql_query", {"sql": "INSERT INTO people VALUES (3, 'Grace', NULL)"})
        with runtime.cursor() as cursor:
            cursor.execute("INSERT INTO people VALUES (3, 'Grace', NULL)")
        assert runtime.call("tool", "execute_sql_query", {"sql": "SELECT count(*) AS n FROM people"}) == [{"n": 3}]


def test_execute_sql_query_error_is_one_clean_message(project_root):
    with Runtime(open_project(project_root)) as runtime:
        with pytest.raises(MxcpError) as info:
            runtime.call("tool", "execute_sql_query", {"sql": "SELECT nope FROM people"})
    assert "nope" in str(info.value) and "\n" not in str(info.value)


def test_list_tables(project_root):
    with Runtime(open_project(project_root)) as runtime:
        tables = runtime.call("tool", "list_tables")
    assert tables == [
        {"name": "adults", "type": "view"},
        {"name": "people", "type": "table"},
        {"name": "hr.salaries", "type": "table"},
    ]


def test_get_table_schema(project_root):
    with Runtime(open_project(project_root)) as runtime:
        assert runtime.call("tool", "get_table_schema", {"table_name": "people"}) == [
            {"name": "id", "type": "INTEGER", "nullable": False},
            {"name": "name", "type": "VARCHAR", "nullable": True},
            {"name": "born", "type": "DATE", "nullable": True},
        ]
        assert runtime.call("tool", "get_table_schema", {"table_name": "hr.salaries"}) == [
            {"name": "person_id", "type": "INTEGER", "nullable": True},
            {"name": "amount", "type": "DECIMAL(10,2)", "nullable": True},
        ]
        with pytest.raises(NotFoundError, match="table 'peple' not found.*did you mean 'people'"):
            runtime.call("tool", "get_table_schema", {"table_name": "peple"})


def test_readonly_database_refuses_writes(project_root):
    project = open_project(project_root, readonly=True)
    assert project.endpoints().tools["execute_sql_query"].annotations["readOnlyHint"] is True
    with Runtime(project) as runtime:
        assert runtime.call("tool", "execute_sql_query", {"sql": "SELECT count(*) AS n FROM people"}) == [{"n": 2}]
        with pytest.raises(MxcpError, match="read-only"):
            runtime.call("tool", "execute_sql_query", {"sql": "DELETE FROM people"})
        assert runtime.call("tool", "execute_sql_query", {"sql": "SELECT count(*) AS n FROM people"}) == [{"n": 2}]


def test_cli_run_sql_tool(project_root, run_mxcp):
    import json

    result = run_mxcp("run", "tool", "list_tables", "--json-output", cwd=project_root)
    assert result.returncode == 0, result.stderr
    assert {"name": "people", "type": "table"} in json.loads(result.stdout)["result"]
