"""The MCP server with the SDK client in-process: listings, results, errors, notifications, timeouts, cancellation, reload."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp import MCPError

from mxcp_core import hookimpl
from mxcp_core.errors import MxcpError
from mxcp_core.project import open_project
from mxcp_core.records import ToolDefinition
from mxcp_core.server import create_server
from mxcp_core.server.transports import start_runtime

from server_helpers import PROJECT, SECRET_VALUE, USER_CONFIG


class CallRecorder:
    """Sees every call's outcome from inside the runtime (what the client cannot see)."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str]] = []

    @hookimpl(wrapper=True)
    def call_endpoint(self, call: Any) -> Any:
        try:
            result = yield
        except BaseException as exc:
            self.outcomes.append((call.endpoint.key, f"{type(exc).__name__}: {exc}"))
            raise
        self.outcomes.append((call.endpoint.key, "ok"))
        return result

    def wait_for(self, key: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, outcome in list(self.outcomes):
                if name == key:
                    return outcome
            time.sleep(0.02)
        raise AssertionError(f"no outcome for {key}")


class BrokenTool:
    @hookimpl
    def provide_tool(self, project: Any) -> list[ToolDefinition]:
        def explode() -> None:
            raise KeyError("/etc/secret/path.txt")

        return [ToolDefinition(name="explode", function=explode)]


@pytest.fixture
def project_root(make_project, user_config, tmp_path, monkeypatch) -> Path:
    user_config(USER_CONFIG)
    marks = tmp_path / "marks.txt"
    monkeypatch.setenv("MXCP_TEST_MARKS", str(marks))
    root = make_project(tmp_path / "proj", PROJECT)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def served(project_root):
    recorder = CallRecorder()
    project = open_project(project_root, extra_plugins=[("recorder", recorder), ("broken", BrokenTool())])
    runtime = start_runtime(project)
    try:
        yield runtime, create_server(runtime), recorder
    finally:
        runtime.stop()


def run_client(server: Any, body: Any, **client_options: Any) -> Any:
    async def main() -> Any:
        async with mcp.Client(server, **client_options) as client:
            return await body(client)

    return anyio.run(main)


def test_tools_are_listed_with_the_declared_schemas_and_annotations(served):
    _, server, _ = served

    async def body(client):
        return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = run_client(server, body)
    hello = tools["hello_world"]
    assert hello.description == "Greets someone."
    assert hello.input_schema == {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "Who to greet", "minLength": 1,
                                "pattern": "^[A-Za-z ]+$"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    assert hello.output_schema == {"type": "object", "properties": {"result": {"type": "string"}},
                                   "required": ["result"]}
    assert hello.annotations.read_only_hint is True and hello.annotations.idempotent_hint is True
    assert hello.title == "Hello"
    assert tools["get_user"].output_schema == {
        "type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}
    assert tools["fail"].input_schema["properties"]["password"]["writeOnly"] is True


def test_tool_results_carry_structured_and_text_content(served):
    _, server, _ = served

    async def body(client):
        return [
            await client.call_tool("hello_world", {"name": "Ada"}),
            await client.call_tool("get_user", {"id": 2}),
            await client.call_tool("numbers", {"n": 3}),
            await client.call_tool("shout", {"text": "hey"}),
        ]

    hello, user, numbers, shout = run_client(server, body)
    assert hello.structured_content == {"result": "Hello, Ada!"} and hello.content[0].text == "Hello, Ada!"
    assert user.structured_content == {"id": 2, "name": "Linus"}
    assert json.loads(user.content[0].text) == {"id": 2, "name": "Linus"}
    assert numbers.structured_content == {"result": [{"i": 0}, {"i": 1}, {"i": 2}]}
    assert shout.structured_content == {"result": "HEY!"}
    assert not any(r.is_error for r in (hello, user, numbers, shout))


def test_static_resources_and_templates_are_listed_and_readable(served):
    _, server, _ = served

    async def body(client):
        return (await client.list_resources(), await client.list_resource_templates(),
                await client.read_resource("config://settings"), await client.read_resource("users://1"))

    resources, templates, settings, user = run_client(server, body)
    assert [(r.uri, r.name, r.mime_type) for r in resources.resources] == [
        ("config://settings", "settings", "application/json")]
    assert [t.uri_template for t in templates.resource_templates] == ["users://{id}"]
    assert json.loads(settings.contents[0].text) == {"mode": "fast"}
    assert json.loads(user.contents[0].text) == {"id": 1, "name": "Ada"} and user.contents[0].uri == "users://1"


def test_unknown_resource_and_bad_uri_value_are_protocol_errors(served):
    _, server, _ = served

    async def body(client):
        errors = []
        for uri in ("nothing://here", "users://abc"):
            try:
                await client.read_resource(uri)
            except MCPError as exc:
                errors.append((exc.code, str(exc)))
        return errors

    unknown, bad_value = run_client(server, body)
    assert unknown[0] == -32002 and "Unknown resource: nothing://here" in unknown[1]  # MCP: resource not found
    assert bad_value[0] == -32602 and "Parameter 'id': expected integer" in bad_value[1]  # invalid params


def test_prompts_render_into_mcp_messages(served):
    _, server, _ = served

    async def body(client):
        return await client.list_prompts(), await client.get_prompt("greet", {"who": "Ann", "times": "3"})

    listing, prompt = run_client(server, body)
    (greet,) = listing.prompts
    assert [(a.name, a.required) for a in greet.arguments] == [("who", True), ("times", False)]
    assert [(m.role, m.content.text) for m in prompt.messages] == [
        ("assistant", "I am friendly."), ("user", "Greet Ann 3 time(s).")]


def test_invalid_arguments_come_back_as_error_results(served):
    _, server, _ = served

    async def body(client):
        return (await client.call_tool("hello_world", {"name": "R2D2"}),
                await client.call_tool("hello_world", {}),
                await client.call_tool("get_user", {"id": 1, "extra": True}))

    pattern, missing, unknown = run_client(server, body)
    assert pattern.is_error and "does not match pattern" in pattern.content[0].text
    assert missing.is_error and missing.content[0].text == "Required parameter missing: name"
    assert unknown.is_error and unknown.content[0].text == "Unknown parameter: extra"


def test_failures_reveal_no_secret_path_sensitive_value_or_traceback(served):
    _, server, _ = served

    async def body(client):
        return await client.call_tool("fail", {"password": "hunter22"}), await client.call_tool("explode", {})

    failed, exploded = run_client(server, body)
    text = failed.content[0].text
    assert failed.is_error and text.startswith("cannot open")
    for leak in (SECRET_VALUE, "hunter22", "/srv/app", "Traceback", "endpoints.py"):
        assert leak not in text
    assert exploded.is_error and exploded.content[0].text == "Internal error (KeyError)"


def test_unknown_tool_is_a_protocol_error(served):
    _, server, _ = served

    async def body(client):
        try:
            await client.call_tool("nope", {})
        except MCPError as exc:
            return str(exc)

    assert "tool 'nope' not found" in run_client(server, body)


def test_endpoint_timeout_interrupts_the_query_with_a_clear_error(served):
    _, server, recorder = served

    async def body(client):
        return await client.call_tool("slow_limited", {})

    result = run_client(server, body)
    assert result.is_error and result.content[0].text == "tool 'slow_limited' timed out after 0.5s"
    assert recorder.wait_for("slow_limited") == "ExecutionError: query interrupted"


def test_global_timeout_from_the_site_config(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\ntimeout: 0.3\n",
        "tools/slow.yml": PROJECT["tools/slow.yml"],
    })
    runtime = start_runtime(open_project(root))
    try:
        result = run_client(create_server(runtime), lambda c: c.call_tool("slow", {}))
    finally:
        runtime.stop()
    assert result.is_error and result.content[0].text == "tool 'slow' timed out after 0.3s"


def test_client_cancellation_interrupts_the_running_query(served):
    _, server, recorder = served

    async def body(client):
        with anyio.move_on_after(0.5):
            await client.call_tool("slow", {})
        return await client.call_tool("hello_world", {"name": "after"})

    after = run_client(server, body)
    assert after.structured_content == {"result": "Hello, after!"}
    assert recorder.wait_for("slow") == "ExecutionError: query interrupted"


def test_a_long_query_does_not_delay_other_calls(served):
    _, server, _ = served
    finished: list[str] = []

    async def body(client):
        async def call(name, args):
            await client.call_tool(name, args)
            finished.append(name)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "sleepy", {"seconds": 1.5})
            await anyio.sleep(0.2)
            tasks.start_soon(call, "hello_world", {"name": "quick"})

    run_client(server, body)
    assert finished == ["hello_world", "sleepy"]


def test_python_endpoints_send_log_messages_and_progress(served):
    _, server, _ = served
    logs: list[tuple[str, Any]] = []
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_log(params):
        logs.append((params.level, params.data))

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def body(client):
        return await client.call_tool("notify", {"steps": 2}, progress_callback=on_progress)

    result = run_client(server, body, logging_callback=on_log, log_level="debug")
    assert result.structured_content == {"result": 2}
    assert logs == [("info", "step 0"), ("info", "step 1")]
    assert progress == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]


