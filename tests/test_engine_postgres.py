"""PostgreSQL as a profile's SQL engine (mxcp_plugins/engine_postgres.py), against a real PostgreSQL 15 server.

The scanner is tested alone; everything else goes through a project with a `pg` profile on a fresh database.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from executor_helpers import started

from mxcp_core import (
    ConfigError,
    ExecutionError,
    MxcpError,
    UserContext,
    hookimpl,
    to_jsonable,
)
from mxcp_core.project import open_project
from mxcp_core.validation import validate_project
from mxcp_plugins.engine_postgres import bind, scan

SITE = """\
mxcp: 1
project: demo
profile: {profile}
profiles:
  default: {{}}
  pg:
    sql: {{engine: postgres, secret: pg_main}}
{extra}"""


def user_config_text(parameters: dict[str, Any], *, secret_type: str = "postgres", name: str = "pg_main") -> str:
    return ("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      pg:\n        secrets:\n"
            f"          - name: {name}\n            type: {secret_type}\n"
            f"            parameters: {json.dumps(parameters)}\n")


def tool_yaml(name: str, sql: str, *, parameters: str = "[]", returns: str = "{type: array}",
              extra: str = "") -> str:
    return (f"mxcp: 1\ntool:\n  name: {name}\n  parameters: {parameters}\n  return: {returns}\n"
            f"  source: {{code: {json.dumps(sql)}}}\n{extra}")


@pytest.fixture
def pg_project(make_project, user_config, tmp_path, postgres, pg_database):
    """`pg_project(files, profile="pg", extra_site="")`: a project whose `pg` profile runs on a fresh database."""

    def make(files: dict[str, str] | None = None, *, profile: str = "pg", extra_site: str = "",
             parameters: dict[str, Any] | None = None) -> Path:
        root = make_project(tmp_path / "p", {"mxcp-site.yml": SITE.format(profile=profile, extra=extra_site),
                                             **(files or {})})
        user_config(user_config_text(parameters or postgres.parameters(pg_database)))
        return root

    return make


def as_role(postgres: Any, database: str, role: str) -> dict[str, Any]:
    """A login role that is neither superuser nor table owner (RLS applies to it), and its secret's parameters."""
    postgres.sql(f"DO $$ BEGIN CREATE ROLE {role} LOGIN PASSWORD 'role-pw'; EXCEPTION WHEN duplicate_object "
                 "THEN NULL; END $$", database)
    postgres.sql(f"GRANT ALL ON SCHEMA public TO {role}", database)
    return {**postgres.parameters(database), "user": role, "password": "role-pw"}


# -- the scanner: no server -------------------------------------------------------------------------------------
def test_scanner_finds_parameters_only_in_code():
    sql = """SELECT $a, '$b it''s', E'$c \\' $d', "$e""x", $$ $f ; $$, $tag$ $g $tag$, x::int, $h::text
             -- $i ;
             /* $j /* nested $k */ ; $l */ FROM t WHERE y = $m AND z LIKE '%x' AND a$b = 1"""
    (statement,) = scan(sql)
    assert statement.names == ("a", "h", "m")
    assert "%(a)s" in statement.query and "%(h)s::text" in statement.query and "%(m)s" in statement.query
    assert "'%%x'" in statement.query  # a literal % doubled for psycopg
    assert "$1" in statement.numbered and "$2::text" in statement.numbered and "$3 AND" in statement.numbered
    assert "'$b it''s'" in statement.query and "$tag$ $g $tag$" in statement.query and "a$b" in statement.query


def test_scanner_splits_on_semicolons_outside_strings_and_bodies():
    sql = ("CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; "
           "INSERT INTO t VALUES ($1, ';'); ; -- only a comment ;\n SELECT * FROM t WHERE id = $2;")
    statements = scan(sql)
    assert [s.names for s in statements] == [(), ("1",), ("2",)]
    assert statements[0].text.endswith("LANGUAGE sql")
    assert statements[1].query == "INSERT INTO t VALUES (%(1)s, ';')"
    assert [s.streamable for s in statements] == [False, False, True]
    assert not scan("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x")[0].streamable
    assert scan("  -- nothing\n ; /* at all */") == ()


def test_scanner_keeps_comment_and_statement_marks_inside_quotes():
    sql = ("SELECT '--' AS a, '/*' AS b, \"x;y\" AS c, e'\\'' AS d, $id::int[] AS e FROM \"t;\" -- $no\n"
           "WHERE name = $name; SELECT 2")
    first, second = scan(sql)
    assert first.names == ("id", "name") and second.text == "SELECT 2"
    assert first.numbered.endswith("WHERE name = $2") and "$1::int[]" in first.numbered


@pytest.mark.parametrize("sql", ["SELECT 'open", 'SELECT "open', "SELECT $$ open", "SELECT /* open /* */",
                                 "SELECT E'\\'"])
def test_scanner_refuses_unterminated_text(sql):
    with pytest.raises(ExecutionError, match="unterminated"):
        scan(sql)


def test_scanner_refuses_parameter_zero():
    # Parameters count from $1; `$0` once bound the last value given.
    with pytest.raises(ExecutionError, match=r"\$0 is not a parameter"):
        scan("SELECT $0")
    assert scan("SELECT $01")[0].names == ("1",)
    assert scan("SELECT $²")[0].names == ()  # not a parameter (it was a ValueError), left to the server to refuse


def test_scanner_marks_transaction_control():
    controls = [s.control for s in scan(
        "BEGIN; start transaction read write; COMMIT AND CHAIN; end; Rollback; ABORT; PREPARE TRANSACTION 'x'; "
        "ROLLBACK TO SAVEPOINT s; rollback work to s; SAVEPOINT s; RELEASE s; PREPARE q AS SELECT 1; "
        "DO $$ BEGIN COMMIT; END $$; SELECT 'commit'; /* commit */ SELECT 1")]
    assert controls == ["BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE TRANSACTION",
                        "", "", "", "", "", "", "", ""]


