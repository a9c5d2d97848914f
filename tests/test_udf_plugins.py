"""DuckDB UDF plugins: the seed's plugins/ modules, the original's MXCPPlugin classes, and installed plugins."""
from __future__ import annotations

import datetime as dt
import json
import sys

import pytest

from mxcp_core import hookimpl
from mxcp_core.errors import ConfigError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.udf import MXCPBasePlugin, duckdb_type, function_signature, udf

SQL_TOOL = """\
mxcp: 1
tool:
  name: q
  parameters: [{name: text, type: string}]
  return: {type: string}
  source: {code: "SELECT %s"}
"""

TEXT_PROCESSING = """\
def custom_transform(value: str) -> str:
    return value.upper()


def normalize_text(text):
    return " ".join(text.split()).lower()


def register_functions(conn):
    conn.create_function("custom_upper", custom_transform)
"""

ROTATE_PLUGIN = """\
from mxcp.plugins import MXCPBasePlugin, udf


class MXCPPlugin(MXCPBasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.rotation = int(config.get("rotation", "0"))

    @udf
    def rotate(self, text: str) -> str:
        return "".join(chr((ord(c) - 97 + self.rotation) % 26 + 97) if c.islower() else c for c in text)

    @udf
    def doubled(self, values: list[int]) -> list[int]:
        return [v * 2 for v in values]

    def not_a_udf(self, text: str) -> str:
        return text
"""

PLUGIN_SITE = """\
mxcp: 1
project: demo
profile: default
plugin:
  - {name: rot, module: rotator, config: rot1}
"""

PLUGIN_USER_CONFIG = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        plugin:
          config:
            rot1: {rotation: "1"}
