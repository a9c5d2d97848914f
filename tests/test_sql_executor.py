"""The SQL executor on a real DuckDB file: binding, result shaping, conversions, validation, threads."""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from executor_helpers import started, tool
from mxcp_core.errors import ExecutionError, MxcpError, ValidationError
from mxcp_core.project import open_project
from mxcp_core.validation import validate_project

SETUP = tool(
    "setup",
    'code: "CREATE OR REPLACE TABLE people AS SELECT * FROM (VALUES (1, \'Ada\', 36), (2, \'Bob\', 41)) '
    't(id, name, age); SELECT count(*) AS n FROM people"',
    returns="{type: integer}",
)


@pytest.fixture
def project(make_project, tmp_path):
    return make_project(tmp_path / "p", {
        "tools/setup.yml": SETUP,
        "tools/people.yml": tool("people", 'code: "SELECT * FROM people ORDER BY id"', returns="{type: array}"),
        "tools/untyped.yml": tool("untyped", 'code: "SELECT id FROM people ORDER BY id"'),
        "tools/person.yml": tool(
            "person", "file: ../sql/person.sql",
            parameters="[{name: id, type: integer, minimum: 1}]", returns="{type: object}",
        ),
        "sql/person.sql": "SELECT id, name FROM people WHERE id = $id\n",
        "tools/everyone_as_object.yml": tool(
            "everyone_as_object", 'code: "SELECT * FROM people"', returns="{type: object}"),
        "tools/count_older.yml": tool(
            "count_older", 'code: "SELECT count(*) FROM people WHERE age > $age"',
            parameters="[{name: age, type: integer, default: 40}]", returns="{type: integer}",
        ),
        "tools/two_columns.yml": tool("two_columns", 'code: "SELECT 1 AS a, 2 AS b"', returns="{type: integer}"),
        "tools/greet.yml": tool(
            "greet", "code: \"SELECT 'Hello ' || $name AS greeting\"",
            parameters="[{name: name, type: string, pattern: '^[A-Z][a-z]+$'}]", returns="{type: string}",
        ),
        "tools/echo_text.yml": tool(
            "echo_text", 'code: "SELECT $text AS text, (SELECT count(*) FROM people) AS people"',
            parameters="[{name: text, type: string}]", returns="{type: object}",
        ),
        "tools/temporal.yml": tool(
            "temporal",
            'code: "SELECT typeof($day) AS day_type, $day + INTERVAL 1 DAY AS next_day, typeof($at) AS at_type, '
            'typeof($clock) AS clock_type"',
            parameters="[{name: day, type: string, format: date}, {name: at, type: string, format: date-time}, "
                       "{name: clock, type: string, format: time}]",
            returns="{type: object}",
        ),
        "tools/broken.yml": tool("broken", 'code: "SELECT * FROM no_such_table"'),
        "tools/add_person.yml": tool(
            "add_person", 'code: "INSERT INTO people VALUES ($id, $name, 20); SELECT count(*) FROM people"',
            parameters="[{name: id, type: integer}, {name: name, type: string}]", returns="{type: integer}",
        ),
    })


def test_array_object_and_scalar_results(project):
    with started(project) as runtime:
        assert runtime.call("tool", "setup") == 2
        assert runtime.call("tool", "people") == [
            {"id": 1, "name": "Ada", "age": 36}, {"id": 2, "name": "Bob", "age": 41}]
        assert runtime.call("tool", "untyped") == [{"id": 1}, {"id": 2}]  # no return type: rows
        assert runtime.call("tool", "person", {"id": 2}) == {"id": 2, "name": "Bob"}
        assert runtime.call("tool", "count_older", {"age": 30}) == 2


def test_object_result_needs_exactly_one_row(project):
    with started(project) as runtime:
        runtime.call("tool", "setup")
        with pytest.raises(ExecutionError, match="exactly one row for an object result, got 0"):
            runtime.call("tool", "person", {"id": 99})
        with pytest.raises(ExecutionError, match="exactly one row for an object result, got 2"):
            runtime.call("tool", "everyone_as_object")


def test_scalar_result_needs_one_row_with_one_column(project):
    with started(project) as runtime:
        with pytest.raises(ExecutionError, match="exactly one column for a scalar result, got 2"):
            runtime.call("tool", "two_columns")