USERNAME = "NULLIF(current_setting('mxcp.username', true), '')"


def test_scanner_rewrites_the_duckdb_identity_functions_written_as_code():
    sql = ("SELECT get_username(), GET_User_Email (  ) AS e, get_user_id\n() AS i, get_user_role()::text AS r, "
           "x.get_username() AS own, x . /* c */ get_username() AS own2, \"get_username\"() AS quoted, "
           "'get_username()' AS s, $$get_user_id()$$ AS body, a$get_username() AS dollar_name, "
           "get_usernamex() AS longer, get_username($who) AS with_argument -- get_user_provider()\n"
           "/* get_user_role() */ FROM t WHERE owner = get_username() AND p = get_user_provider() AND x LIKE '%a'")
    (statement,) = scan(sql)
    assert statement.names == ("who",)
    assert statement.numbered == (
        f"SELECT {USERNAME}, NULLIF(current_setting('mxcp.email', true), '') AS e, "
        "NULLIF(current_setting('mxcp.user_id', true), '') AS i, "
        "NULLIF(current_setting('mxcp.role', true), '')::text AS r, "
        "x.get_username() AS own, x . /* c */ get_username() AS own2, \"get_username\"() AS quoted, "
        "'get_username()' AS s, $$get_user_id()$$ AS body, a$get_username() AS dollar_name, "
        "get_usernamex() AS longer, get_username($1) AS with_argument -- get_user_provider()\n"
        f"/* get_user_role() */ FROM t WHERE owner = {USERNAME} AND "
        "p = NULLIF(current_setting('mxcp.provider', true), '') AND x LIKE '%a'")
    # psycopg's text: the same rewrite, its placeholders, literal % doubled
    assert statement.query == statement.numbered.replace("$1", "%(who)s").replace("'%a'", "'%%a'")
    assert statement.text == sql  # as written: what validate and errors quote
    # Defining or dropping a function of that name is no call; the statement kinds stay as written.
    create, drop, default = scan("CREATE OR REPLACE FUNCTION get_username() RETURNS text LANGUAGE sql AS 'SELECT 1'; "
                                 "DROP FUNCTION IF EXISTS get_username(); "
                                 "CREATE TABLE n (owner text DEFAULT get_username())")
    assert "FUNCTION get_username()" in create.numbered and "EXISTS get_username()" in drop.numbered
    assert default.numbered == f"CREATE TABLE n (owner text DEFAULT {USERNAME})"
    assert scan("SELECT get_username() ; COMMIT")[1].control == "COMMIT"
    assert scan("select get_username()")[0].streamable


def test_scanner_refuses_the_external_token_function():
    for sql in ("SELECT 1;\nSELECT * FROM t WHERE token = GET_USER_EXTERNAL_TOKEN ()", "SELECT get_user_external_token()"):
        with pytest.raises(ExecutionError, match=r"get_user_external_token\(\) \(line \d\) is DuckDB-only") as caught:
            scan(sql)
        assert "statement logging" in str(caught.value)
    # Not code, or not ours: left alone.
    for sql in ("SELECT 'get_user_external_token()' -- get_user_external_token()",
                "SELECT vault.get_user_external_token(), \"get_user_external_token\"()"):
        assert scan(sql)[0].numbered == sql


def test_binding_follows_the_duckdb_rules():
    (named,) = scan("SELECT $a, $b, $a")
    assert bind(named, {"a": 1, "b": {"k": [1]}, "unused": 3})["a"] == 1
    with pytest.raises(ExecutionError, match=r"missing SQL parameter\(s\): \$b"):
        bind(named, {"a": 1})
    with pytest.raises(ExecutionError, match="by name"):
        bind(named, [1, 2])
    (positional,) = scan("SELECT $1, $2")
    assert bind(positional, [10, 20]) == {"1": 10, "2": 20}
    assert bind(positional, {"x": 10, "y": 20}) == {"1": 10, "2": 20}  # a dict's values in order
    with pytest.raises(ExecutionError, match=r"uses \$2 but only 1"):
        bind(positional, [10])


# -- the engine, through a real server ----------------------------------------------------------------------------
PEOPLE = {
    "tools/setup.yml": tool_yaml(
        "setup", "CREATE TABLE people (id int PRIMARY KEY, name text, age int); "
        "INSERT INTO people VALUES (1, 'Ada', 36), (2, 'Bob', 41); SELECT count(*) AS n FROM people",
        returns="{type: integer}"),
    "tools/person.yml": tool_yaml(
        "person", "SELECT id, name FROM people WHERE id = $id", parameters="[{name: id, type: integer}]",
        returns="{type: object}",
        extra="  tests:\n    - name: ada\n      arguments: [{key: id, value: 1}]\n"
              "      result: {id: 1, name: Ada}\n"),
    "tools/older.yml": tool_yaml(
        "older", "SELECT name FROM people WHERE age > $age ORDER BY id", parameters="[{name: age, type: integer}]",
        extra="  tests:\n    - name: over 40\n      arguments: [{key: age, value: 40}]\n"
              "      result: [{name: Bob}]\n"),
}


