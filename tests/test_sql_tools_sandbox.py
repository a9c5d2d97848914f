"""execute_sql_query runs client SQL in a locked-down DuckDB instance of its own (see mxcp_plugins/sql_tools.py).

Most tests run in each of the three ways a project database can be open: a file read-write (the sandbox attaches a
snapshot), a file read-only (attached directly) and `:memory:` (a snapshot too). Refusals come from DuckDB's own
switches; the last tests serve a project and use a real MCP client over stdio.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anyio
import duckdb
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client
from server_helpers import SECRET_VALUE, SLOW_SQL, USER_CONFIG, mxcp_command, serve_env

from mxcp_core.errors import ConfigError, MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project

MODES = ("read-write", "read-only", "in-memory")
PEOPLE = [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Alan"}]
# A query that would run for hours: cross join of two huge ranges.
CROSS_JOIN = "SELECT count(*) AS n FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"


def site(mode: str, extra: str = "") -> str:
    text = "mxcp: 1\nproject: demo\nprofile: default\n"
    if mode == "in-memory":
        text += "profiles:\n  default:\n    duckdb: {path: ':memory:'}\n"
    return text + "sql_tools:\n  enabled: true\n  max_rows: 50\n  timeout: 0.5\n" + extra


def fill(conn: Any) -> None:
    conn.execute("CREATE TABLE people (id INTEGER, name VARCHAR)")
    conn.execute("INSERT INTO people VALUES (1, 'Ada'), (2, 'Alan')")
    conn.execute("CREATE VIEW names AS SELECT name FROM people")


@pytest.fixture
def home(isolated_environment) -> Path:
    """The server user's ~/.mxcp/config.yml, with a secret in it: what a client must never read."""
    config = isolated_environment / ".mxcp" / "config.yml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    return isolated_environment


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def project_root(make_project, tmp_path, mode, home) -> Path:
    csv = tmp_path / "p" / "data" / "people.csv"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site(mode),
        "data/people.csv": "id,name\n1,Ada\n2,Alan\n",
        # The project's own endpoint reads a file: its access must survive the sandbox.
        "tools/people_csv.yml": f"""\
            mxcp: 1
            tool:
              name: people_csv
              return: {{type: array, items: {{type: object}}}}
              source: {{code: "SELECT * FROM read_csv('{csv}') ORDER BY id"}}
            """,
    })
    if mode != "in-memory":
        conn = duckdb.connect(str(root / "data" / "db-default.duckdb"))
        fill(conn)
        conn.close()
    return root


@pytest.fixture
def runtime(project_root, mode):
    with Runtime(open_project(project_root, readonly=mode == "read-only")) as started:
        if mode == "in-memory":
            with started.cursor() as cursor:
                fill(cursor)
        yield started


def query(runtime: Runtime, sql: str) -> Any:
    return runtime.call("tool", "execute_sql_query", {"sql": sql})


def refused(runtime: Runtime, sql: str) -> str:
    with pytest.raises(MxcpError) as info:
        query(runtime, sql)
    return str(info.value)


def test_reads_the_project_database(runtime):
    assert query(runtime, "SELECT id, name FROM people ORDER BY id") == PEOPLE
    assert query(runtime, "SELECT name FROM names ORDER BY name") == [{"name": "Ada"}, {"name": "Alan"}]
    # The project's catalog name works here too (the sandbox attaches under the same name).
    catalog = query(runtime, "SELECT current_database() AS c")[0]["c"]
    assert query(runtime, f'SELECT count(*) AS n FROM "{catalog}".main.people') == [{"n": 2}]
    assert query(runtime, "") == []


def test_read_only_server_attaches_its_file_and_others_get_a_snapshot(runtime, mode):
    query(runtime, "SELECT 1 AS x")
    snapshots = runtime.context.state.get("sql_tools")
    assert (snapshots is None) == (mode == "read-only")