def test_values_are_bound_never_formatted_into_the_sql(project):
    hostile = "x'; DROP TABLE people; --"
    with started(project) as runtime:
        runtime.call("tool", "setup")
        assert runtime.call("tool", "echo_text", {"text": hostile}) == {"text": hostile, "people": 2}
        assert runtime.call("tool", "people")[0]["name"] == "Ada"  # the table survived


def test_defaults_are_applied_and_bound(project):
    with started(project) as runtime:
        runtime.call("tool", "setup")
        assert runtime.call("tool", "count_older") == 1  # age defaults to 40: only Bob


def test_date_and_time_formats_are_converted_before_binding(project):
    with started(project) as runtime:
        result = runtime.call("tool", "temporal", {"day": "2024-02-28", "at": "2024-02-28T10:30:00",
                                                    "clock": "10:30:00"})
    assert result["day_type"] == "DATE"  # a string would have bound as VARCHAR
    assert result["next_day"] == dt.datetime(2024, 2, 29)
    assert result["at_type"] == "TIMESTAMP"
    assert result["clock_type"] == "TIME"


def test_parameter_errors_name_the_parameter_and_the_rule(project):
    with started(project) as runtime:
        with pytest.raises(ValidationError, match=r"^Parameter 'name': does not match pattern .*\(pattern\)$"):
            runtime.call("tool", "greet", {"name": "lowercase"})
        assert runtime.call("tool", "greet", {"name": "Ada"}) == "Hello Ada"
        with pytest.raises(ValidationError, match=r"^Parameter 'id': must be >= 1 \(minimum\)$"):
            runtime.call("tool", "person", {"id": 0})
        with pytest.raises(ValidationError, match=r"^Parameter 'id': expected integer, got string \(type\)$"):
            runtime.call("tool", "person", {"id": "one"})
        with pytest.raises(ValidationError, match="^Required parameter missing: id$"):
            runtime.call("tool", "person", {})
        with pytest.raises(ValidationError, match="^Unknown parameter: idd$"):
            runtime.call("tool", "person", {"id": 1, "idd": 2})


def test_sql_error_is_one_line_without_the_query_or_caret(project):
    with started(project) as runtime:
        with pytest.raises(ExecutionError) as caught:
            runtime.call("tool", "broken")
    message = str(caught.value)
    assert message.startswith("SQL error: Catalog Error: Table with name no_such_table does not exist")
    assert "\n" not in message and "^" not in message and "LINE" not in message


def test_parameters_are_compiled_once_per_endpoint_not_per_call(project, monkeypatch):
    import mxcp_core.execution as execution

    built = []
    original = execution.CompiledParameters

    def counting(params):
        built.append(params)
        return original(params)

    monkeypatch.setattr(execution, "CompiledParameters", counting)
    with started(project) as runtime:
        compiled_at_start = len(built)
        runtime.call("tool", "setup")
        for _ in range(5):
            runtime.call("tool", "person", {"id": 1})
        assert len(built) == compiled_at_start == len(runtime.compiled)


def test_advertised_schema_carries_every_keyword(project):
    with started(project) as runtime:
        schema = runtime.compiled[("tool", "greet")].parameters.json_schema()
        assert schema["properties"]["name"] == {"type": "string", "pattern": "^[A-Z][a-z]+$"}
        assert schema["required"] == ["name"] and schema["additionalProperties"] is False
        older = runtime.compiled[("tool", "count_older")].parameters.json_schema()
        assert older["properties"]["age"] == {"type": "integer", "default": 40} and older["required"] == []