def test_calls_run_on_postgres_and_values_are_bound_never_formatted(pg_project, postgres, pg_database):
    root = pg_project({**PEOPLE, "tools/echo.yml": tool_yaml(
        "echo", "SELECT $text AS text, (SELECT count(*) FROM people) AS people, current_database() AS db",
        parameters="[{name: text, type: string}]", returns="{type: object}")})
    hostile = "x'; DROP TABLE people; --"
    with started(root) as runtime:
        assert runtime.database.name == "postgres"
        assert runtime.call("tool", "setup") == 2
        assert runtime.call("tool", "person", {"id": 2}) == {"id": 2, "name": "Bob"}
        assert runtime.call("tool", "echo", {"text": hostile}) == {"text": hostile, "people": 2, "db": pg_database}
    # The data is on the server (committed), the table still there.
    assert postgres.sql("SELECT count(*) FROM people", pg_database) == [(2,)]


def test_the_same_endpoints_pass_mxcp_test_on_duckdb_and_on_postgres(pg_project, run_mxcp, postgres, pg_database):
    root = pg_project(PEOPLE)
    postgres.sql("CREATE TABLE people (id int PRIMARY KEY, name text, age int); "
                 "INSERT INTO people VALUES (1, 'Ada', 36), (2, 'Bob', 41)", pg_database)
    # The DuckDB profile gets the same table in its own file first.
    setup = run_mxcp("run", "tool", "setup", "--profile", "default", cwd=root)
    assert setup.returncode == 0, setup.stderr
    for profile in ("default", "pg"):
        result = run_mxcp("test", "--profile", profile, "--json-output", cwd=root)
        assert result.returncode == 0, (profile, result.stdout, result.stderr)
        summary = json.loads(result.stdout)["result"]["summary"]
        assert summary["total"] == summary["passed"] == 2, (profile, summary)
    # A failing expectation fails on postgres too (the tests do run there).
    postgres.sql("UPDATE people SET name = 'Eve' WHERE id = 1", pg_database)
    failed = run_mxcp("test", "--profile", "pg", cwd=root)
    assert failed.returncode != 0


def test_portable_sql_gives_the_same_json_on_both_engines(pg_project, run_mxcp):
    root = pg_project({"tools/typed.yml": tool_yaml(
        "typed",
        "SELECT CAST('2024-01-02' AS DATE) AS d, CAST(12.5 AS DECIMAL(6,2)) AS price, CAST(3 AS BIGINT) AS n, "
        "'x' AS s, TRUE AS b, CAST('2024-01-02 03:04:05' AS TIMESTAMP) AS ts, CAST(0.25 AS DOUBLE PRECISION) AS f, "
        "CAST(NULL AS VARCHAR) AS missing, CAST($day AS DATE) + 1 AS next_day",
        parameters="[{name: day, type: string, format: date}]",
        returns="{type: object, properties: {d: {type: string, format: date}, price: {type: number}, "
                "n: {type: integer}, s: {type: string}, b: {type: boolean}, "
                "ts: {type: string, format: date-time}, f: {type: number}, next_day: {type: string, format: date}}}")})
    results = {}
    for profile in ("default", "pg"):
        run = run_mxcp("run", "tool", "typed", "-p", "day=2024-02-28", "--profile", profile, "--json-output",
                       cwd=root)
        assert run.returncode == 0, (profile, run.stdout, run.stderr)
        results[profile] = json.loads(run.stdout)["result"]
    assert results["pg"] == results["default"]
    assert results["pg"]["next_day"] == "2024-02-29" and results["pg"]["price"] == 12.5


def test_types_both_ways(pg_project):
    root = pg_project({"tools/types.yml": tool_yaml(
        "types",
        "SELECT $s::text AS s, $i::bigint AS i, $f::float8 AS f, $b::boolean AS b, "
        "$d::date AS d, $ts::timestamp AS ts, $t::time AS t, $amount::numeric AS amount, $tags::text[] AS tags, "
        "$doc::jsonb AS doc, '{\"k\": [1, 2]}'::json AS j, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, "
        "interval '1 day 2 hours' AS span, ARRAY[1, 2, 3] AS ints, 12.50::numeric(6,2) AS price",
        parameters="[{name: s, type: string}, {name: i, type: integer}, {name: f, type: number}, "
                   "{name: b, type: boolean}, {name: d, type: string, format: date}, "
                   "{name: ts, type: string, format: date-time}, {name: t, type: string, format: time}, "
                   "{name: amount, type: number}, {name: tags, type: array, items: {type: string}}, "
                   "{name: doc, type: object}]",
        returns="{type: object, properties: {s: {type: string}, i: {type: integer}, f: {type: number}, "
                "b: {type: boolean}, d: {type: string, format: date}, ts: {type: string, format: date-time}, "
                "t: {type: string, format: time}, amount: {type: number}, tags: {type: array}, "
                "doc: {type: object}, j: {type: object}, u: {type: string}, span: {type: string, format: duration}, "
                "ints: {type: array, items: {type: integer}}, price: {type: number}}}")})
    arguments = {"s": "héllo", "i": 2**40, "f": 1.5, "b": True, "d": "2024-02-29",
                 "ts": "2024-02-29T12:30:00", "t": "08:15:00", "amount": 3.25, "tags": ["a", "b"],
                 "doc": {"k": {"nested": [1, None]}}}
    with started(root) as runtime:
        with runtime.cursor() as cursor:  # the raw values, as the engine returns them
            row = cursor.run_sql("SELECT $d::date AS d, 12.50::numeric(6,2) AS price, "
                                 "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, interval '2 hours' AS span, "
                                 "$doc::jsonb AS doc, $n::text AS n",
                                 {"d": dt.date(2024, 1, 2), "doc": {"a": 1}, "n": None})[0]
            assert row == {"d": dt.date(2024, 1, 2), "price": decimal.Decimal("12.50"),
                           "u": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "span": dt.timedelta(hours=2),
                           "doc": {"a": 1}, "n": None}
        result = to_jsonable(runtime.call("tool", "types", arguments))  # the return type validated it
    assert result == {
        "s": "héllo", "i": 2**40, "f": 1.5, "b": True, "d": "2024-02-29", "ts": "2024-02-29T12:30:00",
        "t": "08:15:00", "amount": 3.25, "tags": ["a", "b"], "doc": {"k": {"nested": [1, None]}},
        "j": {"k": [1, 2]}, "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "span": "P1DT2H", "ints": [1, 2, 3],
        "price": 12.5}


