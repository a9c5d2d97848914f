"""`mxcp serve` over streamable HTTP (and SSE) on 127.0.0.1 with a free port, using the SDK client."""
from __future__ import annotations

import json
import urllib.request
from typing import Any

import anyio
import mcp
import pytest

from server_helpers import PROJECT, USER_CONFIG, http_server


@pytest.fixture
def root(make_project, user_config, tmp_path):
    user_config(USER_CONFIG)
    return make_project(tmp_path / "proj", PROJECT)


def run_http(url: str, body: Any) -> Any:
    async def main() -> Any:
        async with mcp.Client(url) as client:
            return await body(client)

    return anyio.run(main)


async def every_kind(client) -> tuple:
    return (
        sorted(t.name for t in (await client.list_tools()).tools),
        await client.call_tool("get_user", {"id": 1}),
        [r.uri for r in (await client.list_resources()).resources],
        await client.read_resource("config://settings"),
        await client.get_prompt("greet", {"who": "Al", "times": "2"}),
        await client.call_tool("get_user", {"id": 0}),
    )


def check_every_kind(answers: tuple) -> None:
    names, user, resources, settings, prompt, invalid = answers
    assert "get_user" in names
    assert user.structured_content == {"id": 1, "name": "Ada"}
    assert resources == ["config://settings"]
    assert json.loads(settings.contents[0].text) == {"mode": "fast"}
    assert prompt.messages[1].content.text == "Greet Al 2 time(s)."
    assert invalid.is_error and "minimum" in invalid.content[0].text


def test_streamable_http_serves_every_kind_and_health(root):
    with http_server(root) as (base, _):
        check_every_kind(run_http(f"{base}/mcp", every_kind))
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
            assert json.loads(response.read())["status"] == "ok"


def test_stateless_json_response_mode(root):
    with http_server(root, "--stateless", "--json-response") as (base, _):
        check_every_kind(run_http(f"{base}/mcp", every_kind))


def test_concurrent_http_calls_are_not_blocked_by_a_long_query(root):
    finished: list[str] = []

    async def body(client):
        async def call(name, args):
            result = await client.call_tool(name, args)
            assert not result.is_error
            finished.append(name)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "sleepy", {"seconds": 1.5})
            await anyio.sleep(0.3)
            for _ in range(8):
                tasks.start_soon(call, "hello_world", {"name": "fast"})

    with http_server(root) as (base, _):
        run_http(f"{base}/mcp", body)
    assert finished[-1] == "sleepy" and finished.count("hello_world") == 8


def test_transport_defaults_come_from_the_user_config(root, user_config, tmp_path):
    from server_helpers import free_port, mxcp_command, serve_env, stop_process, wait_for_port
    import subprocess

    port = free_port()
    user_config(USER_CONFIG + f"transport:\n  provider: streamable-http\n  http: {{host: 127.0.0.1, port: {port}}}\n")
    process = subprocess.Popen([*mxcp_command(), "serve"], cwd=root, env=serve_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        stop_process(process)
    assert process.returncode == 0


def test_sse_transport(root):
    from mcp.client.sse import sse_client

    with http_server(root, "--transport", "sse") as (base, _):
        async def main():
            async with mcp.Client(sse_client(f"{base}/sse")) as client:
                return await client.call_tool("hello_world", {"name": "Sse"})

        assert anyio.run(main).structured_content == {"result": "Hello, Sse!"}