def test_duckdb_facts_behind_the_design(tmp_path):
    """If DuckDB changes any of these, the sandbox's design must be looked at again."""
    probe = duckdb.connect()
    scopes = dict(probe.execute(
        "SELECT name, scope FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration', "
        "'disabled_filesystems', 'autoload_known_extensions', 'allow_community_extensions')").fetchall())
    # Global to an instance: switching them off on the project's connection would take files from endpoints.
    assert set(scopes.values()) == {"GLOBAL"} and len(scopes) == 5
    path = str(tmp_path / "facts.duckdb")
    duckdb.connect(path).close()
    writer = duckdb.connect(path)
    # A file open read-write in this process cannot be attached by another instance, even READ_ONLY: a
    # read-write server's database reaches the sandbox as a snapshot.
    with pytest.raises(duckdb.Error, match="already attached"):
        probe.execute(f"ATTACH '{path}' AS p (READ_ONLY)")
    writer.close()
    reader = duckdb.connect(path, read_only=True)
    probe.execute(f"ATTACH '{path}' AS p (READ_ONLY)")  # read-only in both: a read-only server's file is shared
    probe.execute("DETACH p")
    reader.close()
    probe.close()


FILE_READS = (
    "SELECT * FROM read_text('~/.mxcp/config.yml')",
    "SELECT * FROM read_text('{home}/.mxcp/config.yml')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_csv('{root}/data/people.csv')",
    "SELECT * FROM '{root}/data/people.csv'",
    "SELECT * FROM read_json_auto('{root}/data/people.csv')",
    "SELECT * FROM read_blob('{root}/mxcp-site.yml')",
    "SELECT * FROM read_parquet('{root}/data/missing.parquet')",
    "SELECT * FROM glob('{root}/*')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM sniff_csv('{root}/data/people.csv')",
    "SELECT * FROM read_csv('https://example.com/people.csv')",
    "SELECT * FROM read_parquet('s3://bucket/people.parquet')",
)


def test_file_access_is_refused(runtime, project_root, home):
    for sql in FILE_READS:
        message = refused(runtime, sql.format(root=project_root, home=home))
        assert "Permission Error" in message, sql
        assert SECRET_VALUE not in message and "root:" not in message


def test_project_endpoint_keeps_its_file_access(runtime, project_root, mode):
    # The same file, refused to the client above, is still readable by the project's own SQL endpoint.
    assert runtime.call("tool", "people_csv") == PEOPLE
    assert "Permission Error" in refused(runtime, f"SELECT * FROM read_csv('{project_root}/data/people.csv')")
    assert runtime.call("tool", "people_csv") == PEOPLE
    if mode != "read-only":
        # A project view over a file is no way around it: the sandbox checks the file access, not the SQL.
        with runtime.cursor() as cursor:
            cursor.execute(f"CREATE VIEW people_file AS SELECT * FROM read_csv('{project_root}/data/people.csv')")
            assert len(cursor.execute("SELECT * FROM people_file").fetchall()) == 2
        assert "Permission Error" in refused(runtime, "SELECT * FROM people_file")


def test_writing_files_attaching_and_extensions_are_refused(runtime, project_root, tmp_path):
    target = tmp_path / "out" / "leak.csv"
    target.parent.mkdir()
    database = project_root / "data" / "db-default.duckdb"
    for statement in (
        f"COPY (SELECT 1 AS x) TO '{target}'",
        f"COPY people TO '{target}' (FORMAT csv)",
        f"EXPORT DATABASE '{target.parent}'",
        f"ATTACH '{target.parent}/other.duckdb' AS other",
        f"ATTACH '{database}' AS again",
        f"ATTACH '{database}' AS again (READ_ONLY)",
        "INSTALL httpfs",
        "FORCE INSTALL spatial FROM community",
        "LOAD httpfs",
        "LOAD spatial",
        f"LOAD '{project_root}/evil.duckdb_extension'",
    ):
        assert "Permission Error" in refused(runtime, statement), statement
    assert list(target.parent.iterdir()) == []


def test_settings_are_locked_and_nothing_persists(runtime):
    def sandbox_settings():
        return query(runtime, "SELECT current_setting('threads') AS threads, "
                              "current_setting('memory_limit') AS memory, "
                              "current_setting('enable_external_access') AS external")[0]

    def project_threads():
        with runtime.cursor() as cursor:
            return cursor.execute("SELECT current_setting('threads')").fetchone()[0]

    before, project_before = sandbox_settings(), project_threads()
    assert before["external"] is False
    for statement in ("SET threads = 1", "SET GLOBAL threads = 3", "PRAGMA threads = 1", "SET memory_limit = '64GB'",
                      "SET lock_configuration = false", "RESET lock_configuration",
                      "SET enable_external_access = true", "SET disabled_filesystems = ''",
                      "SET allowed_directories = ['/']", "SET profiling_output = '/tmp/profile.json'"):
        assert "the configuration has been locked" in refused(runtime, statement), statement
    # A refused SET inside a multi-statement query stops it before the SELECT runs.
    assert "locked" in refused(runtime, "SET threads = 1; SELECT 1 AS x")
    assert sandbox_settings() == before
    assert project_threads() == project_before


