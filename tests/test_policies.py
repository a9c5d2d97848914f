"""Endpoints that declare `policies:` fail closed: no evaluator here, so their calls are denied, never served open."""
from __future__ import annotations

import json

import pytest

from mxcp_core import ConfigSection, hookimpl
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
    lines = (root / "audit" / "logs-default.jsonl").read_text().splitlines()
    # Each call also has an intent record ("started") written before it runs; the outcomes are the others.
    denied, allowed = (r for r in map(json.loads, lines) if r["operation_status"] != "started")
    assert denied["policy_decision"] == "deny" and denied["operation_status"] == "error"
    assert allowed["policy_decision"] is None and allowed["operation_status"] == "success"


def test_disabling_the_policies_plugin_refuses_the_endpoint_instead_of_serving_it_open(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", FILES)
    project = open_project(root, disabled_plugins=["policies"])
    (bad,) = project.endpoints().invalid
    assert bad.name == "salaries"
    assert "declares policies: but no loaded plugin provides them (plugin 'policies', which is disabled)" in bad.message
    with pytest.raises(MxcpError, match="invalid endpoint"):
        Runtime(project).start()
    with Runtime(project, skip_invalid=True) as runtime:  # serve --ignore-errors: the rest is served
        assert runtime.call("tool", "open_tool") == 1
        with pytest.raises(MxcpError, match="tool 'salaries' is not served: declares policies: but no loaded plugin"):
            runtime.call("tool", "salaries")


class AllowingEvaluator:
    """A stand-in policy engine (a real one would evaluate the conditions): it declares the `policies` key."""

    @hookimpl
    def config_sections(self):
        return [ConfigSection("policies", dict, scope="endpoint")]

    @hookimpl(wrapper=True)
    def call_endpoint(self, call):
        call.notes["policy_decision"] = "allow"
        return (yield)


def test_a_policy_evaluator_plugin_can_take_over(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", FILES)
    project = open_project(root, disabled_plugins=["policies"], extra_plugins=[("cel", AllowingEvaluator())])
    with Runtime(project) as runtime:
        assert runtime.call("tool", "salaries") == [{"name": "ann", "salary": 100}]


