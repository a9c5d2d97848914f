"""The caller's identity in SQL: get_username() & co., per call, under concurrent calls and DuckDB's own threads."""
from __future__ import annotations

import asyncio
import json

import duckdb
import pytest
from executor_helpers import python_tool, started, tool

from mxcp_core import hookimpl
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.validation import validate_project

ALL_SIX = (
    "SELECT get_username() AS username, get_user_email() AS email, get_user_provider() AS provider, "
    "get_user_external_token() AS external_token, get_user_id() AS user_id, get_user_role() AS role"
)
# What a call's cursor holds: NULL and '' unless the identity was bound on it.
BINDING = "SELECT getvariable('mxcp_user') AS variable, current_setting('search_path') AS path"
ALICE = {"username": "alice", "email": "alice@example.com", "provider": "github", "user_id": "u-1",
         "role": "admin", "external_token": "gho_secret"}
ROWS_ALICE = 1_000_000
ROWS_BOB = 1_200_000

FILES = {
    "tools/whoami.yml": tool("whoami", f'code: "{ALL_SIX}"', returns="{type: object}"),
    "tools/types.yml": tool("types", 'code: "SELECT typeof(get_username()) AS t, typeof(get_user_role()) AS r"',
                            returns="{type: object}"),
    "tools/binding.yml": tool("binding", f'code: "{BINDING}"', returns="{type: object}"),
    "tools/load_docs.yml": tool(
        "load_docs",
        'code: "CREATE OR REPLACE TABLE docs AS SELECT CASE WHEN i < 1000000 THEN \'alice\' ELSE \'bob\' END AS owner, '
        'i FROM range(2200000) t(i); SELECT count(*) FROM docs"',
        returns="{type: integer}",
    ),
    "tools/my_docs.yml": tool(
        "my_docs", 'code: "SELECT count(*) AS n, min(owner) AS lo, max(owner) AS hi FROM docs '
                   'WHERE owner = get_username()"', returns="{type: object}"),
    "tools/make_view.yml": tool(
        "make_view", 'code: "CREATE OR REPLACE VIEW mine AS SELECT i FROM docs WHERE owner = get_username(); '
                     'SELECT 1"', returns="{type: integer}"),
    "tools/count_mine.yml": tool("count_mine", 'code: "SELECT count(*) FROM mine"', returns="{type: integer}"),
    "tools/py_whoami.yml": python_tool("py_whoami", "who.py", returns="{type: object}"),
    "tools/py_lazy.yml": python_tool("py_lazy", "who.py"),
    "tools/py_raw.yml": python_tool("py_raw", "who.py", returns="{type: object}"),
    "tools/py_raw_view.yml": python_tool("py_raw_view", "who.py", returns="{type: integer}"),
    "python/who.py": """
        from mxcp.runtime import db

        BINDING = "SELECT getvariable('mxcp_user') AS variable, current_setting('search_path') AS path"

        def py_whoami():
            return db.execute("SELECT get_username() AS u").fetchone()

        def py_lazy():
            before = db.execute(BINDING).fetchone()
            user = db.execute("SELECT get_username() AS u").fetchone()["u"]
            after = db.execute(BINDING).fetchone()
            return [before["path"], user, after["path"], after["variable"]]

        def py_raw():
            row = db.connection.execute("SELECT get_username(), get_user_role()").fetchone()
            return {"u": row[0], "r": row[1]}

        def py_raw_view():
            db.connection.execute(
                "CREATE OR REPLACE VIEW raw_mine AS SELECT i FROM docs WHERE owner = get_username()")
            return 1
    """,
    "tools/count_raw_mine.yml": tool("count_raw_mine", 'code: "SELECT count(*) FROM raw_mine"',
                                     returns="{type: integer}"),
}


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p", FILES)


def test_each_function_returns_its_field(project):
    with started(project) as runtime:
        assert runtime.call("tool", "whoami", user=ALICE) == ALICE
        # A user without a role has the role "user"; unknown fields are NULL.
        assert runtime.call("tool", "whoami", user={"username": "bob"}) == {
            "username": "bob", "email": None, "provider": None, "external_token": None, "user_id": None,
            "role": "user"}


def test_anonymous_caller_gets_null_from_all_six_as_varchar(project):
    with started(project) as runtime:
        assert runtime.call("tool", "whoami") == dict.fromkeys(ALICE)
        assert runtime.call("tool", "whoami", user={"username": "eve", "role": "anonymous"}) == dict.fromkeys(ALICE)
        assert runtime.call("tool", "types") == {"t": "VARCHAR", "r": "VARCHAR"}
        assert runtime.call("tool", "types", user=ALICE) == {"t": "VARCHAR", "r": "VARCHAR"}


