"""CEL policies: compiled when the project loads, evaluated per call, failing closed, recorded in the audit log."""
from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import pytest

from extras import needs_extra
from mxcp_core import ConfigSection, hookimpl
from mxcp_core.errors import MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.records import EndpointDefinition, Problem

pytestmark = needs_extra("cel")

EMPLOYEE = """\
    mxcp: 1
    tool:
      name: employee
      description: One employee.
      parameters:
        - {name: id, type: integer, description: Employee id}
        - {name: region, type: string, default: "emea", description: Region}
      return:
        type: object
        properties:
          name: {type: string}
          salary: {type: number}
          ssn: {type: string, sensitive: true}
          contact:
            type: object
            properties:
              phone: {type: string}
              home_address: {type: string, sensitive: true}
          reviews:
            type: array
            items:
              type: object
              properties:
                score: {type: integer}
                note: {type: string, sensitive: true}
      source:
        code: |
          SELECT 'Ann' AS name, 5000.5 AS salary, '123-45' AS ssn,
                 {'phone': '555', 'home_address': '1 Main St'} AS contact,
                 [{'score': 4, 'note': 'private'}, {'score': 5, 'note': 'also private'}] AS reviews
      policies:
        input:
          - {condition: "id > 100", action: deny, reason: "Employees above 100 are off limits"}
          - {condition: "user.role == 'guest'", action: deny, reason: "No guests"}
          - {condition: "region != 'emea' && user.role != 'admin'", action: deny, reason: "Admins only outside EMEA"}
        output:
          - {condition: "user.role != 'hr' && user.role != 'admin'", action: filter_fields, fields: [salary]}
          - {condition: "user.role != 'admin'", action: mask_fields, fields: [name]}
          - {condition: "user.role != 'admin'", action: filter_sensitive_fields}
          - {condition: "response.salary > 1000000.0", action: deny, reason: "Too much"}
    """

FILES = {
    "tools/employee.yml": EMPLOYEE,
    "tools/open_tool.yml": """\
        mxcp: 1
        tool:
          name: open_tool
          return: {type: integer}
          source: {code: "SELECT 1"}
        """,
}


@pytest.fixture
def runtime(make_project, tmp_path, monkeypatch):
    root = make_project(tmp_path / "proj", FILES)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    with Runtime(open_project(root)) as started:
        yield started


def audit(runtime: Runtime) -> list[dict[str, Any]]:
    path = runtime.context.root / "audit" / "logs-default.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["operation_status"] != "started"]


def test_output_actions_filter_mask_and_drop_sensitive_fields_at_every_depth(runtime) -> None:
    employee = runtime.call("tool", "employee", {"id": 1}, user={"username": "bob"})  # role "user"
    assert employee == {"name": "****", "contact": {"phone": "555"}, "reviews": [{"score": 4}, {"score": 5}]}
    hr = runtime.call("tool", "employee", {"id": 1}, user={"username": "hr1", "role": "hr"})
    assert hr["salary"] == 5000.5 and hr["name"] == "****" and "ssn" not in hr
    admin = runtime.call("tool", "employee", {"id": 1}, user={"role": "admin"})
    assert admin["name"] == "Ann" and admin["ssn"] == "123-45" and admin["reviews"][0]["note"] == "private"


def test_input_policies_see_converted_arguments_defaults_and_the_user(runtime) -> None:
    with pytest.raises(MxcpError, match=r"denied by input policy 1 of tool 'employee': Employees above 100"):
        runtime.call("tool", "employee", {"id": 101}, user={"role": "admin"})
    with pytest.raises(MxcpError, match="denied by input policy 2 of tool 'employee': No guests"):
        runtime.call("tool", "employee", {"id": 1}, user={"role": "guest"})
    # `region` has a default of "emea": the condition sees it, so a user passes; another region needs an admin.
    assert runtime.call("tool", "employee", {"id": 1}, user={"role": "user"})["name"] == "****"
    with pytest.raises(MxcpError, match="Admins only outside EMEA"):
        runtime.call("tool", "employee", {"id": 1, "region": "apac"})  # anonymous: role "anonymous"
    assert runtime.call("tool", "employee", {"id": 1, "region": "apac"}, user={"role": "admin"})["name"] == "Ann"


