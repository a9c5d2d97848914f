"""The original MXCP's leftover import paths: `from mxcp.runtime import mcp` (log entries and progress) and
`from mxcp.plugins import on_init, on_shutdown` (lifecycle of UDF plugins)."""
from __future__ import annotations

from typing import Any

import anyio
import mcp as mcp_sdk
from mcp.client.stdio import StdioServerParameters, stdio_client

from executor_helpers import python_tool
from server_helpers import mxcp_command, serve_env

SYNC_AND_ASYNC = """\
from mxcp.runtime import mcp


def steps(count: int) -> int:
    for step in range(count):
        mcp.info(f"sync step {step}")
        mcp.progress(step + 1, count, f"sync {step + 1}/{count}")
    mcp.debug("sync done", rows=count)
    return count


async def steps_async(count: int) -> int:
    await mcp.warning("async starting")
    for step in range(count):
        await mcp.progress(step + 1, count)
    await mcp.error("async done")
    return count
"""

PARAMS = "[{name: count, type: integer}]"
FILES = {
    "tools/steps.yml": python_tool("steps", "steps.py", parameters=PARAMS, returns="{type: integer}"),
    "tools/steps_async.yml": python_tool("steps_async", "steps.py", parameters=PARAMS, returns="{type: integer}"),
    "python/steps.py": SYNC_AND_ASYNC,
}


def test_mcp_log_and_progress_reach_a_stdio_client_from_sync_and_async_tools(make_project, tmp_path):
    root = make_project(tmp_path / "p", FILES)
    logs: list[tuple[str, Any]] = []
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_log(params):
        logs.append((params.level, params.data))

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    command = mxcp_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio"],
                                   cwd=root, env=serve_env())

    async def main():
        with open(tmp_path / "stderr.txt", "w") as errlog:
            async with mcp_sdk.Client(stdio_client(params, errlog=errlog), logging_callback=on_log,
                                      log_level="debug") as client:
                sync = await client.call_tool("steps", {"count": 2}, progress_callback=on_progress)
                asynchronous = await client.call_tool("steps_async", {"count": 2}, progress_callback=on_progress)
                return sync, asynchronous

    sync, asynchronous = anyio.run(main)
    assert not sync.is_error and not asynchronous.is_error, (sync, asynchronous)
    assert logs == [("info", "sync step 0"), ("info", "sync step 1"),
                    ("debug", {"message": "sync done", "rows": 2}),
                    ("warning", "async starting"), ("error", "async done")]
    assert progress == [(1.0, 2.0, "sync 1/2"), (2.0, 2.0, "sync 2/2"), (1.0, 2.0, None), (2.0, 2.0, None)]


def test_mcp_log_outside_a_server_goes_to_the_log(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", FILES)
    for name in ("steps", "steps_async"):
        result = run_mxcp("run", "tool", name, "-p", "count=2", cwd=root)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith("2")
    assert "async starting" in result.stderr and "async done" in result.stderr


UDF_WITH_LIFECYCLE = """\
import os

from mxcp.plugins import MXCPBasePlugin, on_init, on_shutdown, udf

MARKS = os.environ["MXCP_TEST_MARKS"]


def mark(text):
    with open(MARKS, "a") as f:
        f.write(text + "\\n")


@on_init
def module_ready():
    mark("module init")


class MXCPPlugin(MXCPBasePlugin):
    @udf
    def twice(self, value: int) -> int:
        return value * 2

    @on_init
    def connect(self):
        mark("instance init " + self.config.get("label", "?"))

    @on_shutdown
    async def disconnect(self):
        mark("instance shutdown")
"""


def test_udf_plugins_lifecycle_from_mxcp_plugins(make_project, tmp_path, run_mxcp, user_config):
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                "        plugin: {config: {cfg: {label: ready}}}\n")
    site = "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: calc, module: calc, config: cfg}\n"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site,
        "plugins/calc.py": UDF_WITH_LIFECYCLE,
        "tools/double.yml": "mxcp: 1\ntool:\n  name: double\n  parameters: [{name: v, type: integer}]\n"
                            "  return: {type: integer}\n  source: {code: \"SELECT twice_calc($v)\"}\n",
    })
    marks = tmp_path / "marks.txt"
    result = run_mxcp("run", "tool", "double", "-p", "v=21", cwd=root, env={"MXCP_TEST_MARKS": str(marks)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("42")
    assert marks.read_text().splitlines() == ["module init", "instance init ready", "instance shutdown"]


PROPERTY_PLUGIN = """\
from mxcp.plugins import MXCPBasePlugin, on_shutdown, udf


class MXCPPlugin(MXCPBasePlugin):
    _client = None

    @property
    def client(self):
        if self._client is None:
            raise RuntimeError("not connected yet")  # read only once on_init connected it
        return self._client

    @udf
    def shout(self, text: str) -> str:
        return text.upper()

    @on_shutdown
    def close(self):
        pass
"""


def test_finding_lifecycle_methods_reads_no_property_of_the_instance(make_project, tmp_path, run_mxcp):
    site = "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: p1, module: loud}\n"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site, "plugins/loud.py": PROPERTY_PLUGIN,
        "tools/loud.yml": "mxcp: 1\ntool:\n  name: loud\n  parameters: [{name: t, type: string, description: T}]\n"
                          "  return: {type: string}\n  source: {code: \"SELECT shout_p1($t)\"}\n",
    })
    result = run_mxcp("run", "tool", "loud", "-p", "t=hi", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("HI")


def test_each_reload_runs_the_udf_plugin_code_as_it_is_now(make_project, tmp_path):
    import sys

    from mxcp_core import Runtime, open_project

    site = "mxcp: 1\nproject: demo\nprofile: default\nplugin:\n  - {name: p1, module: ver}\n"
    code = ("from mxcp.plugins import MXCPBasePlugin, udf\n\nclass MXCPPlugin(MXCPBasePlugin):\n"
            "    @udf\n    def version(self) -> str:\n        return 'v{n}'\n")
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site, "plugins/ver.py": code.format(n=0),
        "tools/ver.yml": "mxcp: 1\ntool:\n  name: ver\n  return: {type: string}\n"
                         "  source: {code: \"SELECT version_p1()\"}\n",
    })
    runtime = Runtime(open_project(root))
    with runtime:
        seen = []
        for n in range(1, 31):
            (root / "plugins" / "ver.py").write_text(code.format(n=n))
            runtime.reload(description="test", config=True)
            runtime.wait_for_reloads(timeout=30)
            seen.append(runtime.call("tool", "ver"))
        assert seen == [f"v{n}" for n in range(1, 31)]
        loaded = [name for name in sys.modules if name.startswith("mxcp_plugin_") and name.endswith("_ver")]
        assert len(loaded) == 1, loaded


def test_a_udf_plugin_on_init_that_exits_is_named_as_a_python_module_one_is(make_project, tmp_path, run_mxcp):
    """One runner for user code's lifecycle functions: sys.exit() in a plugins/ @on_init is the project's error."""
    site = "mxcp: 1\nproject: demo\nprofile: default\n"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site,
        "plugins/quits.py": "import sys\nfrom mxcp.plugins import on_init\n\n\ndef register_functions(conn):\n"
                            "    pass\n\n\n@on_init\ndef setup():\n    sys.exit(3)\n",
        "tools/one.yml": "mxcp: 1\ntool:\n  name: one\n  return: {type: integer}\n  source: {code: \"SELECT 1\"}\n",
    })
    done = run_mxcp("run", "tool", "one", cwd=root)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "plugins/quits.py: @on_init function setup() failed: SystemExit: 3" in done.stderr
