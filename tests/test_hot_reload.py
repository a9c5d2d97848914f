"""Hot reload of definitions: SIGHUP (and `serve --watch`) reads the config, secrets and endpoint files again,
swaps in a valid new set atomically, keeps the old one otherwise, and tells clients their lists changed."""
from __future__ import annotations

import signal
import threading
import time

import anyio
import mcp
import pytest

from executor_helpers import python_tool, tool
from mxcp_core import NotFoundError, Runtime, hookimpl, open_project
from server_helpers import health, http_server, run_http, text, wait_for

SITE = "mxcp: 1\nproject: demo\nprofile: default\n"
ONE = tool("one", 'code: "SELECT 1 AS n"', returns="{type: object}")
TWO = tool("two", 'code: "SELECT 2 AS n"', returns="{type: object}")
VERSION_TOOL = python_tool("version", "version.py", returns="{type: string}")


def version_code(value: str, delay: float = 0.0) -> str:
    return f"import time\n\ndef version() -> str:\n    time.sleep({delay})\n    return {value!r}\n"


@pytest.fixture
def runtime(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE, "tools/version.yml": VERSION_TOOL,
                                         "python/version.py": version_code("v1")})
    started = Runtime(open_project(root))
    started.start()
    try:
        yield started
    finally:
        started.stop()


def reload(runtime: Runtime) -> None:
    """What SIGHUP does, waited for."""
    runtime.reload(description="test", config=True)
    runtime.wait_for_reloads(timeout=30)


def served(runtime: Runtime) -> list[str]:
    return sorted(key for kind, key in runtime.compiled if kind == "tool")


def test_a_new_tool_file_is_served_after_a_reload(runtime):
    (runtime.context.root / "tools" / "two.yml").write_text(TWO)
    reload(runtime)
    assert served(runtime) == ["one", "two", "version"]
    assert runtime.call("tool", "two") == {"n": 2}
    assert runtime.generation == 1 and runtime.config_problem is None


def test_a_removed_tool_is_no_longer_served(runtime):
    (runtime.context.root / "tools" / "one.yml").unlink()
    reload(runtime)
    assert served(runtime) == ["version"]
    with pytest.raises(Exception, match="'one' not found"):
        runtime.call("tool", "one")


def test_changed_python_code_is_imported_again(runtime):
    (runtime.context.root / "python" / "version.py").write_text(version_code("v2"))
    reload(runtime)
    assert runtime.call("tool", "version") == "v2"


def test_a_site_config_change_is_taken(runtime):
    """sql_tools: on in mxcp-site.yml adds the built-in SQL tools on reload."""
    (runtime.context.site_file).write_text(SITE + "sql_tools: {enabled: true}\n")
    reload(runtime)
    assert "execute_sql_query" in served(runtime)


@pytest.mark.parametrize("breakage", [
    pytest.param({"tools/two.yml": "mxcp: 1\ntool:\n  name: two\n  source: [oops\n"}, id="unparsable-yaml"),
    pytest.param({"tools/two.yml": tool("two", 'code: "SELECT * FROM no_such_table"')}, id="sql-against-no-table"),
    pytest.param({"tools/two.yml": tool("two", 'code: "SELECT 1"', parameters="[{name: x, type: nonsense}]")},
                 id="bad-parameter-type"),
    pytest.param({"python/version.py": "import no_such_module_anywhere\n"}, id="python-import-fails"),
    pytest.param({"python/version.py": "def version(:\n"}, id="python-syntax-error"),
    pytest.param({"mxcp-site.yml": SITE + "limits: {max_rows: many}\n"}, id="bad-site-config"),
    # A new module whose @on_init fails: the old set must not import it when it comes back.
    pytest.param({"python/extra.py": "from mxcp.runtime import on_init\n\n@on_init\ndef setup():\n"
                                     "    raise RuntimeError('new on_init fails')\n"}, id="new-module-on-init-raises"),
])
def test_an_invalid_new_set_is_refused_and_the_old_one_serves_on(runtime, breakage):
    root = runtime.context.root
    before = runtime.compiled
    for name, content in breakage.items():
        (root / name).write_text(content)
    reload(runtime)
    assert runtime.config_problem, "the refusal is reported"
    assert runtime.unavailable is None
    assert served(runtime) == ["one", "version"]
    assert runtime.call("tool", "one") == {"n": 1}
    # The old Python code runs, not the broken file now on disk.
    assert runtime.call("tool", "version") == "v1"
    assert runtime.compiled is before  # the very definitions it served