def test_concurrent_calls_each_get_a_pooled_connection(pg_project):
    root = pg_project({"tools/nap.yml": tool_yaml(
        "nap", "SELECT pg_sleep(0.5), pg_backend_pid() AS pid, current_setting('mxcp.username', true) AS who",
        returns="{type: object}")})
    with started(root) as runtime:
        results: dict[str, Any] = {}

        def call(name: str) -> None:
            results[name] = runtime.call("tool", "nap", user=UserContext(username=name))

        threads = [threading.Thread(target=call, args=(f"user{i}",)) for i in range(6)]
        begun = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        elapsed = time.monotonic() - begun
    assert {name: result["who"] for name, result in results.items()} == {f"user{i}": f"user{i}" for i in range(6)}
    assert len({result["pid"] for result in results.values()}) == 6 and elapsed < 2.5  # in parallel, not in turn


def test_the_caller_is_in_transaction_local_settings(pg_project, run_mxcp):
    root = pg_project({"tools/whoami.yml": tool_yaml(
        "whoami", "SELECT current_setting('mxcp.username', true) AS username, "
        "current_setting('mxcp.user_id', true) AS user_id, current_setting('mxcp.role', true) AS role, "
        "current_setting('mxcp.email', true) AS email", returns="{type: object}")})
    with started(root) as runtime:
        alice = UserContext(user_id="u1", username="alice", role="admin", email="a@example.com")
        assert runtime.call("tool", "whoami", user=alice) == {
            "username": "alice", "user_id": "u1", "role": "admin", "email": "a@example.com"}
        anonymous = runtime.call("tool", "whoami", user=UserContext.anonymous())
        assert anonymous == {"username": "", "user_id": "", "role": "", "email": ""}
        # SET LOCAL: nothing of alice is left on the pooled connection for the next call
        assert runtime.call("tool", "whoami", user=UserContext(username="bob"))["username"] == "bob"
        with runtime.cursor() as cursor:
            assert cursor.run_sql("SELECT current_setting('mxcp.username', true) AS u")[0]["u"] == ""
    cli = run_mxcp("run", "tool", "whoami", "--user-context", '{"username": "carol", "role": "user"}',
                   "--json-output", cwd=root)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["result"]["username"] == "carol"


def test_row_level_security_filters_per_caller(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE notes (owner text, body text); "
                 "INSERT INTO notes VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1'); "
                 "ALTER TABLE notes ENABLE ROW LEVEL SECURITY; "
                 "CREATE POLICY own_notes ON notes USING (owner = current_setting('mxcp.username', true))",
                 pg_database)
    parameters = as_role(postgres, pg_database, "mxcp_app")
    postgres.sql("GRANT SELECT ON notes TO mxcp_app", pg_database)
    root = pg_project({"tools/notes.yml": tool_yaml("notes", "SELECT body FROM notes ORDER BY body")},
                      parameters=parameters)
    with started(root) as runtime:
        assert runtime.call("tool", "notes", user=UserContext(username="alice")) == [{"body": "a1"}, {"body": "a2"}]
        assert runtime.call("tool", "notes", user=UserContext(username="bob")) == [{"body": "b1"}]
        assert runtime.call("tool", "notes", user=UserContext.anonymous()) == []


NOTES_SQL = ("CREATE TABLE notes (owner VARCHAR, body VARCHAR); "
             "INSERT INTO notes VALUES ('alice', 'a1'), ('alice', 'a2'), ('bob', 'b1')")
MY_NOTES = {"tools/my_notes.yml": tool_yaml(
    "my_notes", "SELECT body FROM notes WHERE owner = get_username() ORDER BY body",
    extra="  tests:\n"
          "    - {name: alice, user_context: {username: alice}, result: [{body: a1}, {body: a2}]}\n"
          "    - {name: bob, user_context: {username: bob}, result: [{body: b1}]}\n"
          "    - {name: anonymous, result_length: 0}\n")}


def test_the_identity_functions_read_the_caller_on_postgres(pg_project, postgres, pg_database):
    postgres.sql("CREATE SCHEMA mine; CREATE FUNCTION mine.get_username() RETURNS text LANGUAGE sql "
                 "AS $$ SELECT 'my own' $$", pg_database)
    root = pg_project({"tools/who.yml": tool_yaml(
        "who", "SELECT get_username() AS username, get_user_email() AS email, get_user_id() AS user_id, "
        "get_user_role() AS role, Get_User_Provider () AS provider, mine.get_username() AS own",
        returns="{type: object}")})
    alice = UserContext(user_id="u1", username="alice", email="a@example.com", role="admin", provider="github",
                        external_token="upstream-secret")
    with started(root) as runtime:
        assert runtime.call("tool", "who", user=alice) == {
            "username": "alice", "email": "a@example.com", "user_id": "u1", "role": "admin", "provider": "github",
            "own": "my own"}
        # NULL for the anonymous caller, as on DuckDB; a field the caller lacks is NULL too
        assert runtime.call("tool", "who", user=UserContext.anonymous()) == {
            "username": None, "email": None, "user_id": None, "role": None, "provider": None, "own": "my own"}
        assert runtime.call("tool", "who", user=UserContext(username="bob"))["email"] is None
        with runtime.cursor() as cursor:
            # a column default reads the caller of the call that inserts
            cursor.run_sql("CREATE TABLE log (who text DEFAULT get_username(), what text); "
                           "CREATE VIEW mine_only AS SELECT what FROM log WHERE who = get_username()")
        with runtime.database.cursor() as cursor:
            cursor.run_sql("INSERT INTO log (what) VALUES ('anonymous')")
        db = runtime.database
        cursor = db.acquire(alice)
        try:
            cursor.run_sql("INSERT INTO log (what) VALUES ($what)", {"what": "x%"})
            assert cursor.execute("SELECT get_username() || '%'").fetchone() == ("alice%",)
            # the view stored the rewritten expression: it reads the caller of each call
            assert cursor.run_sql("SELECT what FROM mine_only") == [{"what": "x%"}]
        finally:
            db.release(cursor)
        with pytest.raises(ExecutionError, match="DuckDB-only"), runtime.cursor() as cursor:
            cursor.run_sql("SELECT get_user_external_token()")
    assert postgres.sql("SELECT who, what FROM log ORDER BY what", pg_database) == [
        (None, "anonymous"), ("alice", "x%")]


