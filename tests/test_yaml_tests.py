"""`tests:` blocks: every assertion passing and failing, user_context through the call wrapper hook, `mxcp test`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mxcp_core import hookimpl
from mxcp_core.errors import MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.testing_runner import check_assertions, run_tests

EMPLOYEES = """\
mxcp: 1
tool:
  name: employees
  description: List employees.
  parameters:
    - {name: dept, type: string, description: Department, default: ""}
  return: {type: array, items: {type: object}}
  source:
    code: |
      SELECT * FROM (VALUES (1, 'Alice', 'eng', DATE '2020-01-02'), (2, 'Bob', 'ops', DATE '2021-03-04'))
        t(id, name, dept, hired)
      WHERE $dept = '' OR dept = $dept ORDER BY id
  tests:
    - name: all_two
      result_length: 2
      result_contains: {name: Bob}
      result_contains_item: {name: Alice, dept: eng}
      result_contains_all: [{name: Alice}, {id: 2, name: Bob}]
      result_not_contains: [salary]
      result_contains_text: Alice
    - name: hired_date_compares_as_iso
      arguments: [{key: dept, value: eng}]
      result: [{id: 1, name: Alice, dept: eng, hired: 2020-01-02}]
    - name: bad_length
      result_length: 3
    - name: bad_contains
      result_contains: {name: Carol}
    - name: bad_item
      result_contains_item: {name: Alice, dept: ops}
    - name: bad_all
      result_contains_all: [{name: Alice}, {name: Zed}]
    - name: bad_not_contains
      result_not_contains: [dept]
    - name: bad_text
      result_contains_text: Carol
    - name: bad_argument_value
      arguments: [{key: dept, value: 5}]
"""

PERSON = """\
mxcp: 1
tool:
  name: person
  description: One person.
  parameters:
    - {name: id, type: integer, description: Id}
  return:
    type: object
    properties:
      id: {type: integer}
      name: {type: string}
      active: {type: boolean}
  source:
    code: "SELECT $id AS id, 'Alice' AS name, true AS active"
  tests:
    - name: exact
      arguments: [{key: id, value: 1}]
      result: {id: 1, name: Alice, active: true}
      result_contains: {name: Alice}
      result_not_contains: [salary, ssn]
    - name: bad_exact
      arguments: [{key: id, value: 1}]
      result: {id: 1, name: Alice, active: 1}
    - name: bad_subset
      arguments: [{key: id, value: 1}]
      result_contains: {name: Bob}
    - name: bad_missing_key
      arguments: [{key: id, value: 1}]
      result_contains: {salary: 10}
    - name: bad_forbidden_key
      arguments: [{key: id, value: 1}]
      result_not_contains: [name]
"""

GREETING = """\
mxcp: 1
tool:
  name: greeting
  description: Greets.
  parameters:
    - {name: who, type: string, description: Who}
  return: {type: string}
  source:
    code: "SELECT 'Hello, ' || $who || '!'"
  tests:
    - name: scalar_membership
      arguments: [{key: who, value: World}]
      result: "Hello, World!"
      result_contains: "World"
      result_contains_text: "Hello"
    - name: bad_scalar
      arguments: [{key: who, value: World}]
      result_contains: "Moon"
"""

SECRET = """\
mxcp: 1
tool:
  name: secret_report
  description: Admins only.
  return: {type: string}
  source:
    code: "SELECT 'top secret'"
  tests:
    - name: as_admin
      user_context: {role: admin}
      result: top secret
    - name: as_guest
      user_context: {role: guest}
      result: top secret
    - name: anonymous
      result: top secret
"""

PROMPT = """\
mxcp: 1
prompt:
  name: ask
  description: Ask about a topic.
  parameters:
    - {name: topic, type: string, description: Topic}
  messages:
    - {role: user, type: text, prompt: "Tell me about {{ topic }}"}
  tests:
    - name: renders
      arguments: [{key: topic, value: ducks}]
      result_contains_text: "Tell me about ducks"
      result_length: 1