def test_a_refused_set_then_fixed_is_taken_and_the_problem_cleared(runtime):
    root = runtime.context.root
    (root / "tools" / "two.yml").write_text(tool("two", 'code: "SELECT * FROM no_such_table"'))
    reload(runtime)
    assert "no_such_table" in runtime.config_problem
    (root / "tools" / "two.yml").write_text(TWO)
    reload(runtime)
    assert runtime.config_problem is None and runtime.call("tool", "two") == {"n": 2}


def test_a_call_in_flight_finishes_on_the_old_definitions(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/version.yml": VERSION_TOOL,
                                         "python/version.py": version_code("old", delay=1.0)})
    runtime = Runtime(open_project(root))
    runtime.start()
    try:
        results: list[str] = []
        worker = threading.Thread(target=lambda: results.append(runtime.call("tool", "version")))
        worker.start()
        time.sleep(0.3)  # the call is running
        (root / "python" / "version.py").write_text(version_code("new"))
        reload(runtime)
        worker.join(timeout=10)
        assert results == ["old"]
        assert runtime.call("tool", "version") == "new"
    finally:
        runtime.stop()


# -- served: what clients see ----------------------------------------------------------------------------------


def test_sighup_over_http_serves_new_tools_notifies_clients_and_reports_a_refusal(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    notified: list[str] = []

    async def on_message(message):
        method = getattr(getattr(message, "root", message), "method", None)
        if method:
            notified.append(method)

    with http_server(root) as (base, process):
        url = f"{base}/mcp"

        async def session():
            async with mcp.Client(url, message_handler=on_message, mode="legacy") as client:
                before = sorted(t.name for t in (await client.list_tools()).tools)
                (root / "tools" / "two.yml").write_text(TWO)
                process.send_signal(signal.SIGHUP)
                with anyio.fail_after(15):
                    while "notifications/tools/list_changed" not in notified:
                        await anyio.sleep(0.05)
                after = sorted(t.name for t in (await client.list_tools()).tools)
                return before, after, await client.call_tool("two", {})

        before, after, result = anyio.run(session)
        assert "one" in before and "two" not in before and set(after) - set(before) == {"two"}
        assert result.structured_content == {"n": 2}
        assert "notifications/resources/list_changed" not in notified  # only the list that changed

        # A broken file: the old set serves on, /health says why (still 200).
        (root / "tools" / "two.yml").write_text(tool("two", 'code: "SELECT * FROM no_such_table"'))
        process.send_signal(signal.SIGHUP)
        status, body = wait_for(lambda: (lambda h: h if h[1].get("config_problem") else None)(health(base)))
        assert status == 200 and "no_such_table" in body["config_problem"]
        assert run_http(url, lambda c: c.call_tool("two", {})).structured_content == {"n": 2}
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        log = process.stderr.read().decode()
    assert "the new definitions cannot serve" in log and "no_such_table" in log


def test_twenty_clients_across_ten_reloads_lose_no_call(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE, "tools/version.yml": VERSION_TOOL,
                                         "python/version.py": version_code("v0", delay=0.02)})
    failures: list[str] = []
    answered = 0

    with http_server(root) as (base, process):
        url = f"{base}/mcp"
        done = threading.Event()

        def reloads():
            for index in range(1, 11):
                # Each reload changes the set: a tool comes or goes, the Python code changes.
                extra = root / "tools" / "two.yml"
                extra.write_text(TWO) if index % 2 else extra.unlink()
                (root / "python" / "version.py").write_text(version_code(f"v{index}", delay=0.02))
                process.send_signal(signal.SIGHUP)
                time.sleep(0.4)
            done.set()

        async def client_loop():
            nonlocal answered
            async with mcp.Client(url) as client:
                while not done.is_set():
                    for name in ("one", "version"):
                        result = await client.call_tool(name, {})
                        if result.is_error:
                            failures.append(text(result))
                        answered += 1

        async def main():
            async with anyio.create_task_group() as tasks:
                for _ in range(20):
                    tasks.start_soon(client_loop)
                await anyio.to_thread.run_sync(reloads)

        anyio.run(main)
        status, body = health(base)
        final = run_http(url, lambda c: c.call_tool("version", {}))

    assert failures == []
    assert answered > 100
    assert status == 200 and body["reloads"] >= 1 and "config_problem" not in body
    assert text(final) == "v10"