def test_every_decision_is_in_the_audit_record(runtime) -> None:
    runtime.call("tool", "employee", {"id": 1}, user={"user_id": "u1", "role": "admin"})
    with pytest.raises(MxcpError):
        runtime.call("tool", "employee", {"id": 1}, user={"user_id": "u2", "role": "guest"})
    runtime.call("tool", "open_tool")
    allowed, denied, unguarded = audit(runtime)
    assert allowed["policy_decision"] == "allow" and allowed["user_id"] == "u1"
    assert [(p["stage"], p["policy"], p["result"]) for p in allowed["policies_evaluated"]] == [
        ("input", 1, "not matched"), ("input", 2, "not matched"), ("input", 3, "not matched"),
        ("output", 1, "not matched"), ("output", 2, "not matched"), ("output", 3, "not matched"),
        ("output", 4, "not matched")]
    assert denied["policy_decision"] == "deny" and denied["policy_reason"] == "No guests"
    assert denied["operation_status"] == "error" and denied["user_id"] == "u2"
    assert [p["result"] for p in denied["policies_evaluated"]] == ["not matched", "matched"]
    assert unguarded["policy_decision"] is None and unguarded["policies_evaluated"] == []


RUNTIME_ERRORS = {
    "tools/guarded.yml": """\
        mxcp: 1
        tool:
          name: guarded
          parameters: [{name: password, type: string, sensitive: true, description: p}]
          return: {type: object}
          source: {code: "SELECT 1 AS a"}
          policies:
            input:
              - {condition: "user.claims.department == 'x'", action: warn}
              - {condition: "int(password) == 1", action: deny, reason: never}
            output:
              - {condition: "response.missing == 1", action: deny, reason: "missing"}
        """,
    "tools/output_error.yml": """\
        mxcp: 1
        tool:
          name: output_error
          return: {type: object}
          source: {code: "SELECT 1 AS a"}
          policies:
            output:
              - {condition: "response.missing == 1", action: deny, reason: "never matches"}
        """,
}


def test_a_condition_that_cannot_be_evaluated_denies_and_the_client_sees_no_internals(
        make_project, tmp_path, monkeypatch) -> None:
    root = make_project(tmp_path / "proj", RUNTIME_ERRORS)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    with Runtime(open_project(root)) as runtime:
        # `user.claims` has no `department`: a missing key is an error value in CEL, and the call is denied.
        with pytest.raises(MxcpError) as denied:
            runtime.call("tool", "guarded", {"password": "hunter2-secret"})
        assert str(denied.value) == ("denied by input policy 1 of tool 'guarded': its condition could not be "
                                     "evaluated")
        with pytest.raises(MxcpError, match="denied by output policy 1 of tool 'output_error': its condition could "
                                            "not be evaluated"):
            runtime.call("tool", "output_error")
        first, second = audit(runtime)
    assert first["policy_decision"] == "deny"
    assert "input policy 1 could not be evaluated" in first["policy_reason"]
    assert first["policies_evaluated"][0]["result"] == "error"
    assert "department" in first["policies_evaluated"][0]["error"]
    assert "hunter2-secret" not in json.dumps(first)
    assert second["policy_decision"] == "deny" and "missing" in second["policy_reason"]


def test_a_sensitive_argument_in_a_cel_error_never_reaches_the_audit_record(make_project, tmp_path, monkeypatch) -> None:
    files = {"tools/guarded.yml": RUNTIME_ERRORS["tools/guarded.yml"].replace(
        '- {condition: "user.claims.department == \'x\'", action: warn}\n', "")}
    root = make_project(tmp_path / "proj", files)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    with Runtime(open_project(root)) as runtime:
        with pytest.raises(MxcpError, match="could not be evaluated"):
            runtime.call("tool", "guarded", {"password": "not-a-number-secret"})
        (record,) = audit(runtime)
    assert "not-a-number-secret" not in json.dumps(record)


