"""A python/ module that fails to import invalidates only the endpoints using it; validate and serve agree.

Through the real command line (`mxcp validate`, `mxcp run`, `mxcp serve` in a subprocess) and a real MCP client.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from executor_helpers import python_tool
from mcp.client.stdio import StdioServerParameters, stdio_client
from server_helpers import mxcp_command, serve_env

SQL_OK = """\
    mxcp: 1
    tool:
      name: sql_ok
      return: {type: integer}
      source: {code: "SELECT 41 + 1"}
    """

UNKNOWN_FUNCTION = """\
    mxcp: 1
    tool:
      name: unknown_fn
      return: {type: integer}
      source: {code: "SELECT no_such_function_xyz(1)"}
    """

FILES = {
    "tools/sql_ok.yml": SQL_OK,
    "tools/py_ok.yml": python_tool("py_ok", "fine.py", returns="{type: string}"),
    "tools/syntax.yml": python_tool("syntax", "syntax_error.py"),
    "tools/raises.yml": python_tool("raises", "raises_at_import.py"),
    "tools/missing_dep.yml": python_tool("missing_dep", "missing_dep.py"),
    "tools/uses_shared.yml": python_tool("uses_shared", "uses_shared.py"),
    "python/fine.py": "def py_ok():\n    return 'fine'\n",
    "python/syntax_error.py": "def syntax(:\n    return 1\n",
    "python/raises_at_import.py": "SETTING = {}['missing']\n\ndef raises():\n    return 1\n",
    "python/missing_dep.py": "import not_installed_anywhere_xyz\n\ndef missing_dep():\n    return 1\n",
    "python/helpers/__init__.py": "",
    "python/helpers/shared.py": "\nRATE = 1 / 0\n",
    "python/uses_shared.py": "from helpers.shared import RATE\n\ndef uses_shared():\n    return RATE\n",
}

BROKEN = {"syntax", "raises", "missing_dep", "uses_shared", "unknown_fn"}


@pytest.fixture
def project(make_project, tmp_path) -> Path:
    return make_project(tmp_path / "proj", {**FILES, "tools/unknown_fn.yml": UNKNOWN_FUNCTION})


def test_validate_names_only_the_endpoints_of_broken_modules(project, run_mxcp):
    done = run_mxcp("validate", "--json-output", cwd=project)
    assert done.returncode == 1
    result = json.loads(done.stdout)["result"]
    problems = {p["endpoint"]: p for p in result["problems"]}
    assert set(problems) == BROKEN  # sql_ok and py_ok are valid
    assert all(p["severity"] == "error" for p in problems.values())
    assert problems["syntax"]["file"] == "tools/syntax.yml"
    assert problems["syntax"]["message"].startswith("python/syntax_error.py: import failed: SyntaxError: ")
    assert problems["raises"]["message"] == (
        "python/raises_at_import.py: import failed: line 1: KeyError: 'missing'")
    assert problems["missing_dep"]["message"] == (
        "python/missing_dep.py: import failed: line 1: ModuleNotFoundError: "
        "No module named 'not_installed_anywhere_xyz'")
    # The shared helper is named where it failed, through the module that imports it.
    assert problems["uses_shared"]["message"] == (
        "python/uses_shared.py: import failed: in python/helpers/shared.py line 2: "
        "ZeroDivisionError: division by zero")
    # An unknown function is an error for validate exactly as for serve (no on_init can register it).
    assert "no_such_function_xyz does not exist" in problems["unknown_fn"]["message"]
    assert "Traceback" not in done.stderr


def test_validate_prints_one_line_per_problem_and_the_traceback_only_with_debug(project, run_mxcp):
    plain = run_mxcp("validate", cwd=project)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stdout + plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.startswith("error ")]
    assert len(lines) == len(BROKEN)
    assert any(line.startswith("error tools/raises.yml [raises]: python/raises_at_import.py") for line in lines)

    debug = run_mxcp("validate", "--debug", cwd=project)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "1 / 0" in debug.stderr


def test_run_serves_the_valid_endpoints_and_names_the_module_for_a_broken_one(project, run_mxcp):
    done = run_mxcp("run", "tool", "sql_ok", "--json-output", cwd=project)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == 42
    done = run_mxcp("run", "tool", "py_ok", "--json-output", cwd=project)
    assert json.loads(done.stdout)["result"] == "fine"
    broken = run_mxcp("run", "tool", "raises", cwd=project)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "python/raises_at_import.py: import failed: line 1: KeyError" in broken.stderr


def test_serve_refuses_listing_the_invalid_endpoints(project, run_mxcp):
    done = run_mxcp("serve", "--transport", "stdio", cwd=project, timeout=30)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{len(BROKEN)} invalid endpoint(s)" in done.stderr and "--ignore-errors" in done.stderr
    for name in BROKEN:
        assert f"  {name} (tools/{name}.yml): " in done.stderr
    assert "sql_ok" not in done.stderr and "py_ok" not in done.stderr


def serve_stdio(root: Path, body: Any, errlog: Path, *args: str) -> Any:
    command = mxcp_command()
    # Other distributions' plugins stay off, as in the test process (conftest), so only this project's tools show.
    env = serve_env({"MXCP_DISABLE_PLUGINS": os.environ.get("MXCP_DISABLE_PLUGINS", "")})
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio", *args],
                                   cwd=root, env=env)

    async def main() -> Any:
        with open(errlog, "w") as err:
            async with mcp.Client(stdio_client(params, errlog=err)) as client:
                return await body(client)

    return anyio.run(main)


async def call_text(client: Any, name: str) -> tuple[bool, str]:
    """(failed, text) of a tool call: an error result, or the JSON-RPC error for a tool the server does not list."""
    try:
        result = await client.call_tool(name, {})
    except mcp.MCPError as exc:
        return True, str(exc)
    return bool(result.is_error), result.content[0].text if result.content else ""


def test_serve_ignore_errors_serves_the_rest(project, tmp_path):
    async def body(client):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        return (names, await client.call_tool("sql_ok", {}), await client.call_tool("py_ok", {}),
                await call_text(client, "uses_shared"), await call_text(client, "unknown_fn"))

    errlog = tmp_path / "stderr.txt"
    names, sql_ok, py_ok, shared, unknown = serve_stdio(project, body, errlog, "--ignore-errors")
    assert names == ["py_ok", "sql_ok"]
    assert sql_ok.structured_content == {"result": 42}
    assert py_ok.structured_content == {"result": "fine"}
    assert shared[0] and "tool 'uses_shared' is not served: python/uses_shared.py" in shared[1]
    assert unknown[0] and "tool 'unknown_fn' is not served: SQL does not prepare" in unknown[1]
    stderr = errlog.read_text()
    assert "skipping invalid endpoint raises (tools/raises.yml): python/raises_at_import.py" in stderr
    assert "skipping invalid endpoint unknown_fn (tools/unknown_fn.yml): SQL does not prepare" in stderr
    assert "Traceback" not in stderr


def test_the_runtime_answers_a_skipped_endpoint_with_why_it_is_not_served(project):
    from mxcp_core.errors import MxcpError, NotFoundError
    from mxcp_core.project import open_project
    from mxcp_core.server.transports import start_runtime

    with pytest.raises(MxcpError, match="5 invalid endpoint"):
        start_runtime(open_project(project))
    runtime = start_runtime(open_project(project), ignore_errors=True)
    try:
        assert runtime.call("tool", "sql_ok") == 42
        with pytest.raises(NotFoundError, match=r"^tool 'uses_shared' is not served: python/uses_shared.py: "
                                                r"import failed: in python/helpers/shared.py line 2: "):
            runtime.call("tool", "uses_shared")
        with pytest.raises(NotFoundError, match=r"^tool 'unknown_fn' is not served: SQL does not prepare"):
            runtime.call("tool", "unknown_fn")
    finally:
        runtime.stop()


def test_a_failing_module_no_endpoint_uses_is_logged_once_without_a_traceback(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "proj", {
        "tools/sql_ok.yml": SQL_OK,
        "python/orphan.py": "from mxcp.runtime import on_init\nimport not_installed_anywhere_xyz\n",
    })
    done = run_mxcp("run", "tool", "sql_ok", cwd=root)
    assert done.returncode == 0 and done.stdout.strip() == "42"
    assert done.stderr.count("python/orphan.py: import failed: line 2: ModuleNotFoundError") == 1
    assert "no endpoint uses it" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_table_still_only_warns_in_validate_but_a_missing_function_is_an_error(make_project, tmp_path,
                                                                                          run_mxcp):
    root = make_project(tmp_path / "proj", {
        "tools/table.yml": """\
            mxcp: 1
            tool:
              name: from_table
              return: {type: integer}
              source: {code: "SELECT count(*) FROM made_by_on_init"}
            """,
        "tools/unknown_fn.yml": UNKNOWN_FUNCTION,
    })
    done = run_mxcp("validate", "--json-output", cwd=root)
    problems = {p["endpoint"]: p["severity"] for p in json.loads(done.stdout)["result"]["problems"]}
    assert problems == {"from_table": "warning", "unknown_fn": "error"}
    assert done.returncode == 1