def test_concurrent_callers_each_scan_only_their_own_rows(project):
    """Two users at once, each scanning 2.2M rows on DuckDB's threads: exact counts, never the other's rows."""
    with started(project) as runtime:
        assert runtime.call("tool", "load_docs") == ROWS_ALICE + ROWS_BOB

        async def both() -> list:
            calls = [runtime.call_async("tool", "my_docs", user={"username": name})
                     for name in ("alice", "bob") * 3]
            return await asyncio.gather(*calls)

        results = asyncio.run(both())
        assert results == [
            {"n": ROWS_ALICE, "lo": "alice", "hi": "alice"}, {"n": ROWS_BOB, "lo": "bob", "hi": "bob"}] * 3
        assert runtime.call("tool", "my_docs") == {"n": 0, "lo": None, "hi": None}


def test_python_endpoint_db_execute(project):
    with started(project) as runtime:
        assert runtime.call("tool", "py_whoami", user={"username": "carol"}) == {"u": "carol"}
        assert runtime.call("tool", "py_whoami") == {"u": None}
        # db.connection: SQL nobody can inspect, bound as soon as it is taken.
        assert runtime.call("tool", "py_raw", user={"username": "dan"}) == {"u": "dan", "r": "user"}
        assert runtime.call("tool", "py_raw") == {"u": None, "r": None}


def test_a_call_binds_only_when_its_sql_needs_it_and_once(project):
    with started(project) as runtime:
        # SQL that never mentions the functions: the cursor is left as DuckDB made it (no cost paid).
        assert runtime.call("tool", "binding", user={"username": "alice"}) == {"variable": None, "path": ""}
        # Bound at the first statement that mentions them, then kept for the rest of the call.
        before, user, after, variable = runtime.call("tool", "py_lazy", user={"username": "alice"})
        assert (before, user) == ("", "alice")
        assert after.endswith(",mxcp_identity.main")
        assert variable == [None, "alice", None, None, "user", None]
        # Anonymous: the functions resolve; the variable stays unset (NULL for all six).
        before, user, after, variable = runtime.call("tool", "py_lazy")
        assert (before, user, variable) == ("", None, None)
        # At most once per call, however many statements mention the functions.
        identity = runtime.database.identity
        binds = []
        original = identity.bind
        identity.bind = lambda cursor, who: (binds.append(who), original(cursor, who))
        runtime.call("tool", "whoami", user=ALICE)
        runtime.call("tool", "py_lazy", user={"username": "alice"})
        runtime.call("tool", "binding", user={"username": "alice"})
        assert [who.username for who in binds] == ["alice", "alice"]
        assert after.endswith(",mxcp_identity.main")


def test_a_view_using_the_functions_filters_later_calls_that_never_name_them(project):
    with started(project) as runtime:
        runtime.call("tool", "load_docs")
        runtime.call("tool", "make_view", user={"username": "alice"})
        assert runtime.call("tool", "count_mine", user={"username": "alice"}) == ROWS_ALICE
        assert runtime.call("tool", "count_mine", user={"username": "bob"}) == ROWS_BOB
        assert runtime.call("tool", "count_mine") == 0
        # Once the database holds such a view, every call binds.
        assert runtime.call("tool", "binding", user={"username": "bob"})["variable"][1] == "bob"
    # A later open finds the view in the file and binds from the first call.
    with started(project) as runtime:
        assert runtime.call("tool", "count_mine", user={"username": "bob"}) == ROWS_BOB
        assert runtime.call("tool", "count_mine") == 0


def test_a_view_made_through_the_raw_connection_works_in_the_next_call(project):
    with started(project) as runtime:
        runtime.call("tool", "load_docs")
        assert runtime.call("tool", "py_raw_view", user={"username": "alice"}) == 1
        # run_sql never saw the CREATE VIEW: the first call that meets it unbound binds and runs it again.
        assert runtime.call("tool", "count_raw_mine", user={"username": "bob"}) == ROWS_BOB
        assert runtime.call("tool", "count_raw_mine", user={"username": "alice"}) == ROWS_ALICE


def test_new_tables_still_land_in_the_project_database(project):
    with started(project) as runtime:
        runtime.call("tool", "load_docs")
        runtime.call("tool", "make_view", user={"username": "alice"})
        with runtime.cursor() as cursor:
            catalogs = {row[0] for row in cursor.execute(
                "SELECT database_name FROM duckdb_views() WHERE view_name = 'mine' UNION ALL "
                "SELECT database_name FROM duckdb_tables() WHERE table_name = 'docs'").fetchall()}
            assert catalogs == {cursor.execute("SELECT current_database()").fetchone()[0]}
    # Nothing of mxcp's is left in the user's file.
    conn = duckdb.connect(str(project / "data" / "db-default.duckdb"), read_only=True)
    try:
        assert conn.execute("SELECT count(*) FROM duckdb_functions() WHERE function_type = 'macro' "
                            "AND NOT internal").fetchone()[0] == 0
    finally:
        conn.close()


def test_validate_prepares_sql_using_the_functions(project):
    problems = [(p.endpoint, p.message) for p in validate_project(open_project(project))]
    assert not [p for p in problems if p[0] in {"whoami", "types", "binding"}], problems
    # `docs` does not exist yet (a warning); the functions themselves resolve.
    assert not [p for p in problems if "get_user" in p[1]], problems