def test_warn_records_the_warning_and_lets_the_call_through(make_project, tmp_path, monkeypatch) -> None:
    root = make_project(tmp_path / "proj", {"tools/w.yml": """\
        mxcp: 1
        tool:
          name: w
          return: {type: integer}
          source: {code: "SELECT 1"}
          policies:
            input:
              - {condition: "user.role == 'anonymous'", action: warn, reason: "anonymous caller"}
        """})
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "w") == 1
        (record,) = audit(runtime)
    assert record["policy_decision"] == "warn" and record["policy_reason"] == "anonymous caller"


BROKEN = {
    "syntax": ('user.role = "admin"', "condition does not compile: 1:11: Syntax error"),
    "type": ("name + 1 == 2", "condition does not compile: 1:6: found no matching overload for '_+_'"),
    "undeclared": ("colour == 'red'", "undeclared reference to 'colour'"),
    "not_boolean": ("name", "the condition gives string, not true or false"),
    "response_in_input": ("response.x == 1", "undeclared reference to 'response.x'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_condition_that_does_not_compile_is_an_error_naming_file_line_and_policy(
        case, make_project, tmp_path) -> None:
    condition, expected = BROKEN[case]
    root = make_project(tmp_path / "proj", {"tools/broken.yml": f"""\
        mxcp: 1
        tool:
          name: broken
          parameters: [{{name: name, type: string, description: n}}]
          return: {{type: string}}
          source: {{code: "SELECT $name"}}
          policies:
            input:
              - {{condition: "true", action: warn}}
              - {{condition: {json.dumps(condition)}, action: deny, reason: nope}}
        """})
    project = open_project(root)
    (bad,) = project.endpoints().invalid
    assert bad.origin.endswith("tools/broken.yml") and bad.name == "broken"
    assert bad.message.startswith("input policy 2 (line 10, policies.input[1]): ")
    assert expected in bad.message
    with pytest.raises(MxcpError, match="invalid endpoint"):
        Runtime(project).start()


@pytest.mark.parametrize("policy, expected", [
    ("{condition: 'true', action: filter_fields, fields: [a]}", "field actions apply to output policies"),
    ("{condition: 'true', action: explode}", "action: expected one of deny, warn, got 'explode'"),
    ("{condition: 'true', action: deny, reasn: x}", "unknown key 'reasn' (did you mean 'reason'?)"),
    ("{action: deny}", "condition: expected a CEL expression"),
])
def test_malformed_policies_are_errors(policy, expected, make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/bad.yml": f"""\
        mxcp: 1
        tool:
          name: bad
          return: {{type: integer}}
          source: {{code: "SELECT 1"}}
          policies:
            input:
              - {policy}
        """})
    (bad,) = open_project(root).endpoints().invalid
    assert expected in bad.message


def test_validate_and_serve_refuse_a_broken_condition(make_project, tmp_path, run_mxcp) -> None:
    root = make_project(tmp_path / "proj", {"tools/broken.yml": """\
        mxcp: 1
        tool:
          name: broken
          return: {type: integer}
          source: {code: "SELECT 1"}
          policies:
            output:
              - {condition: "response >", action: deny}
        """})
    validated = run_mxcp("validate", "--json-output", cwd=root)
    assert validated.returncode == 1
    (problem,) = json.loads(validated.stdout)["result"]["problems"]
    assert "output policy 1 (line 8, policies.output[0]): condition does not compile" in problem["message"]
    assert problem["file"].endswith("broken.yml")
    served = run_mxcp("serve", "--transport", "stdio", cwd=root)
    assert served.returncode != 0 and "output policy 1 (line 8" in served.stderr


def test_without_a_cel_evaluator_endpoints_with_policies_are_refused_naming_the_extra(
        make_project, tmp_path, monkeypatch) -> None:
    from mxcp_plugins import policies

    policies.engine.cache_clear()
    monkeypatch.setitem(sys.modules, "cel_expr_python", None)  # as if the extra were not installed
    root = make_project(tmp_path / "proj", FILES)
    project = open_project(root)
    (bad,) = project.endpoints().invalid
    assert bad.name == "employee"
    assert "policies need a CEL evaluator, which is not installed: pip install 'mxcp-pluggy[cel]'" in bad.message
    with Runtime(project, skip_invalid=True) as runtime:
        assert runtime.call("tool", "open_tool") == 1
        with pytest.raises(MxcpError, match="tool 'employee' is not served: policies need a CEL evaluator"):
            runtime.call("tool", "employee", {"id": 1}, user={"role": "admin"})


def test_disabling_the_policies_plugin_refuses_the_endpoint_instead_of_serving_it_open(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", FILES)
    project = open_project(root, disabled_plugins=["policies"])
    (bad,) = project.endpoints().invalid
    assert bad.name == "employee"
    assert "declares policies: but no loaded plugin provides them (plugin 'policies', which is disabled)" in bad.message
    with pytest.raises(MxcpError, match="invalid endpoint"):
        Runtime(project).start()
    with Runtime(project, skip_invalid=True) as runtime:  # serve --ignore-errors: the rest is served
        assert runtime.call("tool", "open_tool") == 1
        with pytest.raises(MxcpError, match="tool 'employee' is not served: declares policies: but no loaded plugin"):
            runtime.call("tool", "employee", {"id": 1})


class ReplacementEngine:
    """Another policy engine: declares the `policies` section itself, checks at load, and enforces per call."""

    def __init__(self) -> None:
        self.checked: list[str] = []

    @hookimpl
    def config_sections(self) -> list[ConfigSection]:
        return [ConfigSection("policies", dict[str, Any], scope="endpoint")]

    @hookimpl
    def check_endpoint(self, endpoint: EndpointDefinition, project: Any) -> list[Problem]:
        self.checked.append(endpoint.key)
        if endpoint.policies and "input" not in endpoint.policies:
            return [Problem(message="this engine needs input policies")]
        return []

    @hookimpl(wrapper=True)
    def call_endpoint(self, call: Any) -> Any:
        if call.endpoint.policies and call.user.role != "admin":
            raise MxcpError("replacement engine: admins only")
        return (yield)


def test_another_engine_can_replace_the_policies_plugin(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {**FILES, "tools/only_output.yml": """\
        mxcp: 1
        tool:
          name: only_output
          return: {type: integer}
          source: {code: "SELECT 1"}
          policies: {output: [{condition: "true", action: deny}]}
        """})
    engine = ReplacementEngine()
    project = open_project(root, disabled_plugins=["policies"], extra_plugins=[("engine", engine)])
    (bad,) = project.endpoints().invalid
    assert bad.name == "only_output" and bad.message == "this engine needs input policies"
    assert sorted(engine.checked) == ["employee", "only_output", "open_tool"]
    with Runtime(project, skip_invalid=True) as runtime:
        with pytest.raises(MxcpError, match="replacement engine: admins only"):
            runtime.call("tool", "employee", {"id": 1})
        assert runtime.call("tool", "employee", {"id": 1}, user={"role": "admin"})["name"] == "Ann"


def test_a_check_endpoint_hook_that_raises_makes_the_endpoint_invalid(make_project, tmp_path) -> None:
    class Buggy:
        @hookimpl
        def check_endpoint(self, endpoint, project):
            raise KeyError("oops")

    root = make_project(tmp_path / "proj", {"tools/open_tool.yml": FILES["tools/open_tool.yml"]})
    (bad,) = open_project(root, extra_plugins=[("buggy", Buggy())]).endpoints().invalid
    assert bad.message == "plugin 'buggy' could not check it: KeyError: 'oops'"


def test_policies_cost_little_per_call(runtime) -> None:
    """Not a timing test (bench/bench_policies.py measures): the conditions are compiled once, not per call."""
    from mxcp_plugins import policies

    cache = runtime.context.state[policies.STATE_KEY]
    compiled = cache[("tool", "employee")][1]
    runtime.call("tool", "employee", {"id": 1}, user={"role": "admin"})
    runtime.call("tool", "employee", {"id": 2}, user={"role": "hr"})
    assert cache[("tool", "employee")][1] is compiled


def test_conditions_read_claims_including_dates_from_yaml(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/c.yml": """\
        mxcp: 1
        tool:
          name: c
          return: {type: integer}
          source: {code: "SELECT 1"}
          policies:
            input:
              - {condition: "user.claims.hired > '2020-01-01' || user.claims.department != 'hr'", action: deny,
                 reason: "Senior HR only"}
        """})
    import datetime

    with Runtime(open_project(root)) as runtime:
        senior = {"role": "user", "claims": {"department": "hr", "hired": datetime.date(2015, 3, 1)}}
        assert runtime.call("tool", "c", user=senior) == 1
        junior = {"role": "user", "claims": {"department": "hr", "hired": datetime.date(2023, 3, 1)}}
        with pytest.raises(MxcpError, match="Senior HR only"):
            runtime.call("tool", "c", user=junior)
        with pytest.raises(MxcpError, match="its condition could not be evaluated"):  # no claims at all
            runtime.call("tool", "c", user={"role": "user"})


def one_tool(make_project, tmp_path, policies: str, parameters: str = "[]", sql: str = "SELECT '1'") -> Any:
    text = (f"mxcp: 1\ntool:\n  name: t\n  parameters: {parameters}\n  return: {{type: string}}\n"
            f"  source: {{code: \"{sql}\"}}\n  policies:\n" + textwrap.indent(textwrap.dedent(policies), "    "))
    return open_project(make_project(tmp_path / "proj", {"tools/t.yml": text}))


def test_a_parameter_named_response_is_an_argument_to_input_policies(make_project, tmp_path) -> None:
    project = one_tool(make_project, tmp_path, """\
        input:
          - {condition: "response == 'forbidden'", action: deny, reason: "no"}
        output:
          - {condition: "response == 'masked'", action: warn}
        """, parameters="[{name: response, type: string, default: null}]", sql="SELECT coalesce($response, 'x')")
    with Runtime(project) as runtime:
        assert runtime.call("tool", "t", {"response": "ok"}) == "ok"
        with pytest.raises(MxcpError, match="denied by input policy 1 of tool 't': no"):
            runtime.call("tool", "t", {"response": "forbidden"})


@pytest.mark.parametrize("condition", [
    "// guests can't call this\nhas(user.role) && user.role == 'guest'",
    "has(.user.role) && .user.role == 'guest'",
    "has(user . role) && user . role == 'guest'",
    "'role' in user && user['role'] == 'guest'",
])
def test_every_user_field_a_condition_reads_is_handed_to_it(condition, make_project, tmp_path) -> None:
    """What a condition needs is read off its text erring towards too much: `has()` on a field that was not handed
    over would be false, and let a guest through."""
    project = one_tool(make_project, tmp_path, f"""\
        input:
          - condition: {json.dumps(condition)}
            action: deny
            reason: "No guests"
        """)
    with Runtime(project) as runtime:
        assert runtime.call("tool", "t", user={"role": "admin"}) == "1"
        with pytest.raises(MxcpError, match="No guests"):
            runtime.call("tool", "t", user={"role": "guest"})


def test_fields_belong_to_field_actions_only(make_project, tmp_path) -> None:
    project = one_tool(make_project, tmp_path, """\
        output:
          - {condition: "true", action: filter_sensitive_fields, fields: 5}
        """)
    (bad,) = project.endpoints().invalid
    assert bad.message.endswith("fields: only filter_fields and mask_fields take fields")


def test_claims_must_be_a_mapping() -> None:
    from mxcp_core.records import UserContext

    with pytest.raises(TypeError, match="user context: claims must be a mapping, got str"):
        UserContext.from_mapping({"username": "a", "claims": "abc"})