def test_an_endpoint_filtering_by_get_username_passes_on_duckdb_and_on_postgres(pg_project, run_mxcp, postgres,
                                                                               pg_database):
    root = pg_project(MY_NOTES)
    postgres.sql(NOTES_SQL, pg_database)
    setup = run_mxcp("query", NOTES_SQL, "--profile", "default", cwd=root)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    for profile in ("default", "pg"):
        result = run_mxcp("test", "--profile", profile, "--json-output", cwd=root)
        assert result.returncode == 0, (profile, result.stdout, result.stderr)
        summary = json.loads(result.stdout)["result"]["summary"]
        assert summary["total"] == summary["passed"] == 3, (profile, summary)
        anonymous = run_mxcp("run", "tool", "my_notes", "--profile", profile, "--json-output", cwd=root)
        assert anonymous.returncode == 0 and json.loads(anonymous.stdout)["result"] == [], (profile, anonymous.stdout)
        bob = run_mxcp("run", "tool", "my_notes", "-u", '{"username": "bob"}', "--profile", profile,
                       "--json-output", cwd=root)
        assert json.loads(bob.stdout)["result"] == [{"body": "b1"}], (profile, bob.stdout, bob.stderr)
    valid = run_mxcp("validate", "--profile", "pg", cwd=root)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    # The external token is refused by validate on postgres (and DuckDB still takes it).
    (root / "tools" / "token.yml").write_text(tool_yaml(
        "token", "SELECT body FROM notes WHERE get_user_external_token() IS NOT NULL"), encoding="utf-8")
    problems = {p.endpoint: p.message for p in validate_project(open_project(root)) if p.severity == "error"}
    assert set(problems) == {"token"} and "get_user_external_token() (line 1) is DuckDB-only" in problems["token"]
    refused = run_mxcp("validate", "--profile", "pg", cwd=root)
    assert refused.returncode != 0 and "get_user_external_token() (line 1) is DuckDB-only" in (
        refused.stdout + refused.stderr)
    assert run_mxcp("validate", "--profile", "default", cwd=root).returncode == 0


def test_a_timeout_cancels_the_query_on_the_server(pg_project, postgres, pg_database):
    root = pg_project({"tools/slow.yml": tool_yaml(
        "slow", "SELECT pg_sleep(30) AS slept, 'mxcp-slow-marker' AS marker", returns="{type: object}",
        extra="  timeout: 1\n")})
    with started(root) as runtime:
        begun = time.monotonic()
        with pytest.raises(MxcpError):
            anyio.run(lambda: runtime.call_async("tool", "slow", {}))
        assert time.monotonic() - begun < 8
        deadline = time.monotonic() + 5
        while postgres.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                           "AND query LIKE '%mxcp-slow-marker%' AND pid <> pg_backend_pid()") != [(0,)]:
            assert time.monotonic() < deadline, "the query still runs on the server"
            time.sleep(0.1)
        # The pooled connection serves the next call.
        with runtime.cursor() as cursor:
            assert cursor.run_sql("SELECT 1 AS one") == [{"one": 1}]


def test_interrupt_cancels_the_running_statement_from_another_thread(pg_project):
    root = pg_project()
    with started(root) as runtime, runtime.cursor() as cursor:
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                cursor.run_sql("SELECT pg_sleep(30)")
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=run)
        begun = time.monotonic()
        worker.start()
        time.sleep(0.5)
        cursor.interrupt()
        worker.join(10)
        assert not worker.is_alive() and time.monotonic() - begun < 8
        assert isinstance(outcome[0], ExecutionError) and str(outcome[0]) == "query interrupted"


def test_positional_values_need_placeholders(pg_project):
    with started(pg_project()) as runtime, runtime.cursor() as cursor:
        assert cursor.run_sql("SELECT $1::int + $2::int AS n", [1, 2]) == [{"n": 3}]
        assert cursor.execute("SELECT $1::text || '%'", ["50"]).fetchone() == ("50%",)
        with pytest.raises(ExecutionError, match="no \\$1 or \\$name placeholder"):
            cursor.execute("SELECT %s", [1])


