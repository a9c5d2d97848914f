"""Body checks shared by `mxcp validate` and `mxcp serve`: a table an on_init hook creates is not an error."""
from __future__ import annotations

import json

import pytest

from mxcp_core.errors import MxcpError
from mxcp_core.project import open_project
from mxcp_core.server.transports import start_runtime

FILES = {
    "tools/count_rows.yml": """\
        mxcp: 1
        tool:
          name: count_rows
          return: {type: integer}
          source: {code: "SELECT count(*) FROM made_at_start"}
        """,
    "python/setup.py": """\
        from mxcp.runtime import db, on_init

        @on_init
        def create_table():
            db.execute("CREATE TABLE IF NOT EXISTS made_at_start AS SELECT 1 AS x")
        """,
}

MISSING = {
    "tools/count_missing.yml": """\
        mxcp: 1
        tool:
          name: count_missing
          return: {type: integer}
          source: {code: "SELECT count(*) FROM never_created"}
        """,
}


def test_validate_warns_and_serve_accepts_a_table_made_by_on_init(make_project, run_mxcp, tmp_path) -> None:
    root = make_project(tmp_path / "proj", FILES)
    result = run_mxcp("validate", "--json-output", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    (problem,) = json.loads(result.stdout)["result"]["problems"]
    assert problem["severity"] == "warning" and "made_at_start" in problem["message"]
    assert problem["endpoint"] == "count_rows" and problem["file"] == "tools/count_rows.yml"

    runtime = start_runtime(open_project(root))
    try:
        assert runtime.call("tool", "count_rows") == 1
    finally:
        runtime.stop()


def test_serve_refuses_or_skips_a_table_nothing_creates(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {**FILES, **MISSING})
    with pytest.raises(MxcpError, match="count_missing .*never_created"):
        start_runtime(open_project(root))
    runtime = start_runtime(open_project(root), ignore_errors=True)
    try:
        assert ("tool", "count_missing") not in runtime.compiled
        assert runtime.call("tool", "count_rows") == 1
    finally:
        runtime.stop()


# -- secret references of the user config ------------------------------------------------------------------
REFERENCES = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - {name: a, type: custom, parameters: {token: "env://TEST_TOKEN_A"}}
          - {name: b, type: custom, parameters: {token: "env://TEST_UNSET_B"}}
          - {name: c, type: custom, paramters: {token: x}}
        plugin:
          config:
            udf: {api_key: "env://TEST_UNSET_UDF"}
"""


def test_validate_lists_every_failed_reference_and_the_config_error_behind_them(
        make_project, user_config, run_mxcp, tmp_path):
    """A failed reference leaves its value empty: its section's error is the same problem, any other is its own."""
    root = make_project(tmp_path / "p")
    path = user_config(REFERENCES)
    checked = run_mxcp("validate", "--json-output", cwd=root, env={"TEST_TOKEN_A": "token-a"})
    assert checked.returncode == 1
    result = json.loads(checked.stdout)["result"]
    assert result["references"] == {"resolved": 1, "failed": 2}
    messages = [problem["message"] for problem in result["problems"]]
    assert any("secrets[1].parameters.token" in m and "TEST_UNSET_B" in m for m in messages)
    assert any("plugin.config.udf.api_key" in m and "TEST_UNSET_UDF" in m for m in messages)
    assert any("unknown key 'paramters'" in m for m in messages)
    assert len(messages) == 3, messages
    assert all(problem["file"].startswith(str(path)) for problem in result["problems"])
    assert "token-a" not in checked.stdout
