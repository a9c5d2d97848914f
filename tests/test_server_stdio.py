"""`mxcp serve --transport stdio` in a subprocess with the SDK client: calls, stdout safety, lifecycle, reload, cancel."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client

from server_helpers import PROJECT, SECRET_VALUE, USER_CONFIG, mxcp_command, serve_env, stop_process


@pytest.fixture
def project(make_project, user_config, tmp_path) -> dict[str, Any]:
    user_config(USER_CONFIG)
    root = make_project(tmp_path / "proj", PROJECT)
    marks = tmp_path / "marks.txt"
    env = serve_env({"MXCP_TEST_MARKS": str(marks), "MXCP_AUDIT_ENABLED": "1"})
    return {"root": root, "marks": marks, "env": env, "errlog": tmp_path / "stderr.txt"}


def run_stdio(project: dict[str, Any], body: Any, *args: str) -> Any:
    command = mxcp_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio", *args],
                                   cwd=project["root"], env=project["env"])

    async def main() -> Any:
        with open(project["errlog"], "w") as errlog:
            async with mcp.Client(stdio_client(params, errlog=errlog)) as client:
                return await body(client)

    return anyio.run(main)


def audit_records(root: Path) -> list[dict[str, Any]]:
    path = root / "audit" / "logs-default.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_kind_over_stdio_and_prints_go_to_stderr(project):
    async def body(client):
        tools = await client.list_tools()
        return (
            sorted(t.name for t in tools.tools),
            await client.call_tool("hello_world", {"name": "Ada"}),
            await client.call_tool("shout", {"text": "hi"}),
            await client.read_resource("users://2"),
            (await client.list_resource_templates()).resource_templates[0].uri_template,
            await client.get_prompt("greet", {"who": "Bo"}),
            await client.call_tool("hello_world", {"name": 42}),
        )

    names, hello, shout, user, template, prompt, invalid = run_stdio(project, body)
    assert "hello_world" in names and "slow" in names
    assert hello.structured_content == {"result": "Hello, Ada!"}
    assert shout.structured_content == {"result": "HI!"}
    assert json.loads(user.contents[0].text) == {"id": 2, "name": "Linus"}
    assert template == "users://{id}"
    assert prompt.messages[1].content.text == "Greet Bo 1 time(s)."
    assert invalid.is_error and "expected string" in invalid.content[0].text
    stderr = project["errlog"].read_text()
    # Prints at import, in on_init and inside a call (worker thread) all reached stderr, none broke the stream.
    assert "imported endpoints" in stderr and "on_init printing" in stderr and "shout was called with hi" in stderr


def test_on_shutdown_runs_when_stdin_closes(project):
    async def body(client):
        return await client.call_tool("users_count", {})

    assert run_stdio(project, body).structured_content == {"result": 2}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "shutdown" not in project["marks"].read_text():
        time.sleep(0.05)
    assert project["marks"].read_text().split() == ["init", "shutdown"]


def start_raw(project: dict[str, Any]) -> subprocess.Popen:
    process = subprocess.Popen([*mxcp_command(), "serve", "--transport", "stdio"], cwd=project["root"],
                               env=project["env"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    send(process, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
    assert "result" in receive(process)
    send(process, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    return process


def send(process: subprocess.Popen, message: dict[str, Any]) -> None:
    process.stdin.write((json.dumps(message) + "\n").encode())
    process.stdin.flush()


def receive(process: subprocess.Popen) -> dict[str, Any]:
    while True:
        line = process.stdout.readline()
        assert line, "server closed stdout"
        message = json.loads(line)  # anything but a protocol frame on stdout fails here
        if "id" in message:
            return message


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_on_shutdown_runs_on_sigterm_and_sigint(project, signum):
    process = start_raw(project)
    try:
        process.send_signal(signum)
        assert process.wait(timeout=15) == 0
        assert project["marks"].read_text().split() == ["init", "shutdown"]
    finally:
        stop_process(process)


def test_sighup_reload_under_twenty_concurrent_calls_fails_none(project):
    process = start_raw(project)
    try:
        for index in range(1, 11):
            send(process, {"jsonrpc": "2.0", "id": index, "method": "tools/call",
                           "params": {"name": "sleepy", "arguments": {"seconds": 0.3}}})
        time.sleep(0.1)
        process.send_signal(signal.SIGHUP)
        for index in range(11, 21):
            send(process, {"jsonrpc": "2.0", "id": index, "method": "tools/call",
                           "params": {"name": "users_count", "arguments": {}}})
        answers = [receive(process) for _ in range(20)]
        assert sorted(a["id"] for a in answers) == list(range(1, 21))
        assert [a for a in answers if "error" in a or a["result"].get("isError")] == []
        # The reload reads and checks the project before it drains calls: it may finish after the answers.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and project["marks"].read_text().split() != ["init", "shutdown", "init"]:
            time.sleep(0.05)
        assert project["marks"].read_text().split() == ["init", "shutdown", "init"]
    finally:
        stop_process(process)


def test_reload_duckdb_from_a_tool_runs_the_payload_and_later_calls_see_its_data(project):
    async def body(client):
        scheduled = await client.call_tool("reload_data", {"rows": 3})
        # Issued while the reload may still be running: each waits, none fails.
        counts = []
        async with anyio.create_task_group() as tasks:
            async def count():
                counts.append(await client.call_tool("users_count", {}))
            for _ in range(20):
                tasks.start_soon(count)
        await anyio.sleep(0.5)
        return scheduled, counts, await client.call_tool("users_count", {})

    scheduled, counts, final = run_stdio(project, body)
    assert scheduled.structured_content == {"result": "scheduled"}
    assert [c for c in counts if c.is_error] == []
    assert final.structured_content == {"result": 5}
    assert project["marks"].read_text().split()[:4] == ["init", "shutdown", "payload", "init"]


def test_client_cancellation_interrupts_the_long_query(project):
    async def body(client):
        with anyio.move_on_after(1):
            await client.call_tool("slow", {})
        return await client.call_tool("hello_world", {"name": "Next"})

    assert run_stdio(project, body).structured_content == {"result": "Hello, Next!"}
    slow = [r for r in audit_records(project["root"])
            if r["operation_name"] == "slow" and r["operation_status"] != "started"]
    assert [(r["operation_status"], r["error"]) for r in slow] == [("error", "query interrupted")]


def test_serve_refuses_invalid_endpoints_and_ignore_errors_serves_the_rest(project, run_mxcp):
    root = project["root"]
    (root / "tools" / "broken.yml").write_text(
        "mxcp: 1\ntool:\n  name: broken\n  source: {code: 'SELECT * FROM no_such_table'}\n")
    (root / "tools" / "unparsable.yml").write_text("mxcp: 1\ntool:\n  nam: typo\n")
    refused = run_mxcp("serve", "--transport", "stdio", cwd=root, env={"MXCP_TEST_MARKS": str(project["marks"])})
    assert refused.returncode == 1 and refused.stdout == ""
    assert "2 invalid endpoint(s)" in refused.stderr
    assert "broken" in refused.stderr and "unparsable.yml" in refused.stderr

    async def body(client):
        return sorted(t.name for t in (await client.list_tools()).tools)

    names = run_stdio(project, body, "--ignore-errors")
    assert "broken" not in names and "hello_world" in names
    stderr = project["errlog"].read_text()
    assert "skipping invalid endpoint broken" in stderr and "unparsable.yml" in stderr


def test_calls_sent_before_stdin_closes_are_answered(project):
    lines = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sleepy", "arguments": {"seconds": 0.3}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "shout", "arguments": {"text": "bye"}}},
    ]
    done = subprocess.run([*mxcp_command(), "serve", "--transport", "stdio"], cwd=project["root"], env=project["env"],
                          input="".join(json.dumps(line) + "\n" for line in lines).encode(), capture_output=True,
                          timeout=30, check=False)
    answers = {m["id"]: m for m in map(json.loads, done.stdout.decode().splitlines())}
    assert done.returncode == 0 and sorted(answers) == [0, 1, 2]
    assert answers[2]["result"]["structuredContent"] == {"result": "BYE!"}
    assert project["marks"].read_text().split() == ["init", "shutdown"]


def test_malformed_frames_get_a_json_rpc_error_and_the_server_keeps_serving(project):
    deep = "[" * 250 + "]" * 250
    # A lone surrogate escape: legal for Python's json, refused by the SDK's parser.
    surrogate = '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"text": "\\ud800"}}}'
    frames = [
        (surrogate, -32700, None),
        ('{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"x": ' + deep + "}}", -32700, None),
        (f"garbage {SECRET_VALUE}", -32700, None),
        ('{"jsonrpc": "2.0", "id": 7, "params": {}}', -32600, 7),  # valid JSON, not a request: its id comes back
    ]
    process = start_raw(project)
    try:
        for line, code, expected_id in frames:
            process.stdin.write(line.encode() + b"\n\n")  # the blank line is ignored, not answered
            process.stdin.flush()
            answer = receive(process)
            assert answer == {"jsonrpc": "2.0", "id": expected_id,
                              "error": {"code": code, "message": answer["error"]["message"]}}
            assert answer["error"]["message"] == ("Parse error" if code == -32700 else "Invalid Request")
            send(process, {"jsonrpc": "2.0", "id": 100, "method": "tools/list"})
            listed = receive(process)
            assert listed["id"] == 100 and any(t["name"] == "hello_world" for t in listed["result"]["tools"])
        process.stdin.close()
        assert process.wait(timeout=15) == 0
        stderr = process.stderr.read().decode()
    finally:
        stop_process(process)
    warnings = [line for line in stderr.splitlines() if "malformed message" in line]
    assert len(warnings) == 4
    assert "-32700 Parse error: Invalid JSON: recursion limit exceeded" in stderr
    assert SECRET_VALUE not in stderr  # sizes and reasons are logged, never the line itself
