"""`mxcp lint`: each rule, severity filtering, each finding once, exit code 1 on errors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mxcp_core.project import open_project
from mxcp_plugins.lint import at_or_above, lint_project

WELL_DOCUMENTED = """\
mxcp: 1
tool:
  name: good
  description: A tool with everything lint asks for.
  annotations: {readOnlyHint: true}
  parameters:
    - {name: id, type: integer, description: The id, examples: [1]}
  return: {type: integer, description: The same id}
  source: {code: "SELECT $id"}
  tests:
    - {name: echoes, arguments: [{key: id, value: 1}], result: 1}
"""

BARE = """\
mxcp: 1
tool:
  name: bare
  parameters:
    - {name: id, type: integer}
  return: {type: integer}
  source: {code: "SELECT $id"}
"""

NO_RETURN = """\
mxcp: 1
tool:
  name: no_return
  description: Returns rows.
  annotations: {readOnlyHint: true}
  source: {code: "SELECT 1 AS x"}
  tests:
    - name: runs_only
    - name: wrong_param
      arguments: [{key: idd, value: 1}, {key: idd, value: 2}]
      result_length: 1
    - name: wrong_param
      arguments: [{key: idd, value: 3}]
      result_length: 1
"""

PROMPT = """\
mxcp: 1
prompt:
  name: ask
  description: Ask.
  messages: [{role: user, prompt: "hi"}]
  tests: [{name: renders, result_length: 1}]
"""


def _findings(root: Path) -> set[tuple[str, str, str, str]]:
    return {(f.endpoint, f.rule, f.severity, f.location) for f in lint_project(open_project(root))}


def test_well_documented_endpoints_have_no_findings(tmp_path: Path, make_project: Any) -> None:
    root = make_project(tmp_path / "p", {"tools/good.yml": WELL_DOCUMENTED, "prompts/ask.yml": PROMPT})
    assert _findings(root) == set()


def test_each_rule(tmp_path: Path, make_project: Any) -> None:
    root = make_project(tmp_path / "p", {"tools/bare.yml": BARE, "tools/no_return.yml": NO_RETURN})
    assert _findings(root) == {
        ("bare", "missing-description", "warning", "description"),
        ("bare", "missing-parameter-description", "error", "parameters.id"),
        ("bare", "missing-parameter-examples", "info", "parameters.id"),
        ("bare", "missing-return-description", "info", "return.description"),
        ("bare", "missing-annotations", "info", "annotations"),
        ("bare", "missing-tests", "warning", "tests"),
        ("no_return", "missing-return-type", "warning", "return"),
        ("no_return", "test-without-assertions", "warning", "tests.runs_only"),
        ("no_return", "test-unknown-parameter", "error", "tests.wrong_param.arguments.idd"),
    }


def test_each_finding_is_reported_once(tmp_path: Path, make_project: Any) -> None:
    root = make_project(tmp_path / "p", {"tools/no_return.yml": NO_RETURN})
    findings = lint_project(open_project(root))
    # Two tests named wrong_param pass `idd` three times: one finding.
    assert [f.rule for f in findings].count("test-unknown-parameter") == 1
    assert len(findings) == len({(f.endpoint, f.rule, f.location) for f in findings})


def test_severity_filter_keeps_findings_at_or_above() -> None:
    from mxcp_plugins.lint import LintFinding

    findings = [LintFinding(severity=s, rule=s, kind="tool", endpoint="x", location="", message=s)
                for s in ("info", "warning", "error")]
    assert [f.severity for f in at_or_above(findings, "error")] == ["error"]
    assert [f.severity for f in at_or_above(findings, "warning")] == ["warning", "error"]
    assert len(at_or_above(findings, "info")) == 3


def test_cli_severity_json_and_exit_codes(tmp_path: Path, make_project: Any, run_mxcp: Any) -> None:
    untested = make_project(tmp_path / "untested", {"tools/good.yml": WELL_DOCUMENTED.split("  tests:")[0]})
    warnings_only = run_mxcp("lint", "--json-output", cwd=untested)
    assert warnings_only.returncode == 0, warnings_only.stderr
    payload = json.loads(warnings_only.stdout)
    assert payload["status"] == "ok"
    assert payload["result"]["summary"] == {"error": 0, "warning": 1, "info": 0}

    # A parameter without a description is an error, as in the original: lint exits 1.
    bare = make_project(tmp_path / "bare", {"tools/bare.yml": BARE})
    shown = run_mxcp("lint", "--severity", "warning", "--json-output", cwd=bare)
    assert shown.returncode == 1, shown.stderr
    payload = json.loads(shown.stdout)
    assert payload["status"] == "error" and payload["error"] == "1 error found"
    assert {f["severity"] for f in payload["result"]["findings"]} == {"error", "warning"}
    assert payload["result"]["summary"] == {"error": 1, "warning": 2, "info": 0}

    broken = make_project(tmp_path / "broken", {"tools/no_return.yml": NO_RETURN})
    errors = run_mxcp("lint", "--severity", "error", cwd=broken)
    assert errors.returncode == 1
    assert "test-unknown-parameter" in errors.stdout
    assert "missing-return-type" not in errors.stdout
    assert errors.stdout.count("test-unknown-parameter") == 1

    bad_level = run_mxcp("lint", "--severity", "loud", cwd=untested)
    assert bad_level.returncode == 1 and "unknown severity 'loud'" in bad_level.stderr


def test_unparseable_endpoint_is_a_lint_error(tmp_path: Path, make_project: Any) -> None:
    root = make_project(tmp_path / "p", {"tools/bad.yml": "mxcp: 1\ntool: {name: bad, sorce: {code: x}}\n"})
    findings = lint_project(open_project(root))
    assert [(f.rule, f.severity) for f in findings] == [("invalid-endpoint", "error")]
    assert "sorce" in findings[0].message
