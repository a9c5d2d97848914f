"""`mxcp drift-snapshot` / `mxcp drift-check`: tables, columns, endpoint definitions, validation and test status."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from mxcp_core.project import open_project
from mxcp_plugins.drift import collect_state, compare

SITE = """\
mxcp: 1
project: demo
profile: default
profiles:
  default:
    duckdb: {path: data/db.duckdb}
"""

LOOKUP = """\
mxcp: 1
tool:
  name: lookup
  description: Look a user up.
  parameters:
    - {name: id, type: integer, description: Id}
  return: {type: object}
  source: {code: "SELECT id, name FROM users WHERE id = $id"}
  tests:
    - {name: finds_ann, arguments: [{key: id, value: 1}], result: {id: 1, name: ann}}
"""


def _project(root: Path, make_project: Any) -> Path:
    make_project(root, {"mxcp-site.yml": SITE, "tools/lookup.yml": LOOKUP})
    (root / "data").mkdir()
    with duckdb.connect(str(root / "data" / "db.duckdb")) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name VARCHAR); INSERT INTO users VALUES (1, 'ann')")
    return root


def test_state_holds_tables_endpoints_validation_and_tests(tmp_path: Path, make_project: Any) -> None:
    root = _project(tmp_path / "p", make_project)
    state = collect_state(open_project(root))
    assert state["tables"] == {"users": {"type": "BASE TABLE", "columns": {"id": "INTEGER", "name": "VARCHAR"}}}
    endpoint = state["endpoints"]["tool:lookup"]
    assert endpoint["description"] == "Look a user up." and endpoint["language"] == "sql"
    assert endpoint["parameters"]["properties"]["id"]["type"] == "integer"
    assert endpoint["return"] == {"type": "object"} and len(endpoint["source_hash"]) == 64
    assert state["validation"] == {"tool:lookup": {"status": "ok", "errors": []}}
    assert state["tests"] == {"tool:lookup": {"passed": 1, "failed": 0}}
    assert compare(state, collect_state(open_project(root))) == []


def test_snapshot_then_check(tmp_path: Path, make_project: Any, run_mxcp: Any) -> None:
    root = _project(tmp_path / "p", make_project)

    snap = run_mxcp("drift-snapshot", cwd=root)
    assert snap.returncode == 0, snap.stderr
    snapshot_file = root / "drift" / "drift-default.json"
    assert json.loads(snapshot_file.read_text())["endpoints"]["tool:lookup"]["description"] == "Look a user up."

    same = run_mxcp("drift-check", cwd=root)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no drift" in same.stdout

    with duckdb.connect(str(root / "data" / "db.duckdb")) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN email VARCHAR")
    tool = root / "tools" / "lookup.yml"
    tool.write_text(tool.read_text().replace("Look a user up.", "Find one user."))

    text = run_mxcp("drift-check", cwd=root)
    assert text.returncode == 1
    assert "column users.email added: VARCHAR" in text.stdout
    assert "endpoint tool:lookup changed: description 'Look a user up.' → 'Find one user.'" in text.stdout

    as_json = run_mxcp("drift-check", "--json-output", cwd=root)
    assert as_json.returncode == 1
    payload = json.loads(as_json.stdout)
    assert payload["status"] == "error" and payload["result"]["drift"] is True
    assert {(c["category"], c["change"], c["name"]) for c in payload["result"]["changes"]} == {
        ("column", "added", "users.email"),
        ("endpoint", "changed", "tool:lookup"),
    }


def test_validation_and_test_status_changes(tmp_path: Path, make_project: Any) -> None:
    root = _project(tmp_path / "p", make_project)
    baseline = collect_state(open_project(root))
    with duckdb.connect(str(root / "data" / "db.duckdb")) as conn:
        conn.execute("UPDATE users SET name = 'bob'")  # the test now fails
    # A new endpoint whose SQL references a parameter it does not declare: a validation error.
    (root / "tools" / "broken.yml").write_text(
        "mxcp: 1\ntool:\n  name: broken\n  description: d\n  source: {code: 'SELECT $nope'}\n"
    )
    changes = {(c.category, c.change, c.name): c.detail for c in compare(baseline, collect_state(open_project(root)))}
    assert changes[("tests", "changed", "tool:lookup")] == "1 passed, 0 failed → 0 passed, 1 failed"
    assert ("endpoint", "added", "tool:broken") in changes

    # Against a baseline where `broken` already existed and validated: its status change is reported.
    fake = json.loads(json.dumps(baseline))
    fake["endpoints"]["tool:broken"] = collect_state(open_project(root))["endpoints"]["tool:broken"]
    fake["validation"]["tool:broken"] = {"status": "ok", "errors": []}
    changes = {(c.category, c.change, c.name): c.detail for c in compare(fake, collect_state(open_project(root)))}
    assert changes[("validation", "changed", "tool:broken")].startswith("ok → error")


def test_check_against_a_named_baseline_and_missing_baseline(tmp_path: Path, make_project: Any,
                                                             run_mxcp: Any) -> None:
    root = _project(tmp_path / "p", make_project)
    missing = run_mxcp("drift-check", "--json-output", cwd=root)
    assert missing.returncode == 1
    assert "run `mxcp drift-snapshot` first" in json.loads(missing.stdout)["error"]

    other = tmp_path / "elsewhere.json"
    state = collect_state(open_project(root))
    del state["tables"]["users"]
    other.write_text(json.dumps(state))
    checked = run_mxcp("drift-check", "--baseline", str(other), "--json-output", cwd=root)
    assert checked.returncode == 1
    (change,) = json.loads(checked.stdout)["result"]["changes"]
    assert change == {"category": "table", "change": "added", "name": "users", "detail": "columns: id, name"}


def test_tables_made_by_the_tests_themselves_are_not_drift(tmp_path: Path, make_project: Any, run_mxcp: Any) -> None:
    root = make_project(tmp_path / "proj", {
        "tools/remember.yml": """\
            mxcp: 1
            tool:
              name: remember
              parameters: [{name: v, type: string}]
              return: {type: integer}
              source:
                code: |
                  CREATE OR REPLACE TABLE memo AS SELECT $v AS v;
                  SELECT count(*) FROM memo
              tests:
                - {name: stores, arguments: [{key: v, value: a}], result_contains: 1}
            """,
    })
    assert run_mxcp("drift-snapshot", cwd=root).returncode == 0
    check = run_mxcp("drift-check", cwd=root)
    assert check.returncode == 0, check.stdout + check.stderr