def test_writes_are_refused(runtime):
    for statement in (
        "INSERT INTO people VALUES (3, 'Grace')",
        "UPDATE people SET name = 'X'",
        "DELETE FROM people",
        "DROP TABLE people",
        "CREATE TABLE stolen AS SELECT * FROM people",
        "CREATE TABLE main.stolen (x INTEGER)",
        "CREATE VIEW v2 AS SELECT 1 AS x",
        "CREATE SCHEMA other",
        "ALTER TABLE people ADD COLUMN age INTEGER",
        "CREATE SEQUENCE s",
    ):
        assert "read-only" in refused(runtime, statement), statement
    assert query(runtime, "SELECT id, name FROM people ORDER BY id") == PEOPLE
    assert query(runtime, "SELECT count(*) AS n FROM duckdb_tables() WHERE NOT temporary") == [{"n": 1}]


def test_temporary_scratch_dies_with_the_call(runtime):
    assert query(runtime, "CREATE TEMP TABLE scratch AS SELECT 41 + 1 AS x; SELECT x FROM scratch") == [{"x": 42}]
    assert "scratch" in refused(runtime, "SELECT x FROM scratch")


def test_row_cap_cuts_the_result_and_says_so(runtime):
    assert len(query(runtime, "SELECT range AS i FROM range(50)")) == 50
    # A trillion rows: only one past the cap is ever fetched, so this answers at once.
    _, call = runtime.prepare_call("tool", "execute_sql_query", {"sql": "SELECT range AS i FROM range(1000000000000)"})
    rows = runtime.invoke(call)
    assert rows == [{"i": i} for i in range(50)]
    assert call.notes["truncated"] == {"reason": "sql_tools.max_rows", "limit": 50, "rows_returned": 50,
                                       "rows_total": None}


@pytest.mark.parametrize("sql", [SLOW_SQL, CROSS_JOIN])
def test_time_limit_stops_a_long_query_and_the_next_call_works(runtime, sql):
    started = time.monotonic()
    message = refused(runtime, sql)
    assert time.monotonic() - started < 10
    assert "stopped after 0.5s" in message and "sql_tools.timeout" in message
    assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 2}]


def test_cancelling_the_call_interrupts_the_sandbox(runtime):
    _, call = runtime.prepare_call("tool", "execute_sql_query", {"sql": SLOW_SQL})
    outcome: list[BaseException] = []

    def run():
        try:
            runtime.invoke(call)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)
    call.interrupt()
    worker.join(5)
    assert not worker.is_alive()
    assert [str(e) for e in outcome] == ["query interrupted"]


def test_sees_what_the_project_commits(runtime, mode):
    if mode == "read-only":
        pytest.skip("nothing writes a read-only database while it is served (see the reload test)")
    with runtime.cursor() as writer:
        writer.execute("INSERT INTO people VALUES (3, 'Grace')")
        assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 3}]
        # Uncommitted work of another cursor stays invisible, as it would to any other transaction.
        writer.execute("BEGIN")
        writer.execute("INSERT INTO people VALUES (4, 'Edsger')")
        assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 3}]
        writer.execute("COMMIT")
    assert query(runtime, "SELECT max(id) AS m FROM people") == [{"m": 4}]


def test_snapshot_is_reused_until_the_file_changes_and_removed_at_stop(project_root, mode):
    if mode != "read-write":
        pytest.skip("only a read-write file database is snapshotted lazily")
    runtime = Runtime(open_project(project_root))
    with runtime:
        for _ in range(3):
            query(runtime, "SELECT 1 AS x")
        snapshots = runtime.context.state["sql_tools"]
        assert snapshots.copies == 1
        with runtime.cursor() as writer:
            writer.execute("INSERT INTO people VALUES (3, 'Grace')")
        assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 3}]
        assert snapshots.copies == 2
        folder = snapshots.folder
        assert [p.name for p in folder.iterdir()] == ["snapshot-2.duckdb"]  # the replaced one is gone
        # The project's connection saw the snapshot catalog only for the copy; listings never show it.
        with runtime.cursor() as cursor:
            assert [r[0] for r in cursor.execute("SELECT database_name FROM duckdb_databases()").fetchall()
                    if r[0].startswith("__mxcp")] == []
    assert not folder.exists()


