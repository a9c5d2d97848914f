"""Endpoint discovery: YAML files under the configured folders, and endpoints plugins provide from Python alone."""
from __future__ import annotations

from mxcp_core import hookimpl
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.records import PromptDefinition, ResourceDefinition, ToolDefinition
from mxcp_core.typesystem import parse_parameters, parse_type

SQL_TOOL = """\
mxcp: 1
tool:
  name: {name}
  description: {name} tool
  parameters:
    - {{name: x, type: integer}}
  return: {{type: integer}}
  source: {{code: "SELECT $x * 2"}}
"""


def sql_tool(name: str) -> str:
    return SQL_TOOL.format(name=name)


def test_yml_and_yaml_files_are_discovered_recursively(make_project, tmp_path):
    """The original ignored `.yaml`."""
    root = make_project(tmp_path / "p", {
        "tools/a.yml": sql_tool("from_yml"),
        "tools/nested/b.yaml": sql_tool("from_yaml"),
        "tools/.hidden/c.yml": sql_tool("hidden"),
        "resources/r.yaml": 'mxcp: 1\nresource:\n  uri: "data://static"\n  source: {code: "SELECT 1 AS one"}\n',
        "prompts/p.yml": "mxcp: 1\nprompt:\n  name: greet\n  messages:\n    - {role: user, prompt: hi}\n",
    })
    registry = open_project(root).endpoints()
    assert sorted(registry.tools) == ["from_yaml", "from_yml"]
    assert registry.tools["from_yaml"].origin == "tools/nested/b.yaml"
    assert list(registry.resources) == ["data://static"]
    assert isinstance(registry.prompts["greet"], PromptDefinition)
    assert registry.invalid == []
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "from_yaml", {"x": 21}) == 42


def test_configured_paths_are_used(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\npaths: {tools: endpoints/tools}\n"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site, "endpoints/tools/t.yml": sql_tool("moved"), "tools/ignored.yml": sql_tool("ignored"),
    })
    assert list(open_project(root).endpoints().tools) == ["moved"]


def test_language_inferred_from_python_source_file(make_project, tmp_path):
    """The original ran a `.py` source as SQL when `language:` was missing."""
    root = make_project(tmp_path / "p", {
        "tools/shout.yml": """\
            mxcp: 1
            tool:
              name: shout
              parameters: [{name: text, type: string}]
              return: {type: string}
              source: {file: ../python/shout.py}
            """,
        "tools/count.yml": """\
            mxcp: 1
            tool:
              name: count
              return: {type: integer}
              source: {file: ../sql/count.sql}
            """,
        "python/shout.py": "def shout(text):\n    return text.upper() + '!'\n",
        "sql/count.sql": "SELECT 3",
    })
    project = open_project(root)
    assert project.endpoints().tools["shout"].language == "python"
    assert project.endpoints().tools["count"].language == "sql"
    with Runtime(project) as runtime:
        assert runtime.call("tool", "shout", {"text": "hey"}) == "HEY!"
        assert runtime.call("tool", "count") == 3


def test_unknown_language_suffix_is_reported(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/t.yml": "mxcp: 1\ntool:\n  name: t\n  source: {file: ../sql/t.rb}\n",
        "sql/t.rb": "puts 1",
    })
    registry = open_project(root).endpoints()
    assert registry.tools == {}
    assert "cannot tell the language of t.rb" in registry.invalid[0].message


def test_duplicate_tool_names_name_both_files(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/a.yml": sql_tool("same"), "tools/b.yaml": sql_tool("same")})
    registry = open_project(root).endpoints()
    assert len(registry.tools) == 1
    [duplicate] = registry.invalid
    assert "duplicate tool 'same'" in duplicate.message
    assert "tools/a.yml" in duplicate.message and "tools/b.yaml" in duplicate.message


def test_bad_endpoint_yaml_is_reported_with_line_and_others_still_load(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/good.yml": sql_tool("good"),
        "tools/broken.yml": "mxcp: 1\ntool:\n  name: broken\n  source: {code: 'SELECT 1'\n",
        "tools/typo.yml": "mxcp: 1\ntool:\n  name: typo\n  descripton: x\n  source: {code: 'SELECT 1'}\n",
    })
    registry = open_project(root).endpoints()
    assert list(registry.tools) == ["good"]
    by_origin = {bad.origin: bad.message for bad in registry.invalid}
    assert by_origin["tools/broken.yml"].startswith("line 5: invalid YAML")
    assert by_origin["tools/typo.yml"] == (
        "line 4: tool.descripton: unknown key 'descripton' (did you mean 'description'?)"
    )


def test_disabled_endpoints_are_skipped(make_project, tmp_path):
    disabled = sql_tool("off").replace("  name: off", "  name: off\n  enabled: false")
    root = make_project(tmp_path / "p", {"tools/off.yml": disabled})
    assert open_project(root).endpoints().tools == {}


class PythonEndpoints:
    """A third-party plugin that provides a tool, a resource and a prompt without any YAML."""

    @hookimpl
    def provide_tool(self, project):
        return [
            ToolDefinition(
                name="add",
                description="Add two integers.",
                parameters=parse_parameters([{"name": "a", "type": "integer"}, {"name": "b", "type": "integer"}]),
                return_type=parse_type({"type": "integer"}),
                function=lambda a, b: a + b,
            )
        ]

    @hookimpl
    def provide_resource(self, project):
        return [ResourceDefinition(name="version", uri="info://version", function=lambda: {"version": "9"})]

    @hookimpl
    def provide_prompt(self, project):
        return [
            PromptDefinition(
                name="ask",
                parameters=parse_parameters([{"name": "topic", "type": "string"}]),
                messages=({"role": "user", "prompt": "Tell me about {{ topic }}"},),
            )
        ]


def test_plugin_provides_endpoints_from_python_alone(make_project, tmp_path):
    root = make_project(tmp_path / "p")
    project = open_project(root, extra_plugins=[("python_endpoints", PythonEndpoints())])
    registry = project.endpoints()
    assert registry.tools["add"].origin == "plugin 'python_endpoints'"
    assert registry.tools["add"].language is None
    with Runtime(project) as runtime:
        assert runtime.call("tool", "add", {"a": 2, "b": 40}) == 42
        assert runtime.call("resource", "info://version") == {"version": "9"}
        assert runtime.call("prompt", "ask", {"topic": "ducks"}) == [
            {"role": "user", "content": {"type": "text", "text": "Tell me about ducks"}}
        ]


def test_plugin_and_file_defining_the_same_tool_name_both(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/add.yml": sql_tool("add")})
    project = open_project(root, extra_plugins=[("python_endpoints", PythonEndpoints())])
    [duplicate] = project.endpoints().invalid
    assert "tools/add.yml" in duplicate.message and "plugin 'python_endpoints'" in duplicate.message


def test_provider_returning_the_wrong_record_is_reported(make_project, tmp_path):
    class Wrong:
        @hookimpl
        def provide_tool(self, project):
            return [PromptDefinition(name="not_a_tool")]

    project = open_project(make_project(tmp_path / "p"), extra_plugins=[("wrong", Wrong())])
    [bad] = project.endpoints().invalid
    assert "provide_tool returned PromptDefinition; expected ToolDefinition" in bad.message
    assert bad.origin == "plugin 'wrong'"