"""


def sql_tool(expression: str) -> str:
    return SQL_TOOL % expression


# -- the seed's form ----------------------------------------------------------------------------------
def test_seed_plugin_functions_and_plugin_object(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "plugins/text_processing.py": TEXT_PROCESSING,
        "tools/q.yml": sql_tool("custom_upper($text)"),
        "tools/normalize.yml": """\
            mxcp: 1
            tool:
              name: normalize
              parameters: [{name: data, type: string}]
              return: {type: object}
              source: {file: ../python/normalize.py}
            """,
        "python/normalize.py": """\
            from mxcp.runtime import plugins

            def normalize(data: str) -> dict:
                text_plugin = plugins.get("text_processing")
                if not text_plugin:
                    return {"error": "text_processing plugin not available"}
                return {"normalized": text_plugin.normalize_text(data), "available": plugins.list()}
            """,
    })
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "q", {"text": "abc"}) == "ABC"
        result = runtime.call("tool", "normalize", {"data": "  Hello   World "})
    assert result == {"normalized": "hello world", "available": ["text_processing"]}


def test_functions_exist_on_every_cursor_and_after_reload(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "plugins/text_processing.py": TEXT_PROCESSING,
        "tools/q.yml": sql_tool("custom_upper($text)"),
    })
    with Runtime(open_project(root)) as runtime:
        with runtime.database.cursor() as first, runtime.database.cursor() as second:
            assert first.execute("SELECT custom_upper('x')").fetchall() == [("X",)]
            assert second.execute("SELECT custom_upper('y')").fetchall() == [("Y",)]
        for round_number in range(2):
            runtime.reload(description=f"test {round_number}")
            runtime.wait_for_reloads()
            assert runtime.call("tool", "q", {"text": f"r{round_number}"}) == f"R{round_number}"
        assert runtime.reload_count == 2


def test_plugins_folder_does_not_shadow_stdlib_or_stay_on_the_path(make_project, tmp_path):
    """plugins/json.py is a plugin, not `json`; its sibling helper is importable while it loads, then dropped."""
    root = make_project(tmp_path / "p", {
        "plugins/json.py": """\
            import json as std_json  # the standard library, even from a file named json.py
            import strutils_for_test

            def register_functions(conn):
                conn.create_function("to_json_text", lambda s: std_json.dumps({"v": strutils_for_test.shout(s)}),
                                     ["VARCHAR"], "VARCHAR")
            """,
        "plugins/strutils_for_test.py": "def shout(s):\n    return s.upper() + '!'\n",
        "tools/q.yml": sql_tool("to_json_text($text)"),
    })
    path_before = list(sys.path)
    with Runtime(open_project(root)) as runtime:
        assert json.loads(runtime.call("tool", "q", {"text": "hi"})) == {"v": "HI!"}
        assert sys.modules["json"] is json
        assert str(root / "plugins") not in sys.path
        assert "strutils_for_test" not in sys.modules
    assert sys.path == path_before


def test_two_projects_in_one_process_keep_their_own_modules(make_project, tmp_path):
    runtimes = []
    for name in ("alpha", "beta"):
        root = make_project(tmp_path / name, {
            "plugins/which.py": """\
                import helpers

                def register_functions(conn):
                    conn.create_function("which_project", lambda: helpers.NAME, [], "VARCHAR")
                """,
            "plugins/helpers.py": f"NAME = '{name}'\n",
            "tools/q.yml": "mxcp: 1\ntool:\n  name: q\n  return: {type: string}\n  source: {code: SELECT which_project()}\n",
        })
        runtimes.append(Runtime(open_project(root)))
    try:
        for runtime in runtimes:
            runtime.start()
        assert [r.call("tool", "q") for r in runtimes] == ["alpha", "beta"]
    finally:
        for runtime in runtimes:
            runtime.stop()


def test_broken_plugin_module_names_the_file(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"plugins/broken.py": "raise RuntimeError('boom at import')\n"})
    runtime = Runtime(open_project(root))
    with pytest.raises(ConfigError) as info:
        runtime.start()
    assert "plugins/broken.py" in str(info.value)
    assert "boom at import" in str(info.value)
    assert not runtime.database.is_open


# -- the original's class form ------------------------------------------------------------------------
def test_class_plugin_with_config_from_user_config(make_project, user_config, tmp_path):
    user_config(PLUGIN_USER_CONFIG)
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": PLUGIN_SITE,
        "plugins/rotator.py": ROTATE_PLUGIN,
        "tools/q.yml": sql_tool("rotate_rot($text)"),
        "tools/info.yml": """\
            mxcp: 1
            tool:
              name: info
              return: {type: object}
              source: {file: ../python/info.py}
            """,
        "python/info.py": """\
            from mxcp.runtime import db, plugins

            def info() -> dict:
                rot = plugins.get("rot")
                return {
                    "config": rot.config,
                    "direct": rot.rotate("xyz"),
                    "doubled": db.execute("SELECT doubled_rot([1, 2, 3]) AS d").fetchone()["d"],
                    "names": plugins.list(),
                }
            """,
    })
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "q", {"text": "abc"}) == "bcd"
        assert runtime.call("tool", "info") == {
            "config": {"rotation": "1"}, "direct": "yza", "doubled": [2, 4, 6], "names": ["rot"],
        }
        with runtime.database.cursor() as cursor:
            names = {row[0] for row in cursor.execute(
                "SELECT function_name FROM duckdb_functions() WHERE function_name LIKE '%_rot'").fetchall()}
        assert names == {"rotate_rot", "doubled_rot"}


def test_class_plugin_without_user_config_gets_an_empty_config(make_project, tmp_path, caplog):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": PLUGIN_SITE,
        "plugins/rotator.py": ROTATE_PLUGIN,
        "tools/q.yml": sql_tool("rotate_rot($text)"),
    })
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "q", {"text": "abc"}) == "abc"
    assert "config 'rot1' is not in the user config" in caplog.text


def test_class_plugin_method_without_hints_is_an_error_naming_it(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: p1, module: loose}\n",
        "plugins/loose.py": """\
            from mxcp.plugins import MXCPBasePlugin, udf

            class MXCPPlugin(MXCPBasePlugin):
                @udf
                def shout(self, text) -> str:
                    return text.upper()
            """,
    })
    with pytest.raises(ConfigError) as info:
        Runtime(open_project(root)).start()
    message = str(info.value)
    assert "shout" in message and "text" in message and "type hint" in message


def test_plugin_module_without_class_is_an_error(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: p1, module: empty}\n",
        "plugins/empty.py": "X = 1\n",
    })
    with pytest.raises(ConfigError, match="module 'empty' has no class MXCPPlugin"):
        Runtime(open_project(root)).start()


def test_class_plugin_from_an_installed_module(make_project, make_dist, tmp_path):
    make_dist("acme-udfs", {"acme_udfs": ROTATE_PLUGIN}, {})
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: r0, module: acme_udfs}\n",
        "tools/q.yml": sql_tool("rotate_r0($text)"),
    })
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "q", {"text": "abc"}) == "abc"


# -- installed plugins implementing register_functions ------------------------------------------------
class ShoutPlugin:
    """What a pip-installed package's plugin module looks like, registered as an object for one test."""

    def __init__(self) -> None:
        self.opened = 0

    @hookimpl
    def register_functions(self, conn, project):
        self.opened += 1
        conn.create_function("shout", lambda s: s.upper() + "!", ["VARCHAR"], "VARCHAR")


