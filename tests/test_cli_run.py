"""`mxcp run`, `mxcp query` and `mxcp validate` as users run them: real subprocesses on a real DuckDB file."""
from __future__ import annotations

import json

import duckdb
import pytest

from executor_helpers import python_tool, tool

FILES = {
    "tools/echo.yml": tool(
        "echo", 'code: "SELECT $count AS count, $tags AS tags, $options AS options, $name AS name, $zip AS zip"',
        parameters="[{name: count, type: integer}, {name: tags, type: array, items: {type: string}}, "
                   "{name: options, type: object}, {name: name, type: string}, "
                   "{name: zip, type: string, default: '00000'}]",
        returns="{type: object}",
    ),
    "tools/add_note.yml": tool(
        "add_note", 'code: "CREATE TABLE IF NOT EXISTS notes(t VARCHAR); INSERT INTO notes VALUES ($t); '
        'SELECT count(*) FROM notes"', parameters="[{name: t, type: string}]", returns="{type: integer}"),
    "tools/fail.yml": python_tool("fail", "fail.py"),
    "python/fail.py": "def fail():\n    raise RuntimeError('the service said no')\n",
    "tools/raw_rows.yml": python_tool("raw_rows", "raw_rows.py"),
    "python/raw_rows.py": """
        from mxcp.runtime import db

        def raw_rows():
            return db.execute("SELECT DATE '2024-01-02' AS day, TIMESTAMP '2024-01-02 03:04:05' AS at, 7 AS n")
    """,
    "resources/item.yml": """
        mxcp: 1
        resource:
          uri: "items://{id}"
          parameters: [{name: id, type: string}]
          return: {type: object}
          source: {code: "SELECT $id AS id"}
    """,
    "prompts/hello.yml": """
        mxcp: 1
        prompt:
          name: hello
          parameters: [{name: who, type: string}]
          messages: [{role: user, type: text, prompt: "Say hello to {{ who }}"}]
    """,
}


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p", FILES)


def run_json(run_mxcp, *args, cwd, env=None):
    completed = run_mxcp(*args, "--json-output", cwd=cwd, env=env)
    return completed.returncode, json.loads(completed.stdout), completed


def test_json_values_file_values_and_output_shape(run_mxcp, project):
    (project / "options.json").write_text('{"deep": {"x": [1, 2]}}')
    code, payload, _ = run_json(
        run_mxcp, "run", "tool", "echo", "-p", "count=3", "-p", 'tags=["a", "b"]', "-p", "options=@options.json",
        "-p", "name=World", "-p", "zip=02134", cwd=project)
    assert code == 0
    assert payload == {"status": "ok", "result": {
        "count": 3, "tags": ["a", "b"], "options": {"deep": {"x": [1, 2]}}, "name": "World", "zip": "02134"}}


def test_errors_are_one_json_message_and_exit_1(run_mxcp, project):
    code, payload, _ = run_json(run_mxcp, "run", "tool", "echo", "-p", "count=many", "-p", "tags=[]",
                                "-p", "options={}", "-p", "name=x", cwd=project)
    assert code == 1 and payload == {"status": "error", "error": "Parameter 'count': expected integer, got string (type)"}
    code, payload, _ = run_json(run_mxcp, "run", "tool", "echo", "-p", "count=1", cwd=project)
    assert code == 1 and payload["error"] == "Required parameter missing: tags"


def test_a_python_exception_reaches_the_caller_as_its_message(run_mxcp, project):
    code, payload, completed = run_json(run_mxcp, "run", "tool", "fail", cwd=project)
    assert code == 1 and payload == {"status": "error", "error": "the service said no"}
    assert "Traceback" in completed.stderr and "Traceback" not in completed.stdout  # the log has the story


def test_rows_returned_as_is_serialise_with_dates(run_mxcp, project):
    assert run_json(run_mxcp, "run", "tool", "raw_rows", cwd=project)[1] == {
        "status": "ok", "result": [{"day": "2024-01-02", "at": "2024-01-02T03:04:05", "n": 7}]}