"""

FILES = {
    "tools/employees.yml": EMPLOYEES,
    "tools/person.yml": PERSON,
    "tools/greeting.yml": GREETING,
    "tools/secret.yml": SECRET,
    "prompts/ask.yml": PROMPT,
}


class AdminOnly:
    """A `call_endpoint` wrapper standing in for a policy: secret_report needs role admin."""

    def __init__(self) -> None:
        self.callers: list[str] = []

    @hookimpl(wrapper=True)
    def call_endpoint(self, call: Any) -> Any:
        self.callers.append(call.caller)
        if call.endpoint.name == "secret_report" and (call.user is None or call.user.role != "admin"):
            raise MxcpError("denied: admins only")
        return (yield)


@pytest.fixture
def outcomes(tmp_path: Path, make_project: Any) -> tuple[dict[str, Any], AdminOnly]:
    root = make_project(tmp_path / "proj", FILES)
    guard = AdminOnly()
    project = open_project(root, extra_plugins=[("admin_only", guard)])
    with Runtime(project) as runtime:
        results = run_tests(runtime)
    return {f"{o.endpoint}/{o.name}": o for o in results}, guard


def test_passing_assertions_of_every_kind(outcomes: Any) -> None:
    by_name, _ = outcomes
    for name in ("employees/all_two", "employees/hired_date_compares_as_iso", "person/exact",
                 "greeting/scalar_membership", "ask/renders", "secret_report/as_admin"):
        assert by_name[name].status == "passed", (name, by_name[name].message)
        assert by_name[name].message is None


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("employees/bad_length", ["result_length", "expected 3 items, got 2"]),
        ("employees/bad_contains", ["result_contains", "no item contains", "Carol"]),
        ("employees/bad_item", ["result_contains_item", "no item matches", '"ops"']),
        ("employees/bad_all", ["result_contains_all", "1 of 2 items not found", "Zed"]),
        ("employees/bad_not_contains", ["result_not_contains", "item 0 has field(s) dept"]),
        ("employees/bad_text", ["result_contains_text", '"Carol" not found']),
        ("person/bad_exact", ["result:", "expected", '"active": 1']),
        ("person/bad_subset", ["result_contains", "key 'name' is \"Alice\", expected \"Bob\""]),
        ("person/bad_missing_key", ["result_contains", "key 'salary' is missing"]),
        ("person/bad_forbidden_key", ["result_not_contains", "field(s) name"]),
        ("greeting/bad_scalar", ["result_contains", "does not contain", "Moon"]),
    ],
)
def test_failing_assertion_says_why(outcomes: Any, name: str, fragments: list[str]) -> None:
    by_name, _ = outcomes
    outcome = by_name[name]
    assert outcome.status == "failed"
    for fragment in fragments:
        assert fragment in outcome.message, (fragment, outcome.message)


def test_invalid_arguments_are_an_error_not_a_crash(outcomes: Any) -> None:
    by_name, _ = outcomes
    outcome = by_name["employees/bad_argument_value"]
    assert outcome.status == "error"
    assert "dept" in outcome.message


def test_user_context_reaches_the_call_wrapper(outcomes: Any) -> None:
    by_name, guard = outcomes
    assert by_name["secret_report/as_admin"].status == "passed"
    for denied in ("secret_report/as_guest", "secret_report/anonymous"):
        assert by_name[denied].status == "error"
        assert "denied: admins only" in by_name[denied].message
    # Every test call went through the wrapper, marked as a test call.
    assert len(guard.callers) == len(by_name) - 1  # bad_argument_value fails validation before the hook
    assert set(guard.callers) == {"test"}


def test_only_one_endpoint_and_unknown_name(tmp_path: Path, make_project: Any) -> None:
    root = make_project(tmp_path / "proj", FILES)
    with Runtime(open_project(root)) as runtime:
        only = run_tests(runtime, only_kind="tool", only_name="person")
        assert {o.endpoint for o in only} == {"person"} and len(only) == 5
        with pytest.raises(MxcpError, match="did you mean 'person'"):
            run_tests(runtime, only_kind="tool", only_name="persn")


def test_comparison_is_strict_about_types() -> None:
    assert check_assertions({"result": [1, 2]}, [1, 2]) == []
    assert check_assertions({"result": 1}, 1.0) == []
    assert check_assertions({"result": True}, 1) != []
    assert check_assertions({"result": {"a": 1}}, {"a": 1, "b": 2}) != []
    assert check_assertions({"result_not_contains": ["b"]}, ["a", "b"]) != []
    assert check_assertions({"result_length": 2}, "abc")[0] == "result_length: expected 2 characters, got 3"


def test_unknown_test_key_is_rejected_with_a_suggestion(tmp_path: Path, make_project: Any, run_mxcp: Any) -> None:
    bad = EMPLOYEES.replace("result_length: 2", "result_lenght: 2")
    root = make_project(tmp_path / "proj", {"tools/employees.yml": bad})
    registry = open_project(root).endpoints()
    (invalid,) = registry.invalid
    assert "unknown test key 'result_lenght'" in invalid.message
    assert "did you mean 'result_length'" in invalid.message
    # `mxcp test` counts an endpoint that does not parse as a failure.
    completed = run_mxcp("test", "--json-output", cwd=root)
    assert completed.returncode == 1
    assert json.loads(completed.stdout)["result"]["summary"]["error"] == 1


def test_cli_exit_codes_and_json_shape(tmp_path: Path, make_project: Any, run_mxcp: Any) -> None:
    root = make_project(tmp_path / "proj", FILES)

    greeting = run_mxcp("test", "tool", "greeting", "--json-output", cwd=root)
    assert greeting.returncode == 1  # greeting has one failing test
    payload = json.loads(greeting.stdout)
    assert payload["status"] == "error" and payload["error"] == "1 test failed"
    tests = payload["result"]["tests"]
    assert [(t["endpoint"], t["name"], t["status"]) for t in tests] == [
        ("greeting", "scalar_membership", "passed"),
        ("greeting", "bad_scalar", "failed"),
    ]
    assert all(set(t) >= {"endpoint", "name", "status", "message", "duration_ms"} for t in tests)
    assert payload["result"]["summary"] == {"total": 2, "passed": 1, "failed": 1, "error": 0}

    only_prompt = run_mxcp("test", "ask", "--json-output", cwd=root)  # a name alone: any kind
    assert only_prompt.returncode == 0, only_prompt.stdout + only_prompt.stderr
    assert json.loads(only_prompt.stdout)["status"] == "ok"

    human = run_mxcp("test", cwd=root)
    assert human.returncode == 1
    assert "Test results" in human.stdout and "bad_length" in human.stdout
    assert "failed" in human.stdout.splitlines()[-1]

    missing = run_mxcp("test", "tool", "nope", cwd=root)
    assert missing.returncode == 1 and "tool 'nope' not found" in missing.stderr


TOKEN_TOOL = """\
mxcp: 1
tool:
  name: issue_token
  return:
    type: object
    properties:
      user: {type: string}
      token: {type: string, sensitive: true}
  source:
    code: "SELECT 'ann' AS user, 'tok-hunter2-very-secret' AS token"
  tests:
    - name: wrong_user
      result: {user: bob, token: x}