def test_serve_watch_reloads_when_a_file_changes(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    with http_server(root, "--watch") as (base, process):
        url = f"{base}/mcp"
        (root / "tools" / "two.yml").write_text(TWO)

        def listed():
            return "two" in [t.name for t in run_http(url, lambda c: c.list_tools()).tools]

        wait_for(listed, timeout=20)
        assert run_http(url, lambda c: c.call_tool("two", {})).structured_content == {"n": 2}


def test_serve_watch_reloads_a_file_changed_while_the_server_was_starting(make_project, tmp_path):
    # The module is imported while the server starts (after the endpoint files were read) and writes a new tool
    # file then: a first look taken after start-up would count it as already served and never reload.
    writes_two = (f"from pathlib import Path\n\nTWO = Path(__file__).parent.parent / 'tools' / 'two.yml'\n"
                  f"if not TWO.exists():\n    TWO.write_text({TWO!r})\n\n" + version_code("v1"))
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE, "tools/version.yml": VERSION_TOOL,
                                         "python/version.py": writes_two})
    with http_server(root, "--watch") as (base, process):
        url = f"{base}/mcp"

        def listed():
            return "two" in [t.name for t in run_http(url, lambda c: c.list_tools()).tools]

        wait_for(listed, timeout=20)


def test_settings_applied_at_start_only_are_named_not_silently_ignored(runtime, caplog):
    runtime.context.site_file.write_text(SITE + "limits: {workers: 3}\n")
    with caplog.at_level("WARNING"):
        reload(runtime)
    assert runtime.config_problem is None and runtime.context.site.limits.workers == 3
    assert "limits.workers changed; it is applied when the server starts: restart it to apply it" in caplog.text


def test_a_refused_set_keeps_privately_loaded_modules_old_code_too(make_project, tmp_path):
    """A module named like no importable module (a dash) is loaded under a private name; it comes back too."""
    root = make_project(tmp_path / "p", {"tools/version.yml": python_tool("version", "my-mod.py", returns="{type: string}"),
                                         "python/my-mod.py": version_code("v1")})
    runtime = Runtime(open_project(root))
    with runtime:
        (root / "python" / "my-mod.py").write_text(version_code("v2"))
        (root / "python" / "hooks.py").write_text("from mxcp.runtime import on_init\n\n@on_init\ndef setup():\n"
                                                  "    raise RuntimeError('no')\n")
        reload(runtime)
        assert "no" in runtime.config_problem and runtime.unavailable is None
        assert runtime.call("tool", "version") == "v1"


