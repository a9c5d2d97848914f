"""Endpoints that declare `policies:` fail closed: no evaluator here, so their calls are denied, never served open."""
from __future__ import annotations

import json

import pytest

from mxcp_core.errors import MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project

FILES = {
    "tools/salaries.yml": """\
        mxcp: 1
        tool:
          name: salaries
          return: {type: array}
          source: {code: "SELECT 'ann' AS name, 100 AS salary"}
          policies:
            input:
              - {condition: "user.role != 'admin'", action: deny, reason: "Admins only"}
        """,
    "tools/open_tool.yml": """\
        mxcp: 1
        tool:
          name: open_tool
          return: {type: integer}
          source: {code: "SELECT 1"}
        """,
}


def test_a_call_to_an_endpoint_with_policies_is_denied(make_project, tmp_path, monkeypatch) -> None:
    root = make_project(tmp_path / "proj", FILES)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    with Runtime(open_project(root)) as runtime:
        with pytest.raises(MxcpError, match="salaries': policies are declared but .* denied"):
            runtime.call("tool", "salaries", user={"role": "admin"})
        assert runtime.call("tool", "open_tool") == 1
    denied, allowed = (json.loads(line) for line in (root / "audit" / "logs-default.jsonl").read_text().splitlines())
    assert denied["policy_decision"] == "deny" and denied["operation_status"] == "error"
    assert allowed["policy_decision"] is None and allowed["operation_status"] == "success"


def test_a_policy_evaluator_plugin_can_take_over(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", FILES)
    with Runtime(open_project(root, disabled_plugins=["policies"])) as runtime:
        assert runtime.call("tool", "salaries") == [{"name": "ann", "salary": 100}]