def test_installed_plugin_registers_functions_on_every_open(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/q.yml": sql_tool("shout($text)")})
    plugin = ShoutPlugin()
    with Runtime(open_project(root, extra_plugins=[("shout_plugin", plugin)])) as runtime:
        assert runtime.call("tool", "q", {"text": "hey"}) == "HEY!"
        runtime.reload()
        runtime.wait_for_reloads()
        assert runtime.call("tool", "q", {"text": "again"}) == "AGAIN!"
    assert plugin.opened == 2


def test_installed_plugin_by_entry_point(make_project, make_dist, run_mxcp, tmp_path):
    folder = make_dist("acme-shout", {"acme_shout": """\
        from mxcp_core import hookimpl

        @hookimpl
        def register_functions(conn, project):
            conn.create_function("acme_shout", lambda s: s.upper() + "!", ["VARCHAR"], "VARCHAR")
        """}, {"acme_shout": "acme_shout"})
    root = make_project(tmp_path / "p")
    result = run_mxcp("query", "SELECT acme_shout('hi') AS v", "--json-output", cwd=root, pythonpath=[folder])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "ok", "result": [{"v": "HI!"}]}


# -- through the CLI ----------------------------------------------------------------------------------
def test_cli_query_sees_both_plugin_forms(make_project, user_config, run_mxcp, tmp_path):
    config_file = user_config(PLUGIN_USER_CONFIG)
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": PLUGIN_SITE,
        "plugins/rotator.py": ROTATE_PLUGIN,
        "plugins/text_processing.py": TEXT_PROCESSING,
    })
    result = run_mxcp(
        "query", "SELECT custom_upper('a') AS u, rotate_rot('abc') AS r", "--json-output",
        cwd=root, env={"MXCP_CONFIG": str(config_file)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"] == [{"u": "A", "r": "bcd"}]


# -- the type mapping ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("hint", "expected"), [
    (str, "VARCHAR"), (int, "INTEGER"), (float, "DOUBLE"), (bool, "BOOLEAN"), (bytes, "BLOB"),
    (dt.date, "DATE"), (dt.time, "TIME"), (dt.datetime, "TIMESTAMP"),
    (list[str], "VARCHAR[]"), (list[list[int]], "INTEGER[][]"), (str | None, "VARCHAR"),
])
def test_python_hints_map_to_duckdb_types(hint, expected):
    assert duckdb_type(hint, where="m") == expected


def test_unsupported_hint_names_the_method():
    class Plugin(MXCPBasePlugin):
        @udf
        def lookup(self, mapping: dict) -> str:
            return ""

    with pytest.raises(ConfigError, match="method 'lookup', parameter 'mapping'.*dict"):
        function_signature(Plugin({}).lookup, where="method 'lookup'")


def test_signature_of_a_bound_method_skips_self():
    class Plugin(MXCPBasePlugin):
        @udf
        def span(self, start: dt.date, days: int) -> list[dt.date]:
            return []

    plugin = Plugin({"k": "v"})
    assert plugin.config == {"k": "v"}
    assert function_signature(plugin.span) == (["DATE", "INTEGER"], "DATE[]")
    assert [name for name, _ in plugin.udf_methods()] == ["span"]


def test_mxcp_plugins_import_path_is_the_same_objects():
    from mxcp.plugins import MXCPBasePlugin as Base, udf as marker

    assert Base is MXCPBasePlugin and marker is udf