def test_reload_payload_gets_the_file_and_later_calls_see_its_writes(project_root, mode):
    if mode == "in-memory":
        pytest.skip("a reload payload writes the database file")
    path = str(project_root / "data" / "db-default.duckdb")

    def payload():
        conn = duckdb.connect(path)
        conn.execute("INSERT INTO people VALUES (3, 'Grace')")
        conn.close()

    with Runtime(open_project(project_root, readonly=mode == "read-only")) as runtime:
        assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 2}]
        runtime.reload(payload)
        runtime.wait_for_reloads(30)
        assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 3}]


def test_concurrent_calls_with_writes_in_between(runtime, mode):
    errors: list[BaseException] = []
    counts: list[int] = []

    def client():
        for _ in range(5):
            try:
                counts.append(query(runtime, "SELECT count(*) AS n FROM people")[0]["n"])
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    if mode != "read-only":
        for i in range(5):
            with runtime.cursor() as writer:
                writer.execute("INSERT INTO people VALUES (?, 'x')", [10 + i])
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(counts) == 30 and all(2 <= n <= 7 for n in counts)
    assert query(runtime, "SELECT count(*) AS n FROM people") == [{"n": 2 if mode == "read-only" else 7}]


def test_list_tables_and_schema_still_work(runtime):
    assert runtime.call("tool", "list_tables") == [{"name": "names", "type": "view"},
                                                   {"name": "people", "type": "table"}]
    assert runtime.call("tool", "get_table_schema", {"table_name": "people"}) == [
        {"name": "id", "type": "INTEGER", "nullable": True},
        {"name": "name", "type": "VARCHAR", "nullable": True},
    ]


def test_declared_read_only_with_its_limits(project_root, mode):
    tool = open_project(project_root, readonly=mode == "read-only").endpoints().tools["execute_sql_query"]
    assert tool.annotations["readOnlyHint"] is True
    assert "read-only" in tool.description and "50 rows" in tool.description and "0.5s" in tool.description


@pytest.mark.parametrize("setting", ["max_rows: 0", "timeout: -1"])
def test_limits_must_be_positive(make_project, tmp_path, setting):
    text = f"mxcp: 1\nproject: demo\nprofile: default\nsql_tools:\n  enabled: true\n  {setting}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": text})
    with pytest.raises(ConfigError, match="greater than 0"):
        open_project(root)


