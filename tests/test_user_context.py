"""The caller's identity: one record per call, from the CLI, YAML tests, the user config (stdio) and plugins
(HTTP); visible to Python code, policies and audit; and who may see which endpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp import MCPError
from mcp.client.stdio import StdioServerParameters, stdio_client

from extras import needs_extra
from mxcp_core import MxcpError, UserContext, hookimpl
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.server import create_server
from mxcp_core.server.transports import start_runtime

from server_helpers import http_server, mxcp_command, serve_env

# The installed example plugin package adds tools; the listings here are of this project's own.
def third_party_off() -> dict[str, str]:
    return {"MXCP_DISABLE_PLUGINS": os.environ.get("MXCP_DISABLE_PLUGINS", "")}

WHOAMI = {
    "python/who.py": """\
        from mxcp.runtime import user, get_user_context
        from mxcp.sdk.auth.context import get_user_context as original_accessor

        def whoami() -> dict:
            record = original_accessor()
            assert record is get_user_context() is user.current()
            return {"username": user.username, "role": user.role, "email": record.email,
                    "authenticated": record.is_authenticated(), "truthy": bool(user),
                    "scopes": list(user.scopes), "team": record.claims.get("team")}
        """,
    "tools/whoami.yml": """\
        mxcp: 1
        tool:
          name: whoami
          language: python
          return: {type: object}
          source: {file: ../python/who.py}
        """,
    "tools/admin_report.yml": """\
        mxcp: 1
        tool:
          name: admin_report
          description: Only admins see it.
          return: {type: integer}
          source: {code: "SELECT 42"}
          policies:
            visible_when: "user.role == 'admin'"
        """,
    "tools/scoped_report.yml": """\
        mxcp: 1
        tool:
          name: scoped_report
          return: {type: integer}
          source: {code: "SELECT 7"}
          policies:
            required_scopes: [reports.read]
        """,
    "tools/salary.yml": """\
        mxcp: 1
        tool:
          name: salary
          return: {type: object}
          source: {code: "SELECT 'Ann' AS name, 100 AS salary"}
          policies:
            input:
              - {condition: "user.role != 'admin'", action: deny, reason: "Admins only"}
            output:
              - {condition: "user.username != 'carol'", action: mask_fields, fields: [salary]}
        """,
}


@pytest.fixture
def root(make_project, tmp_path) -> Path:
    return make_project(tmp_path / "proj", WHOAMI)


def test_python_code_sees_the_caller_and_anonymous_without_one(root) -> None:
    with Runtime(open_project(root)) as runtime:
        anonymous = runtime.call("tool", "whoami")
        signed = runtime.call("tool", "whoami", user={"username": "alice", "email": "a@x.io", "team": "blue",
                                                       "scopes": "reports.read reports.write"})
    assert anonymous == {"username": None, "role": "anonymous", "email": None, "authenticated": False,
                         "truthy": False, "scopes": [], "team": None}
    # No role given: "user". Unknown keys are kept as claims; a space-separated scope string is split.
    assert signed == {"username": "alice", "role": "user", "email": "a@x.io", "authenticated": True, "truthy": True,
                      "scopes": ["reports.read", "reports.write"], "team": "blue"}


def test_a_user_context_of_the_wrong_shape_is_a_clear_error(root) -> None:
    with Runtime(open_project(root)) as runtime, pytest.raises(MxcpError, match="username must be a string"):
        runtime.call("tool", "whoami", user={"username": ["a"]})


def test_the_external_token_stays_out_of_repr_and_dicts() -> None:
    user = UserContext.from_mapping({"username": "a", "external_token": "gho_very_secret"})
    assert user.external_token == "gho_very_secret"
    assert "gho_very_secret" not in repr(user) and "gho_very_secret" not in json.dumps(user.as_dict())


def test_udf_plugin_classes_have_the_original_helpers(root) -> None:
    from mxcp.plugins import MXCPBasePlugin

    class Plugin(MXCPBasePlugin):
        pass

    plugin = Plugin({})
    assert plugin.get_username() is None and not plugin.is_authenticated()  # outside any call: anonymous
    captured: dict[str, Any] = {}

    def probe() -> int:
        captured.update(name=plugin.get_username(), email=plugin.get_user_email(), auth=plugin.is_authenticated(),
                        role=plugin.user_context.role)
        return 1

    from mxcp_core.records import ToolDefinition
    from mxcp_core import hookimpl, parse_type

    class Provider:
        @hookimpl
        def provide_tool(self, project):
            return [ToolDefinition(name="probe", function=probe, return_type=parse_type({"type": "integer"}))]

    with Runtime(open_project(root, extra_plugins=[("provider", Provider())])) as runtime:
        runtime.call("tool", "probe", user={"username": "bo", "email": "bo@x.io", "role": "admin"})
    assert captured == {"name": "bo", "email": "bo@x.io", "auth": True, "role": "admin"}


# -- visibility ---------------------------------------------------------------------------------------------


def test_hidden_endpoints_answer_exactly_like_unknown_ones(root) -> None:
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "admin_report", user={"role": "admin"}) == 42
        assert runtime.call("tool", "scoped_report", user={"scopes": ["reports.read"]}) == 7
        with pytest.raises(MxcpError) as hidden:
            runtime.call("tool", "admin_report", user={"role": "user"})
        with pytest.raises(MxcpError) as unknown:
            runtime.call("tool", "admin_reporx", user={"role": "user"})
        assert str(hidden.value) == "tool 'admin_report' not found"
        # A did-you-mean never names a hidden endpoint.
        assert str(unknown.value) == "tool 'admin_reporx' not found"
        with pytest.raises(MxcpError, match="tool 'scoped_report' not found"):
            runtime.call("tool", "scoped_report")


def list_and_call(server: Any) -> Any:
    async def main() -> Any:
        async with mcp.Client(server) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            hidden = unknown = None
            try:
                await client.call_tool("admin_report", {})
            except MCPError as exc:
                hidden = exc.error.message
            try:
                await client.call_tool("no_such_tool", {})
            except MCPError as exc:
                unknown = exc.error.message
            return names, hidden, unknown

    return anyio.run(main)


def test_lists_show_each_caller_only_what_it_may_call_in_process(root, user_config) -> None:
    runtime = start_runtime(open_project(root))
    try:
        names, hidden, unknown = list_and_call(create_server(runtime))
    finally:
        runtime.stop()
    assert names == ["salary", "whoami"]  # anonymous: neither the admin nor the scoped report
    assert hidden == "tool 'admin_report' not found" and unknown == "tool 'no_such_tool' not found"


def test_a_remote_server_refuses_a_request_without_its_http_request(root, user_config) -> None:
    """Over HTTP every request carries its HTTP request (and credentials): one without is refused, never run as the
    local caller the user config names for stdio."""
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                "        user_context: {username: local-admin, role: admin}\n")
    runtime = start_runtime(open_project(root))
    try:
        async def main() -> str:
            async with mcp.Client(create_server(runtime, remote=True)) as client:
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("whoami", {})
                return refused.value.error.message

        assert anyio.run(main) == "the caller could not be identified"
    finally:
        runtime.stop()


def stdio_session(root: Path, body: Any) -> Any:
    command = mxcp_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio"],
                                   cwd=root, env=serve_env({"MXCP_AUDIT_ENABLED": "1", **third_party_off()}))

    async def main() -> Any:
        async with mcp.Client(stdio_client(params)) as client:
            return await body(client)

    return anyio.run(main)


@needs_extra("cel")
def test_a_stdio_server_takes_its_callers_identity_from_the_user_config(root, user_config) -> None:
    user_config("""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                user_context: {username: carol, email: carol@example.com, role: admin, scopes: [reports.read]}
        """)

    async def body(client):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        who = await client.call_tool("whoami", {})
        salary = await client.call_tool("salary", {})
        return names, who.structured_content, salary.structured_content

    names, who, salary = stdio_session(root, body)
    assert names == ["admin_report", "salary", "scoped_report", "whoami"]
    assert who["username"] == "carol" and who["role"] == "admin" and who["email"] == "carol@example.com"
    assert salary == {"name": "Ann", "salary": 100}  # carol is an admin, and her salary view is not masked
    records = [json.loads(line) for line in (root / "audit" / "logs-default.jsonl").read_text().splitlines()]
    assert {r["user_id"] for r in records} == {None} and {r["caller_type"] for r in records} == {"stdio"}


@needs_extra("cel")
def test_a_stdio_server_without_a_configured_identity_serves_an_anonymous_caller(root, user_config) -> None:
    user_config("mxcp: 1\nprojects: {}\n")

    async def body(client):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        salary = await client.call_tool("salary", {})
        return names, salary

    names, salary = stdio_session(root, body)
    assert names == ["salary", "whoami"]
    assert salary.is_error and salary.content[0].text == "denied by input policy 1 of tool 'salary': Admins only"


HEADER_IDENTITY = '''
from mxcp_core import MxcpError, UserContext, hookimpl

USERS = {"key-admin": {"user_id": "1", "username": "adm", "role": "admin"},
         "key-user": {"user_id": "2", "username": "usr"}}


@hookimpl
def identify_caller(transport, request, project):
    if transport != "http":
        return None
    key = request.headers.get("x-api-key")
    if key is None:
        return None
    if key not in USERS:
        raise MxcpError("unknown API key")
    return UserContext.from_mapping(USERS[key])
'''


@needs_extra("cel")
def test_a_plugin_identifies_http_callers_and_an_identity_it_cannot_establish_refuses_the_request(
        root, user_config, make_dist) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    user_config("mxcp: 1\nprojects: {}\n")
    folder = make_dist("header-identity", {"header_identity": HEADER_IDENTITY}, {"header_identity": "header_identity"})

    def as_key(url: str, key: str | None, body: Any) -> Any:
        async def main() -> Any:
            headers = {"x-api-key": key} if key else {}
            async with httpx2.AsyncClient(headers=headers) as http:
                async with mcp.Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
                    return await body(client)

        return anyio.run(main)

    async def look(client):
        names = sorted(t.name for t in (await client.list_tools()).tools)
        who = await client.call_tool("whoami", {})
        return names, who.structured_content

    with http_server(root, env={"PYTHONPATH": str(folder), "MXCP_AUDIT_ENABLED": "1", **third_party_off()}) as (url, _):
        admin = as_key(url, "key-admin", look)
        user = as_key(url, "key-user", look)
        anonymous = as_key(url, None, look)
        with pytest.raises(Exception) as refused:
            as_key(url, "key-forged", look)
    assert admin == (["admin_report", "salary", "whoami"], {**admin[1], "username": "adm", "role": "admin"})
    assert user[0] == ["salary", "whoami"] and user[1]["username"] == "usr" and user[1]["role"] == "user"
    assert anonymous[0] == ["salary", "whoami"] and anonymous[1]["role"] == "anonymous"
    assert "unknown API key" in repr(refused.value)
    records = [json.loads(line) for line in (root / "audit" / "logs-default.jsonl").read_text().splitlines()]
    assert {r["user_id"] for r in records if r["caller_type"] == "http"} == {"1", "2", None}


def test_mxcp_run_takes_the_caller_from_the_option_a_file_or_the_user_config(root, user_config, run_mxcp) -> None:
    (root / "alice.json").write_text(json.dumps({"username": "alice", "role": "admin"}))

    def whoami(*args: str) -> dict[str, Any]:
        done = run_mxcp("run", "tool", "whoami", "--json-output", *args, cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)["result"]

    user_config("mxcp: 1\nprojects: {}\n")
    assert whoami()["role"] == "anonymous"
    assert whoami("-u", '{"username": "bob"}')["username"] == "bob"
    assert whoami("--user-context", "@alice.json")["role"] == "admin"
    user_config("""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                user_context: {username: carol, role: hr}
        """)
    assert whoami()["username"] == "carol"
    assert whoami("-u", '{"username": "bob"}')["username"] == "bob"  # the option wins
    bad = run_mxcp("run", "tool", "whoami", "--json-output", "-u", "[1, 2]", cwd=root)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"] == "--user-context must be a JSON object"


def test_a_configured_identity_of_the_wrong_shape_names_the_profile(root, user_config) -> None:
    user_config("""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                user_context: {username: carol, permissions: 5}
        """)
    project = open_project(root)
    with pytest.raises(MxcpError, match="user_context for profile 'default': user_context: permissions: expected a "
                                        "list of strings, got int"):
        project.hooks.identify_caller("cli", None, project.context)


class TagVisibility:
    """A plugin deciding visibility by tag: `staff` endpoints only for staff."""

    @hookimpl
    def endpoint_visible(self, endpoint: Any, user: UserContext, project: Any) -> bool | None:
        if "staff" in endpoint.tags:
            return user.role == "staff"
        if "broken" in endpoint.tags:
            raise RuntimeError("bug in the plugin")
        return None


def test_a_plugin_decides_visibility_and_one_that_fails_hides_the_endpoint(make_project, tmp_path) -> None:
    root = make_project(tmp_path / "proj", {
        "tools/staff.yml": 'mxcp: 1\ntool: {name: staff_only, tags: [staff], return: {type: integer}, '
                           'source: {code: "SELECT 1"}}\n',
        "tools/broken.yml": 'mxcp: 1\ntool: {name: broken_vis, tags: [broken], return: {type: integer}, '
                            'source: {code: "SELECT 2"}}\n',
        "tools/public.yml": 'mxcp: 1\ntool: {name: public, return: {type: integer}, source: {code: "SELECT 3"}}\n',
    })
    runtime = start_runtime(open_project(root, extra_plugins=[("tags", TagVisibility())]))
    try:
        assert runtime.call("tool", "staff_only", user={"role": "staff"}) == 1
        with pytest.raises(MxcpError, match="tool 'staff_only' not found"):
            runtime.call("tool", "staff_only", user={"role": "user"})
        with pytest.raises(MxcpError, match="tool 'broken_vis' not found"):
            runtime.call("tool", "broken_vis", user={"role": "staff"})
        names, hidden, _ = list_and_call(create_server(runtime))
    finally:
        runtime.stop()
    assert names == ["public"]


def test_the_external_token_never_reaches_the_audit_record_or_an_error(make_project, tmp_path, monkeypatch) -> None:
    token = "gho_upstream_credential_123456"
    root = make_project(tmp_path / "proj", {
        "tools/token.yml": 'mxcp: 1\ntool: {name: token, return: {type: string}, '
                           'source: {code: "SELECT get_user_external_token()"}}\n',
        "tools/leak.yml": 'mxcp: 1\ntool: {name: leak, return: {type: integer}, '
                          'source: {code: "SELECT CAST(get_user_external_token() AS INTEGER)"}}\n',
    })
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    user = {"username": "ann", "external_token": token}
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "token", user=user) == token  # the endpoint may use it
        with pytest.raises(MxcpError) as failed:
            runtime.call("tool", "leak", user=user)
    assert token not in str(failed.value)
    log = (root / "audit" / "logs-default.jsonl").read_text()
    assert log.count("\n") == 4 and token not in log


def test_a_configured_identity_with_its_plugin_disabled_is_refused_naming_the_plugin(root, user_config) -> None:
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        user_context: {username: carol}\n")
    with pytest.raises(MxcpError) as refused:
        open_project(root, disabled_plugins=["configured_identity"])
    assert "configured_identity" in str(refused.value) and "user_context" in str(refused.value)