def test_run_resource_and_prompt(run_mxcp, project):
    assert run_json(run_mxcp, "run", "resource", "items://abc", cwd=project)[1] == {
        "status": "ok", "result": {"id": "abc"}}
    assert run_json(run_mxcp, "run", "prompt", "hello", "-p", "who=Ada", cwd=project)[1]["result"] == [
        {"role": "user", "content": {"type": "text", "text": "Say hello to Ada"}}]


def test_query_with_parameters_and_plain_output(run_mxcp, project):
    code, payload, _ = run_json(run_mxcp, "query", "SELECT $n + 1 AS answer, $s AS s", "-p", "n=41", "-p", "s=x",
                                cwd=project)
    assert code == 0 and payload == {"status": "ok", "result": [{"answer": 42, "s": "x"}]}
    plain = run_mxcp("query", "SELECT 'duck' AS animal", cwd=project)
    assert plain.returncode == 0 and "animal" in plain.stdout and "duck" in plain.stdout
    code, payload, _ = run_json(run_mxcp, "query", "SELEC nonsense", cwd=project)
    assert code == 1 and payload["status"] == "error" and payload["error"].startswith("SQL")


@pytest.mark.parametrize("how", ["env", "flag", "site"])
def test_readonly_makes_writes_fail_with_a_clear_error(run_mxcp, project, how):
    assert run_json(run_mxcp, "run", "tool", "add_note", "-p", "t=first", cwd=project)[1]["result"] == 1
    env, extra = {}, []
    if how == "env":
        env = {"MXCP_READONLY": "1"}
    elif how == "flag":
        extra = ["--readonly"]
    else:
        (project / "mxcp-site.yml").write_text(
            "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    duckdb: {readonly: true}\n")
    code, payload, _ = run_json(run_mxcp, "run", "tool", "add_note", "-p", "t=second", *extra, cwd=project, env=env)
    assert code == 1 and "read-only" in payload["error"]
    code, payload, _ = run_json(run_mxcp, "query", "SELECT count(*) AS n FROM notes", *extra, cwd=project, env=env)
    assert code == 0 and payload["result"] == [{"n": 1}]  # reading still works


def test_duckdb_path_from_the_environment(run_mxcp, project, tmp_path):
    elsewhere = tmp_path / "elsewhere.duckdb"
    env = {"MXCP_DUCKDB_PATH": str(elsewhere)}
    assert run_json(run_mxcp, "run", "tool", "add_note", "-p", "t=x", cwd=project, env=env)[0] == 0
    with duckdb.connect(str(elsewhere), read_only=True) as conn:
        assert conn.execute("SELECT t FROM notes").fetchall() == [("x",)]
    assert not (project / "data" / "db-default.duckdb").exists()


def test_validate_exit_codes(run_mxcp, make_project, tmp_path):
    good = make_project(tmp_path / "good", {
        "tools/ok.yml": tool("ok", 'code: "SELECT $a AS a"', parameters="[{name: a, type: integer}]"),
        "tools/py_ok.yml": python_tool("py_ok", "funcs.py", parameters="[{name: a, type: integer}]"),
        "python/funcs.py": "def py_ok(a):\n    return a\n",
    })
    code, payload, _ = run_json(run_mxcp, "validate", cwd=good)
    assert code == 0, payload

    cases = {
        "sql_names": {"tools/t.yml": tool("t", 'code: "SELECT $a AS a, $b AS b"',
                                          parameters="[{name: a, type: integer}]")},
        "no_function": {"tools/t.yml": python_tool("t", "funcs.py"), "python/funcs.py": "def other():\n    pass\n"},
        "wrong_parameters": {"tools/t.yml": python_tool("t", "funcs.py", parameters="[{name: a, type: integer}]"),
                             "python/funcs.py": "def t(b):\n    return b\n"},
    }
    expected = {
        "sql_names": "SQL uses undeclared parameter(s): $b",
        "no_function": "function 't' not found in funcs.py",
        "wrong_parameters": "function t() has no parameter(s) a declared in the YAML",
    }
    for case, files in cases.items():
        root = make_project(tmp_path / case, files)
        completed = run_mxcp("validate", cwd=root)
        assert completed.returncode == 1, case
        assert expected[case] in completed.stdout + completed.stderr, (case, completed.stdout, completed.stderr)