def test_a_read_only_database_has_them_too(project):
    with started(project) as runtime:
        runtime.call("tool", "load_docs")
    with started(project, readonly=True) as runtime:
        assert runtime.call("tool", "whoami", user=ALICE) == ALICE
        assert runtime.call("tool", "my_docs", user={"username": "alice"})["n"] == ROWS_ALICE


def test_mxcp_query_runs_as_the_given_user(run_mxcp, project):
    def query(*args: str) -> list:
        completed = run_mxcp("query", *args, "--json-output", cwd=project)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        return json.loads(completed.stdout)["result"]

    assert query("-u", '{"username": "bob"}', "SELECT get_username() AS u, get_user_role() AS r") == [
        {"u": "bob", "r": "user"}]
    assert query("SELECT get_username() AS u, get_user_role() AS r") == [{"u": None, "r": None}]
    (project / "me.json").write_text('{"username": "carol", "email": "c@example.com"}', encoding="utf-8")
    assert query("--user-context", "@me.json", "SELECT get_user_email() AS e") == [{"e": "c@example.com"}]
    completed = run_mxcp("query", "-u", "[1]", "SELECT 1", "--json-output", cwd=project)
    assert completed.returncode == 1 and "JSON object" in json.loads(completed.stdout)["error"]


SQL_TOOLS_SITE = "mxcp: 1\nproject: demo\nprofile: default\nsql_tools: {enabled: true}\n"


@pytest.mark.parametrize("readonly", [False, True], ids=["snapshot", "read-only file"])
def test_execute_sql_query_sees_the_callers_identity(make_project, tmp_path, readonly):
    root = make_project(tmp_path / "p", {**FILES, "mxcp-site.yml": SQL_TOOLS_SITE})
    with started(root) as runtime:
        runtime.call("tool", "load_docs")
        runtime.call("tool", "make_view", user={"username": "alice"})
    # A fresh runtime: its first call is the sandbox's (its snapshot copies the view).
    with started(root, readonly=readonly) as runtime:
        sql = f"{ALL_SIX}, (SELECT count(*) FROM mine) AS mine"
        assert runtime.call("tool", "execute_sql_query", {"sql": sql}, user=ALICE) == [
            {**ALICE, "mine": ROWS_ALICE}]
        assert runtime.call("tool", "execute_sql_query", {"sql": sql}, user={"username": "bob"})[0]["mine"] == ROWS_BOB
        assert runtime.call("tool", "execute_sql_query", {"sql": sql}) == [{**dict.fromkeys(ALICE), "mine": 0}]


def test_macros_and_column_defaults_using_them_work_after_a_restart(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": SQL_TOOLS_SITE,
        "tools/define.yml": tool(
            "define", 'code: "CREATE OR REPLACE MACRO my_owner() AS get_username(); '
                      'CREATE OR REPLACE TABLE notes(owner VARCHAR DEFAULT get_username(), t VARCHAR); SELECT 1"',
            returns="{type: integer}"),
        "tools/add_note.yml": tool(
            "add_note", 'code: "INSERT INTO notes(t) VALUES ($t); SELECT owner FROM notes WHERE t = $t"',
            parameters="[{name: t, type: string}]", returns="{type: string}"),
        "tools/owner.yml": tool("owner", 'code: "SELECT my_owner()"', returns="{type: string}"),
    })
    with started(root) as runtime:
        runtime.call("tool", "define", user={"username": "zed"})
    # Neither call names a function: the open found the macro and the column default in the file.
    with started(root) as runtime:
        assert runtime.call("tool", "add_note", {"t": "x"}, user={"username": "amy"}) == "amy"
        assert runtime.call("tool", "owner", user={"username": "bo"}) == "bo"
        # The sandbox's snapshot copies both (on a bound cursor), and they answer for its caller.
        assert runtime.call("tool", "execute_sql_query", {"sql": "SELECT owner, my_owner() AS me FROM notes"},
                            user={"username": "kim"}) == [{"owner": "amy", "me": "kim"}]


# -- a plugin's own function of the same name ------------------------------------------------------------
class LegacyIdentityPlugin:
    """As projects ported from the original MXCP may have: a Python UDF named get_username."""

    @hookimpl
    def register_functions(self, conn, project):
        conn.create_function("get_username", lambda: "from-the-plugin", [], "VARCHAR")


def test_a_plugins_function_of_the_same_name_wins_everywhere(project, caplog):
    project_ = open_project(project, extra_plugins=[("legacy_identity", LegacyIdentityPlugin())])
    runtime = Runtime(project_)
    runtime.start()
    try:
        # The plugin's function, bound cursor or not; the other five are mxcp's.
        assert runtime.call("tool", "py_whoami", user={"username": "alice"}) == {"u": "from-the-plugin"}
        assert runtime.call("tool", "py_raw", user={"username": "alice"}) == {"u": "from-the-plugin", "r": "user"}
        with runtime.cursor() as cursor:
            assert cursor.execute("SELECT get_username()").fetchone()[0] == "from-the-plugin"
    finally:
        runtime.stop()
    assert "get_username() is already registered" in caplog.text