def test_validate_prepares_statements_on_the_server(pg_project, run_mxcp, postgres, pg_database):
    postgres.sql("CREATE TABLE people (id int, name text)", pg_database)
    root = pg_project({
        "tools/good.yml": tool_yaml("good", "SELECT name FROM people WHERE id = $id",
                                    parameters="[{name: id, type: integer}]"),
        "tools/no_table.yml": tool_yaml("no_table", "SELECT * FROM no_such_table"),
        "tools/no_column.yml": tool_yaml("no_column", "SELECT nope FROM people"),
        "tools/untyped.yml": tool_yaml("untyped", "SELECT $text AS text, $n + 1 AS next",
                                       parameters="[{name: text, type: string}, {name: n, type: integer}]"),
        "tools/setup.yml": tool_yaml("setup", "CREATE TABLE IF NOT EXISTS extra (id int); INSERT INTO extra VALUES (1)"),
    })
    problems = {p.endpoint: p for p in validate_project(open_project(root)) if p.severity == "error"}
    assert set(problems) == {"no_table", "no_column"}
    assert 'SQL does not prepare: relation "no_such_table" does not exist' in problems["no_table"].message
    assert 'column "nope" does not exist' in problems["no_column"].message
    cli = run_mxcp("validate", cwd=root)
    assert cli.returncode != 0 and "no_such_table" in cli.stdout + cli.stderr


def test_mxcp_query_runs_on_postgres_with_a_row_limit(pg_project, run_mxcp):
    root = pg_project()
    result = run_mxcp("query", "SELECT g AS n FROM generate_series(1, 25) g WHERE g > $min", "-p", "min=5",
                      "--limit", "3", "--json-output", cwd=root)
    assert result.returncode == 0, result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["result"] == [{"n": 6}, {"n": 7}, {"n": 8}]
    assert envelope["truncated"] is True and envelope["rows_omitted"] == 17


def test_python_endpoints_reach_postgres_through_db(pg_project, pg_database):
    root = pg_project({
        "python/pg.py": """\
            from mxcp.runtime import db

            def via_db(name: str) -> dict:
                db.execute("CREATE TABLE IF NOT EXISTS kv (k text, v jsonb)")
                db.execute("INSERT INTO kv VALUES ($k, $v)", {"k": name, "v": {"n": 1}})
                rows = db.execute("SELECT k, v, current_database() AS db FROM kv WHERE k = $k", {"k": name})
                return rows.fetchone()

            def via_connection() -> dict:
                cursor = db.connection.execute("SELECT count(*), current_setting('mxcp.username', true) FROM kv")
                count, username = cursor.fetchone()
                names = [d.name for d in cursor.description]
                return {"count": count, "username": username, "columns": len(names)}
            """,
        "tools/via_db.yml": "mxcp: 1\ntool:\n  name: via_db\n  language: python\n"
                            "  parameters: [{name: name, type: string}]\n  return: {type: object}\n"
                            "  source: {file: ../python/pg.py}\n",
        "tools/via_connection.yml": "mxcp: 1\ntool:\n  name: via_connection\n  language: python\n"
                                    "  return: {type: object}\n  source: {file: ../python/pg.py}\n",
    })
    with started(root) as runtime:
        assert runtime.call("tool", "via_db", {"name": "x'--"}) == {"k": "x'--", "v": {"n": 1}, "db": pg_database}
        assert runtime.call("tool", "via_connection", user=UserContext(username="dora")) == {
            "count": 1, "username": "dora", "columns": 2}