def test_many_threads_share_the_database_each_with_its_own_cursor(project):
    failures = []
    with started(project) as runtime:
        runtime.call("tool", "setup")

        def worker(first_id: int) -> None:
            try:
                for offset in range(10):
                    runtime.call("tool", "add_person", {"id": first_id + offset, "name": "T"})
                    assert runtime.call("tool", "person", {"id": first_id + offset})["name"] == "T"
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(100 + 10 * i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert runtime.call("tool", "count_older", {"age": 0}) == 2 + 80


def test_readonly_profile_makes_writes_fail_with_a_clear_error(project):
    with started(project) as runtime:
        runtime.call("tool", "setup")  # the file exists with its table
    with started(project, readonly=True) as runtime:
        assert runtime.call("tool", "people")[0]["name"] == "Ada"
        with pytest.raises(ExecutionError, match="read-only"):
            runtime.call("tool", "add_person", {"id": 9, "name": "X"})


def test_validate_reports_the_difference_between_declared_and_used_names(make_project, tmp_path):
    root = make_project(tmp_path / "v", {
        "tools/mismatch.yml": tool(
            "mismatch", 'code: "SELECT $a + $c AS total"',
            parameters="[{name: a, type: integer}, {name: b, type: integer}]",
        ),
        "tools/fine.yml": tool("fine", 'code: "SELECT $a AS a"', parameters="[{name: a, type: integer}]"),
        "tools/bad_table.yml": tool("bad_table", 'code: "SELECT * FROM missing_table"'),
    })
    problems = {(p.endpoint, p.message) for p in validate_project(open_project(root))}
    assert ("mismatch", "SQL uses undeclared parameter(s): $c") in problems
    assert ("mismatch", "declared parameter(s) not used in the SQL: b") in problems
    assert not any(endpoint == "fine" for endpoint, _ in problems)
    # Preparing the body finds the missing table without running anything.
    assert any(endpoint == "bad_table" and "missing_table" in message for endpoint, message in problems)


def test_resource_template_values_bind_as_parameters(make_project, tmp_path):
    root = make_project(tmp_path / "r", {
        "resources/item.yml": """
            mxcp: 1
            resource:
              uri: "items://{item_id}"
              parameters: [{name: item_id, type: string}]
              return: {type: object}
              source: {code: "SELECT $item_id AS id, length($item_id) AS size"}
        """,
    })
    with started(root) as runtime:
        assert runtime.call("resource", "items://abc") == {"id": "abc", "size": 3}


def test_prompt_messages_are_rendered_in_mcp_shape(make_project, tmp_path):
    root = make_project(tmp_path / "pr", {
        "prompts/ask.yml": """
            mxcp: 1
            prompt:
              name: ask
              parameters: [{name: topic, type: string}]
              messages:
                - {role: assistant, type: text, prompt: "You know {{ topic }}."}
                - {role: user, type: text, prompt: "Tell me about {{topic}}"}
        """,
    })
    with started(root) as runtime:
        assert runtime.call("prompt", "ask", {"topic": "ducks"}) == [
            {"role": "assistant", "content": {"type": "text", "text": "You know ducks."}},
            {"role": "user", "content": {"type": "text", "text": "Tell me about ducks"}},
        ]


def test_empty_sql_body_is_a_validation_problem(make_project, tmp_path):
    root = make_project(tmp_path / "e", {"tools/empty.yml": tool("empty", "code: \"-- nothing here\"")})
    problems = [p.message for p in validate_project(open_project(root)) if p.endpoint == "empty"]
    assert problems == ["the SQL source is empty"]


def test_unknown_endpoint_suggests_the_closest(project):
    with started(project) as runtime:
        with pytest.raises(MxcpError, match="people"):
            runtime.call("tool", "peple")


def test_one_database_file_per_profile(make_project, tmp_path):
    root = make_project(tmp_path / "profiles", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: dev\nprofiles:\n  dev: {}\n  prod: {}\n",
        "tools/mark.yml": tool("mark", "code: \"CREATE TABLE IF NOT EXISTS marks(p VARCHAR); INSERT INTO marks "
                                      "VALUES ($p); SELECT list(p ORDER BY p) AS ps FROM marks\"",
                               parameters="[{name: p, type: string}]", returns="{type: array}"),
    })
    with started(root) as runtime:
        assert runtime.context.duckdb_path == str(root / "data" / "db-dev.duckdb")
        assert runtime.call("tool", "mark", {"p": "dev"}) == [{"ps": ["dev"]}]
    with started(root, profile="prod") as runtime:
        assert runtime.context.duckdb_path == str(root / "data" / "db-prod.duckdb")
        assert runtime.call("tool", "mark", {"p": "prod"}) == [{"ps": ["prod"]}]  # its own file: no "dev" row