def test_reload_under_twenty_concurrent_calls_loses_none(served, tmp_path):
    runtime, server, _ = served
    results: list[Any] = []

    async def body(client):
        async def call(index):
            if index % 2:
                results.append(await client.call_tool("sleepy", {"seconds": 0.3}))
            else:
                results.append(await client.call_tool("users_count", {}))

        async with anyio.create_task_group() as tasks:
            for index in range(10):
                tasks.start_soon(call, index)
            await anyio.sleep(0.1)
            runtime.reload(description="test")  # in flight: drained; arriving: wait
            for index in range(10, 20):
                tasks.start_soon(call, index)

    run_client(server, body)
    runtime.wait_for_reloads(timeout=10)
    assert len(results) == 20 and not [r for r in results if r.is_error]
    assert runtime.reload_count == 1
    assert (tmp_path / "marks.txt").read_text().split() == ["init", "shutdown", "init"]


def test_serve_refuses_invalid_endpoints_listing_each_and_ignore_errors_skips_them(make_project, tmp_path, capsys):
    root = make_project(tmp_path / "p", {
        "tools/ok.yml": PROJECT["tools/hello.yml"],
        "tools/bad_sql.yml": "mxcp: 1\ntool:\n  name: bad_sql\n  source: {code: 'SELECT * FROM missing_table'}\n",
        "tools/bad_yaml.yml": "mxcp: 1\ntool:\n  name: [not, a, name]\n",
    })
    with pytest.raises(MxcpError) as refused:
        start_runtime(open_project(root))
    message = str(refused.value)
    assert "2 invalid endpoint(s)" in message and "bad_sql" in message and "bad_yaml.yml" in message
    runtime = start_runtime(open_project(root), ignore_errors=True)
    try:
        assert sorted(key for _, key in runtime.compiled) == ["hello_world"]
    finally:
        runtime.stop()
    skipped = capsys.readouterr().err
    assert "skipping invalid endpoint bad_sql" in skipped and "bad_yaml.yml" in skipped


def test_registry_is_built_once(served, monkeypatch):
    """Calls never scan the project: discovery hooks are not called again while serving."""
    runtime, server, _ = served
    scans = []
    monkeypatch.setattr(runtime.project.hooks, "tools", lambda *a, **k: scans.append(1) or ([], []))

    async def body(client):
        await client.list_tools()
        return await client.call_tool("hello_world", {"name": "Once"})

    assert run_client(server, body).structured_content == {"result": "Hello, Once!"}
    assert scans == []


def test_lifespan_does_not_restart_the_runtime(served, tmp_path):
    runtime, server, _ = served

    async def body(client):
        return await client.call_tool("users_count", {})

    assert run_client(server, body).structured_content == {"result": 2}
    assert run_client(server, body).structured_content == {"result": 2}
    assert runtime.reload_count == 0
    assert (tmp_path / "marks.txt").read_text().split() == ["init"]