def test_lists_a_request_built_from_a_refused_set_are_rebuilt_when_the_old_one_returns(make_project, tmp_path):
    from mxcp_core.server.app import Catalog

    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    runtime = Runtime(open_project(root))
    with runtime:
        catalog = Catalog(runtime)
        (root / "tools" / "two.yml").write_text(TWO)
        (root / "python").mkdir()
        (root / "python" / "slow.py").write_text(
            "import time\nfrom mxcp.runtime import on_init\n\n@on_init\ndef setup():\n    time.sleep(1)\n"
            "    raise RuntimeError('refused')\n")
        runtime.reload(description="test", config=True)
        wait_for(lambda: runtime.generation == 1, timeout=10)  # the new set is starting
        assert sorted(catalog.current().tools) == ["one", "two"]  # a request built the lists from it meanwhile
        runtime.wait_for_reloads(timeout=30)
        assert "refused" in runtime.config_problem
        assert sorted(catalog.current().tools) == ["one"]
        assert catalog.refresh() == set() and catalog.unannounced == {"tools"}


class HideMarked:
    """Hides endpoints whose description says so (as a policy requiring a scope the caller lacks would)."""

    @staticmethod
    @hookimpl
    def endpoint_visible(endpoint, user, project):
        return "hidden" not in endpoint.description


def test_a_call_waiting_behind_a_reload_is_refused_if_the_new_definition_hides_the_tool(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    runtime = Runtime(open_project(root, extra_plugins=[("hide_marked", HideMarked())]))
    with runtime:
        _, call = runtime.prepare_call("tool", "one", {}, user={"user_id": "u1"})
        (root / "tools" / "one.yml").write_text(ONE.replace("tool:\n", "tool:\n  description: hidden now\n"))
        reload(runtime)
        with pytest.raises(NotFoundError, match="no longer served"):
            runtime.invoke(call)


@pytest.mark.parametrize("gap", [0.0, 0.003], ids=["at-once", "3ms-apart"])
def test_a_burst_of_reloads_drains_and_restarts_once_or_twice_not_each_time(make_project, tmp_path, gap):
    """Also when the requests trickle in (a busy machine schedules the signal handler late): CI once saw 5
    restarts for a burst of 10, each reading finishing before the next request came."""
    marks = tmp_path / "marks.txt"
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE, "python/mark.py": (
        f"from mxcp.runtime import on_init\n\n@on_init\ndef setup():\n"
        f"    open({str(marks)!r}, 'a').write('init\\n')\n")})
    runtime = Runtime(open_project(root))
    with runtime:
        for _ in range(10):
            runtime.reload(description="burst", config=True)
            time.sleep(gap)
        runtime.wait_for_reloads(timeout=60)
        assert runtime.config_problem is None
    starts = marks.read_text().split()
    assert 2 <= len(starts) <= 3, starts  # the first start, then the newest reading (rarely one more)


def test_modern_clients_hear_of_changed_lists_on_a_listen_stream(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    with http_server(root) as (base, process):
        async def session():
            async with mcp.Client(f"{base}/mcp") as client:  # the SDK's default: the 2026-07-28 protocol
                async with client.listen(tools_list_changed=True) as events:
                    (root / "tools" / "two.yml").write_text(TWO)
                    process.send_signal(signal.SIGHUP)
                    with anyio.fail_after(15):
                        async for event in events:
                            break
                return type(event).__name__, sorted(t.name for t in (await client.list_tools()).tools)

        kind, names = anyio.run(session)
    assert kind == "ToolsListChanged" and "two" in names


def test_serve_watch_survives_a_folder_it_cannot_read(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/one.yml": ONE})
    with http_server(root, "--watch") as (base, process):
        url = f"{base}/mcp"
        (root / "sql").symlink_to(root / "sql")  # a symlink loop where a folder is expected
        time.sleep(1.5)
        assert process.poll() is None
        (root / "sql").unlink()
        (root / "tools" / "two.yml").write_text(TWO)
        wait_for(lambda: "two" in [t.name for t in run_http(url, lambda c: c.list_tools()).tools], timeout=20)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert "cannot look at the project's files" in process.stderr.read().decode()