"""


def test_failure_messages_do_not_quote_sensitive_result_values(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/issue_token.yml": TOKEN_TOOL})
    with Runtime(open_project(root)) as runtime:
        (outcome,) = run_tests(runtime)
    assert outcome.status == "failed"
    assert "ann" in outcome.message and "[REDACTED]" in outcome.message
    assert "hunter2" not in outcome.message


EXPECT_ERROR = """\
mxcp: 1
tool:
  name: guarded
  return: {type: object, properties: {user: {type: string}, token: {type: string, sensitive: true}}}
  source:
    code: "SELECT 'ann' AS user, 'hunter2-token' AS token"
  tests:
    - name: denied_as_expected
      user_context: {role: guest}
      expect_error: "admins only"
    - name: denied_for_another_reason
      user_context: {role: guest}
      expect_error: "sign in first"
    - name: not_denied
      user_context: {role: admin}
      expect_error: "admins only"
"""


class GuardedAdminOnly:
    @hookimpl(wrapper=True)
    def call_endpoint(self, call: Any) -> Any:
        if call.user.role != "admin":
            raise MxcpError("denied: admins only")
        return (yield)


def test_expect_error_asserts_a_denial_by_its_message(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {"tools/guarded.yml": EXPECT_ERROR})
    with Runtime(open_project(root, extra_plugins=[("guard", GuardedAdminOnly())])) as runtime:
        by_name = {o.name: o for o in run_tests(runtime)}
    assert by_name["denied_as_expected"].status == "passed"
    wrong = by_name["denied_for_another_reason"]
    assert wrong.status == "failed"
    assert wrong.message == 'expected an error containing "sign in first", got: denied: admins only'
    returned = by_name["not_denied"]
    assert returned.status == "failed" and returned.message.startswith(
        'expected an error containing "admins only", but the call returned {"user": "ann"')
    assert "hunter2-token" not in returned.message and "[REDACTED]" in returned.message
    both = EXPECT_ERROR + '    - {name: both, expect_error: "admins only", result: {user: ann}}\n'
    (bad,) = open_project(make_project(tmp_path / "both", {"tools/guarded.yml": both})).endpoints().invalid
    assert "line 17: tool.tests[3]: expect_error cannot be combined with result assertions" in bad.message
