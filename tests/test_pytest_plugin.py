"""The pytest plugin for extension authors, exercised the way an author uses it: a test file run by pytester."""
from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# A small plugin and tests an author would write, each using one of the fixtures.
AUTHOR_TESTS = '''
import anyio
import pytest

from mxcp_core import hookimpl
from mxcp_core.records import SecretValue, ToolDefinition
from mxcp_core.testing import tool_result
from mxcp_core.typesystem import parse_parameters, parse_type

HELLO = {
    "mxcp": 1,
    "tool": {
        "name": "hello",
        "language": "python",
        "parameters": [{"name": "name", "type": "string"}],
        "return": {"type": "string"},
        "source": {"file": "../python/hello.py"},
    },
}


class ShoutPlugin:
    """A plugin object: a DuckDB function, a tool and a secret scheme."""

    @hookimpl
    def register_functions(self, conn, project):
        conn.create_function("shout", lambda s: s.upper() + "!", ["VARCHAR"], "VARCHAR")

    @hookimpl
    def provide_tool(self, project):
        return [ToolDefinition(
            name="double",
            parameters=parse_parameters([{"name": "x", "type": "integer"}]),
            return_type=parse_type({"type": "integer"}),
            function=lambda x: x * 2,
        )]

    @hookimpl
    def resolve_secret(self, reference, project):
        if reference.startswith("fake://"):
            return SecretValue(reference[len("fake://"):][::-1])
        return None


@pytest.fixture
def project(mxcp_project_factory):
    return mxcp_project_factory({
        "tools/hello.yml": HELLO,
        "python/hello.py": """
            def hello(name: str) -> str:
                return f"Hello, {name}!"
        """,
        "tools/shout.yml": {"mxcp": 1, "tool": {
            "name": "shout_it", "parameters": [{"name": "s", "type": "string"}],
            "return": {"type": "string"}, "source": {"code": "SELECT shout($s)"}}},
    })


def test_factory_builds_and_calls(project):
    assert (project.root / "mxcp-site.yml").is_file()
    assert project.call("tool", "hello", {"name": "Ada"}) == "Hello, Ada!"
    with project.runtime() as runtime:
        assert runtime.call("tool", "hello", {"name": "Bo"}) == "Hello, Bo!"
    assert "hello" in project.open().endpoints().tools


def test_factory_copies_a_folder(project, mxcp_project_factory):
    copy = mxcp_project_factory(project.root)
    assert copy.root != project.root
    assert copy.tool("hello", name="Cy") == "Hello, Cy!"


def test_plugin_registered_for_this_test(project, mxcp_plugin):
    mxcp_plugin(ShoutPlugin(), name="shout")
    assert project.call("tool", "shout_it", {"s": "hey"}) == "HEY!"
    assert project.call("tool", "double", {"x": 21}) == 42


def test_plugin_gone_in_the_next_test(project):
    assert "double" not in project.open().endpoints().tools


def test_secret_scheme_of_a_test_plugin(mxcp_project_factory, mxcp_plugin):
    mxcp_plugin(ShoutPlugin(), name="shout")
    project = mxcp_project_factory(
        {"python/s.py": "from mxcp.runtime import config\\n"
                        "def s() -> str:\\n    return config.get_secret('k')['value']\\n",
         "tools/s.yml": {"mxcp": 1, "tool": {"name": "s", "return": {"type": "string"},
                                           "language": "python", "source": {"file": "../python/s.py"}}}},
        user_config={"mxcp": 1, "projects": {"test": {"profiles": {"default": {
            "secrets": [{"name": "k", "type": "custom", "parameters": {"value": "fake://terces"}}]}}}}},
    )
    assert project.tool("s") == "secret"


def test_async_client(project, mxcp_client, mxcp_plugin):
    mxcp_plugin(ShoutPlugin(), name="shout")

    async def main():
        async with mxcp_client(project) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("hello", {"name": "MCP"})
            return names, tool_result(result)

    names, value = anyio.run(main)
    assert {"hello", "shout_it", "double"} <= names
    assert value == "Hello, MCP!"


def test_sync_client_helper(project, mxcp_client_call):
    result = mxcp_client_call(project, lambda client: client.call_tool("hello", {"name": "sync"}))
    assert tool_result(result) == "Hello, sync!"


def test_home_is_isolated(mxcp_project_factory, tmp_path):
    import os
    mxcp_project_factory()
    assert "MXCP_CONFIG" not in os.environ
    assert os.environ["HOME"] != os.path.expanduser("~root")
'''


def test_every_fixture_works_in_an_authors_test_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_author=AUTHOR_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


def test_a_failing_call_fails_the_authors_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fail=textwrap.dedent('''
        def test_unknown_tool(mxcp_project_factory):
            mxcp_project_factory({"tools/x.yml": {"mxcp": 1, "tool": {
                "name": "x", "return": {"type": "integer"}, "source": {"code": "SELECT 1"}}}}).tool("y")
    '''))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*tool 'y' not found*"])


def test_installed_plugin_is_replaced_not_doubled(tmp_path, monkeypatch, make_dist) -> None:
    """A package's own tests register its module while the package is installed: the test's copy wins."""
    from mxcp_core.testing import PluginRegistry, ProjectHandle, build_project

    make_dist("acme-tools", {"acme_plugin": textwrap.dedent('''
        from mxcp_core import hookimpl
        @hookimpl
        def register_functions(conn, project):
            conn.create_function("acme", lambda: 7, [], "INTEGER")
    ''')}, {"acme": "acme_plugin"})
    import acme_plugin

    root = build_project(tmp_path / "p", {"tools/a.yml": {"mxcp": 1, "tool": {
        "name": "a", "return": {"type": "integer"}, "source": {"code": "SELECT acme()"}}}})
    registry = PluginRegistry()
    registry.register(acme_plugin, name="acme-under-test")
    handle = ProjectHandle(root, registry)
    project = handle.open()
    assert project.host.failures == []
    assert "acme" not in dict(project.host.pm.list_name_plugin())
    assert handle.tool("a") == 7


def test_readme_example_test_passes(pytester: pytest.Pytester) -> None:
    """The example test shown in README.md's "Testing plugins" section runs as written."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Testing plugins", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    pytester.makepyfile(test_readme_example=code)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