def test_a_failed_call_rolls_back_and_sql_errors_are_one_line(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE t (id int PRIMARY KEY)", pg_database)
    root = pg_project({"tools/add_twice.yml": tool_yaml(
        "add_twice", "INSERT INTO t VALUES ($id); INSERT INTO t VALUES ($id); SELECT count(*) FROM t",
        parameters="[{name: id, type: integer}]", returns="{type: integer}")})
    with started(root) as runtime, pytest.raises(ExecutionError) as caught:
        runtime.call("tool", "add_twice", {"id": 1})
    assert str(caught.value).startswith("SQL error: duplicate key value violates unique constraint")
    assert "\n" not in str(caught.value)
    assert postgres.sql("SELECT count(*) FROM t", pg_database) == [(0,)]  # the first INSERT was rolled back


def test_a_call_leaves_no_session_state_to_the_next_caller(pg_project, postgres, pg_database):
    # A call may change its session (SET ROLE, a session-level SET, a temporary table): none of it may reach the
    # next caller on the same pooled connection.
    role = f"r_{pg_database}"
    postgres.sql(f"CREATE ROLE {role}", pg_database)
    root = pg_project({
        "tools/dirty.yml": tool_yaml(
            "dirty", f"SET ROLE {role}; SET search_path = nowhere; SELECT set_config('app.tenant', $tenant, false); "
            "CREATE TEMP TABLE scratch (x int); SELECT current_user AS u", parameters="[{name: tenant, type: string}]",
            returns="{type: object}"),
        "tools/clean.yml": tool_yaml(
            "clean", "SELECT current_user AS u, current_setting('search_path') AS path, "
            "coalesce(current_setting('app.tenant', true), '') AS tenant, "
            "to_regclass('pg_temp.scratch') IS NULL AS no_temp", returns="{type: object}"),
    })
    try:
        with started(root) as runtime:
            assert runtime.call("tool", "dirty", {"tenant": "acme"}) == {"u": role}
            for _ in range(3):
                assert runtime.call("tool", "clean", user=UserContext(username="bob")) == {
                    "u": postgres.user, "path": '"$user", public', "tenant": "", "no_temp": True}
    finally:
        postgres.sql(f"DROP ROLE {role}")


def test_transaction_control_is_refused_so_each_call_stays_one_transaction(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE t (id int)", pg_database)
    root = pg_project({
        # A COMMIT would end the transaction that carries the caller and the read-only mode.
        "tools/escape.yml": tool_yaml("escape", "COMMIT; SET TRANSACTION READ WRITE; INSERT INTO t VALUES (1)"),
        "tools/partial.yml": tool_yaml("partial", "INSERT INTO t VALUES (2); COMMIT; SELECT 1 / 0"),
        "tools/savepoints.yml": tool_yaml(
            "savepoints", "SAVEPOINT s; INSERT INTO t VALUES (3); ROLLBACK TO SAVEPOINT s; SELECT count(*) FROM t",
            returns="{type: integer}"),
    })
    with started(root, readonly=True) as runtime, pytest.raises(ExecutionError, match="COMMIT is not allowed"):
        runtime.call("tool", "escape")
    with started(root) as runtime:
        with pytest.raises(ExecutionError, match="COMMIT is not allowed"):
            runtime.call("tool", "partial")
        assert runtime.call("tool", "savepoints") == 0
        with runtime.cursor() as cursor:
            for sql in ("ROLLBACK", "end", "BEGIN ISOLATION LEVEL SERIALIZABLE", "start transaction"):
                with pytest.raises(ExecutionError, match="is not allowed"):
                    cursor.execute(sql)
    assert postgres.sql("SELECT count(*) FROM t", pg_database) == [(0,)]
    problems = {p.endpoint: p.message for p in validate_project(open_project(root)) if p.severity == "error"}
    assert set(problems) == {"escape", "partial"} and "COMMIT is not allowed" in problems["partial"]


def test_python_code_that_goes_on_after_a_failed_statement(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE t (id int)", pg_database)
    root = pg_project({
        "python/p.py": """\
            from mxcp.runtime import db

            def careless() -> int:
                try:
                    db.execute("SELECT * FROM missing")
                except Exception:
                    pass
                return db.execute("SELECT count(*) AS n FROM t").fetchone()["n"]

            def careful() -> int:
                db.execute("SAVEPOINT s")
                try:
                    db.execute("SELECT * FROM missing")
                    db.execute("RELEASE SAVEPOINT s")
                except Exception:
                    db.execute("ROLLBACK TO SAVEPOINT s")
                return db.execute("SELECT count(*) AS n FROM t").fetchone()["n"]
            """,
        **{f"tools/{name}.yml": f"mxcp: 1\ntool:\n  name: {name}\n  language: python\n  return: {{type: integer}}\n"
                                "  source: {file: ../python/p.py}\n" for name in ("careless", "careful")},
    })
    with started(root) as runtime:
        with pytest.raises(ExecutionError, match="transaction is aborted.*an earlier statement of this call failed"):
            runtime.call("tool", "careless")
        assert runtime.call("tool", "careful") == 0


def test_readonly_runs_read_only_transactions(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE t (id int)", pg_database)
    root = pg_project({"tools/write.yml": tool_yaml("write", "INSERT INTO t VALUES (1)")})
    with started(root, readonly=True) as runtime, pytest.raises(ExecutionError, match="read-only transaction"):
        runtime.call("tool", "write")


def test_reload_closes_and_reopens_the_pool(pg_project):
    root = pg_project({"tools/one.yml": tool_yaml("one", "SELECT 1 AS one", returns="{type: integer}")})
    with started(root) as runtime:
        assert runtime.call("tool", "one") == 1
        runtime.reload(description="test")
        runtime.wait_for_reloads()
        assert runtime.unavailable is None
        assert runtime.call("tool", "one") == 1


def test_a_config_reload_picks_up_a_rotated_password(pg_project, postgres, pg_database, user_config):
    parameters = as_role(postgres, pg_database, "rotating_app")
    root = pg_project({"tools/me.yml": tool_yaml("me", "SELECT current_user AS u", returns="{type: object}")},
                      parameters=parameters)
    try:
        with started(root) as runtime:
            assert runtime.call("tool", "me") == {"u": "rotating_app"}
            postgres.sql("ALTER ROLE rotating_app PASSWORD 'rotated-pw'")
            user_config(user_config_text({**parameters, "password": "rotated-pw"}))
            runtime.reload(description="rotation", config=True)
            runtime.wait_for_reloads()
            assert runtime.unavailable is None and runtime.config_problem is None
            # Sessions opened with the old password are gone: new ones must log in with the new one.
            postgres.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotating_app'")
            assert runtime.call("tool", "me") == {"u": "rotating_app"}
    finally:
        postgres.sql("ALTER ROLE rotating_app PASSWORD 'role-pw'")


def test_a_commit_that_fails_fails_the_call(pg_project, postgres, pg_database):
    postgres.sql("CREATE TABLE t (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)", pg_database)
    root = pg_project({"tools/twice.yml": tool_yaml(
        "twice", "INSERT INTO t VALUES (1), (1); SELECT count(*) FROM t", returns="{type: integer}")})
    with started(root) as runtime:
        with pytest.raises(ExecutionError, match="the transaction did not commit: duplicate key"):
            runtime.call("tool", "twice")
        with runtime.cursor() as cursor:  # the connection went back to the pool in a usable state
            assert cursor.run_sql("SELECT count(*) AS n FROM t") == [{"n": 0}]


def test_drift_snapshot_reads_the_postgres_tables(pg_project, run_mxcp, postgres, pg_database):
    postgres.sql("CREATE TABLE users (id integer, name text)", pg_database)
    root = pg_project({"tools/one.yml": tool_yaml("one", "SELECT 1 AS one", returns="{type: integer}")})
    snap = run_mxcp("drift-snapshot", cwd=root)
    assert snap.returncode == 0, snap.stdout + snap.stderr
    tables = json.loads((root / "drift" / "drift-pg.json").read_text())["tables"]
    assert tables == {"users": {"type": "BASE TABLE", "columns": {"id": "integer", "name": "text"}}}


def test_sql_spans_name_the_engine(pg_project):
    from mxcp_plugins.executor_sql import sql_span_attributes

    root = pg_project({"tools/one.yml": tool_yaml("one", "SELECT 1 AS one", returns="{type: integer}")})
    with started(root) as runtime:
        system = runtime.project.executors()["sql"]._system
    assert sql_span_attributes("SELECT 1", system)["db.system.name"] == "postgresql"


def test_serve_over_http_on_postgres(pg_project, user_config, postgres, pg_database):
    from server_helpers import http_server, run_http, text

    root = pg_project({"tools/whoami.yml": tool_yaml(
        "whoami", "SELECT current_database() AS db, $word AS word", parameters="[{name: word, type: string}]",
        returns="{type: object}")})

    async def call(client: Any) -> Any:
        return await client.call_tool("whoami", {"word": "it's"})

    with http_server(root) as (base, _):
        result = run_http(f"{base}/mcp", call)
    assert json.loads(text(result)) == {"db": pg_database, "word": "it's"}


# -- failing closed -------------------------------------------------------------------------------------------------
def start_error(root: Path, **options: Any) -> str:
    with pytest.raises(MxcpError) as caught, started(root, **options):
        pass
    return str(caught.value)


def test_a_disabled_engine_plugin_stops_the_start_naming_the_key(pg_project, run_mxcp, monkeypatch):
    root = pg_project({"tools/one.yml": tool_yaml("one", "SELECT 1 AS one", returns="{type: integer}")})
    result = run_mxcp("run", "tool", "one", cwd=root, env={"MXCP_DISABLE_PLUGINS": "engine_postgres"})
    assert result.returncode != 0
    assert "profiles.pg.sql.engine" in result.stderr + result.stdout


def test_missing_or_wrong_secret_and_unreachable_server(pg_project, user_config, postgres, pg_database,
                                                        monkeypatch):
    root = pg_project()
    user_config(user_config_text(postgres.parameters(pg_database), name="other"))
    assert "the secret 'pg_main' is not in the user config" in start_error(root)
    user_config(user_config_text(postgres.parameters(pg_database), secret_type="custom"))
    assert "has type 'custom'" in start_error(root)
    user_config(user_config_text({**postgres.parameters(pg_database), "password": "wrong-password-xyz"}))
    message = start_error(root)
    assert "cannot connect to PostgreSQL at mxcp_test@127.0.0.1" in message
    assert "password authentication failed" in message and "wrong-password-xyz" not in message
    monkeypatch.setenv("PG_TEST_PASSWORD", postgres.password)  # the documented `${VAR}` form works
    user_config(user_config_text({**postgres.parameters(pg_database), "password": "${PG_TEST_PASSWORD}"}))
    with started(root) as runtime, runtime.cursor() as cursor:
        assert cursor.run_sql("SELECT current_user AS u") == [{"u": postgres.user}]
    from server_helpers import free_port

    user_config(user_config_text({**postgres.parameters(pg_database), "port": free_port()}))
    assert "cannot connect to PostgreSQL" in start_error(root)


@pytest.mark.parametrize(("extra", "key"), [
    ("extensions: [httpfs]\n", "extensions"),
    ("sql_tools: {enabled: true}\n", "sql_tools.enabled"),
    ("plugin: [{name: util, module: util_plugin}]\n", "plugin"),
])
def test_duckdb_only_features_stop_a_postgres_start(pg_project, extra, key):
    root = pg_project(extra_site=extra)
    with pytest.raises(ConfigError) as caught, started(root):
        pass
    assert caught.value.key_path == key and "DuckDB-only" in str(caught.value)


def test_an_explicit_duckdb_path_stops_a_postgres_start(pg_project, tmp_path):
    root = pg_project()
    site = (root / "mxcp-site.yml").read_text().replace(
        "sql: {engine: postgres, secret: pg_main}",
        "sql: {engine: postgres, secret: pg_main}\n    duckdb: {path: x.db}")
    (root / "mxcp-site.yml").write_text(site)
    with pytest.raises(ConfigError) as caught, started(root):
        pass
    assert caught.value.key_path == "profiles.pg.duckdb.path"


# -- the hook itself: any plugin may provide an engine ------------------------------------------------------------
class FakeCursor:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def run_sql(self, sql, params=None, max_rows=None):
        from mxcp_core import run_sql

        self.log.append(sql)
        rows = type(run_sql(None, ""))
        return rows(["echo"], [(sql,)])

    def interrupt(self) -> None:
        pass


class FakeEngine:
    name = "fake"
    paused = False
    identity = None

    def __init__(self, project: Any) -> None:
        self.project = project
        self.log: list[str] = []

    def open(self) -> None:
        self.log.append("open")

    def close(self, final: bool = False) -> None:
        self.log.append("close")

    def acquire(self, user=None):
        return FakeCursor(self.log)

    def release(self, cursor, healthy=True) -> None:
        self.log.append(f"release {healthy}")

    def statements(self, sql):
        return ((sql, frozenset()),)

    def check(self, statement, phase):
        return []


class FakeEnginePlugin:
    @hookimpl
    def open_sql_engine(self, settings, project):
        if settings.engine != "fake":
            return None
        return FakeEngine(project)


def test_a_plugin_engine_runs_the_sql_of_calls(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    sql: {engine: fake}\n",
        "tools/echo.yml": tool_yaml("echo", "SELECT 'hi'", returns="{type: string}"),
    })
    project = open_project(root)
    project.host.register(FakeEnginePlugin(), "fake_engine")
    from mxcp_core.execution import Runtime

    with Runtime(project) as runtime:
        assert runtime.database.name == "fake"
        assert runtime.call("tool", "echo") == "SELECT 'hi'"
        log = runtime.database.log
    assert log[0] == "open" and "SELECT 'hi'" in log and "release True" in log and log[-1] == "close"