def test_defaults(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n"})
    settings = open_project(root).context.plugin_config("sql_tools")
    assert (settings.enabled, settings.max_rows, settings.timeout, settings.memory_limit) == (
        False, 1000, 30.0, "1GB")


# -- served, with a real MCP client ---------------------------------------------------------------------------
SERVED_TOOLS = {
    # Relative paths: the server runs in the project folder, as `mxcp serve` usually does.
    "tools/people_csv.yml": """\
        mxcp: 1
        tool:
          name: people_csv
          return: {type: array, items: {type: object}}
          source: {code: "SELECT * FROM read_csv('data/people.csv') ORDER BY id"}
        """,
    "tools/threads.yml": """\
        mxcp: 1
        tool:
          name: threads
          return: {type: string}
          source: {code: "SELECT current_setting('threads')::VARCHAR"}
        """,
}


@pytest.mark.parametrize("readonly", [False, True], ids=["read-write", "read-only"])
def test_served_over_mcp(make_project, tmp_path, home, readonly):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site("read-write"), "data/people.csv": "id,name\n1,Ada\n2,Alan\n", **SERVED_TOOLS})
    conn = duckdb.connect(str(root / "data" / "db-default.duckdb"))
    fill(conn)
    conn.close()
    command = mxcp_command()
    args = [*command[1:], "serve", "--transport", "stdio", *(["--readonly"] if readonly else [])]
    params = StdioServerParameters(command=command[0], args=args, cwd=root, env=serve_env())

    async def sql(client, text):
        return await client.call_tool("execute_sql_query", {"sql": text})

    async def body(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        threads_before = (await client.call_tool("threads", {})).structured_content
        results = {
            "select": await sql(client, "SELECT id, name FROM people ORDER BY id"),
            "user_config": await sql(client, "SELECT content FROM read_text('~/.mxcp/config.yml')"),
            "passwd": await sql(client, "SELECT * FROM read_csv('/etc/passwd')"),
            "inside": await sql(client, "SELECT * FROM read_csv('data/people.csv')"),
            "glob": await sql(client, "SELECT * FROM glob('*')"),
            "copy": await sql(client, "COPY people TO 'leak.csv'"),
            "attach": await sql(client, "ATTACH 'other.duckdb' AS other"),
            "install": await sql(client, "INSTALL httpfs"),
            "load": await sql(client, "LOAD httpfs"),
            "set_threads": await sql(client, "SET threads = 1"),
            "set_memory": await sql(client, "SET memory_limit = '64GB'"),
            "insert": await sql(client, "INSERT INTO people VALUES (3, 'Grace')"),
            "create": await sql(client, "CREATE TABLE stolen (x INTEGER)"),
            "too_many": await sql(client, "SELECT * FROM range(51)"),
            "slow": await sql(client, SLOW_SQL),
            "after_slow": await sql(client, "SELECT count(*) AS n FROM people"),
            "project_csv": await client.call_tool("people_csv", {}),
            "threads_after": (await client.call_tool("threads", {})).structured_content,
            "tables": await client.call_tool("list_tables", {}),
            "schema": await client.call_tool("get_table_schema", {"table_name": "people"}),
        }
        return tools, threads_before, results

    async def main(errlog):
        async with mcp.Client(stdio_client(params, errlog=errlog)) as client:
            return await body(client)

    with open(tmp_path / "stderr.txt", "w") as errlog:
        tools, threads_before, results = anyio.run(main, errlog)
    assert tools["execute_sql_query"].annotations.read_only_hint is True
    assert results["select"].structured_content == {"result": PEOPLE}
    for name in ("user_config", "passwd", "inside", "glob", "copy", "attach", "install", "load"):
        assert results[name].is_error, name
        assert "Permission Error" in results[name].content[0].text, name
        assert SECRET_VALUE not in results[name].content[0].text
    for name in ("set_threads", "set_memory"):
        assert results[name].is_error and "locked" in results[name].content[0].text
    for name in ("insert", "create"):
        assert results[name].is_error and "read-only" in results[name].content[0].text
    too_many = results["too_many"]
    assert not too_many.is_error and len(too_many.structured_content["result"]) == 50
    assert too_many.meta["mxcp/truncated"]["reason"] == "sql_tools.max_rows"
    assert "[truncated: 50 rows returned; the server's limit sql_tools.max_rows is 50]" in too_many.content[-1].text
    assert results["slow"].is_error and "sql_tools.timeout" in results["slow"].content[0].text
    assert results["after_slow"].structured_content == {"result": [{"n": 2}]}
    assert results["project_csv"].structured_content == {"result": PEOPLE}
    assert results["threads_after"] == threads_before
    assert {"name": "people", "type": "table"} in results["tables"].structured_content["result"]
    assert [c["name"] for c in results["schema"].structured_content["result"]] == ["id", "name"]
    assert not (root / "leak.csv").exists() and not (root / "other.duckdb").exists()
    check = duckdb.connect(str(root / "data" / "db-default.duckdb"), read_only=True)
    assert check.execute("SELECT count(*) FROM people").fetchone()[0] == 2
    assert check.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [("people",)]
    check.close()


def test_huge_values_stop_at_the_byte_limit_before_reaching_python(make_project, tmp_path, home):
    # Each row is 5 MB: DuckDB makes them, but only what fits in limits.max_result_bytes is fetched into Python.
    root = make_project(tmp_path / "big", {"mxcp-site.yml": site("in-memory", "limits: {max_result_bytes: 12000000}\n")})
    with Runtime(open_project(root)) as runtime:
        _, call = runtime.prepare_call(
            "tool", "execute_sql_query", {"sql": "SELECT repeat('x', 5000000) AS s FROM range(40)"})
        rows = runtime.invoke(call)
    assert len(rows) == 2
    assert call.notes["truncated"]["reason"] == "limits.max_result_bytes"
