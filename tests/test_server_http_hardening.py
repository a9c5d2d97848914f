"""HTTP hardening against a real `mxcp serve` subprocess: Host/Origin checks (streamable HTTP and SSE), the
non-loopback warning, the request-body deadline, 405 for GET in stateless mode, session idle expiry and caps."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from server_helpers import PROJECT, USER_CONFIG, free_port, mxcp_command, serve_env, stop_process, wait_for_port

INITIALIZE = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture
def root(make_project, user_config, tmp_path):
    user_config(USER_CONFIG)
    return make_project(tmp_path / "proj", PROJECT)


@contextlib.contextmanager
def serving(root: Path, *args: str, transport: str = "streamable-http", bind: str = "127.0.0.1"
            ) -> Iterator[tuple[str, int, Path]]:
    """`mxcp serve` on a free port; yields (base URL on 127.0.0.1, port, stderr file)."""
    port = free_port()
    errlog = root.parent / f"serve-{port}.err"
    with open(errlog, "wb") as err:
        process = subprocess.Popen(
            [*mxcp_command(), "serve", "--transport", transport, "--host", bind, "--port", str(port), *args],
            cwd=root, env=serve_env(), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", port, errlog
    finally:
        stop_process(process)


def initialize(client: httpx2.Client, url: str, **headers: str) -> httpx2.Response:
    return client.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def test_streamable_http_refuses_foreign_host_and_origin_and_accepts_configured_ones(root):
    with serving(root, "--json-response", "--allowed-host", "mcp.example.com") as (base, port, _), \
            httpx2.Client(timeout=10) as client:
        url = f"{base}/mcp"
        assert initialize(client, url, Host=f"evil.example:{port}").status_code == 421
        assert initialize(client, url, Origin="http://evil.example").status_code == 403
        # Loopback names, the configured name on any port, and its derived origin pass.
        for headers in ({}, {"Host": f"localhost:{port}"}, {"Host": "mcp.example.com:443"},
                        {"Host": "mcp.example.com", "Origin": "https://mcp.example.com"}):
            answer = initialize(client, url, **headers)
            assert answer.status_code == 200, headers
            assert answer.json()["result"]["serverInfo"]["name"]


def sse_endpoint(client: httpx2.Client, url: str) -> str:
    """Open the SSE stream just long enough to read the POST endpoint it announces."""
    with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data:"):
                return line.removeprefix("data:").strip()
    raise AssertionError("no endpoint event")


def test_sse_refuses_foreign_host_and_origin_on_both_paths(root, user_config):
    # Allowed hosts from the user config this time (the CLI flag is covered above).
    user_config(USER_CONFIG + "transport:\n  http:\n    allowed_hosts: [mcp.example.com]\n")
    with serving(root, transport="sse") as (base, port, _), httpx2.Client(timeout=10) as client:
        sse = f"{base}/sse"
        assert client.get(sse, headers={"Host": f"evil.example:{port}"}).status_code == 421
        assert client.get(sse, headers={"Origin": "http://evil.example"}).status_code == 403
        endpoint = sse_endpoint(client, sse)
        assert endpoint.startswith("/messages/?session_id=")
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        post = f"{base}{endpoint}"
        assert client.post(post, json=ping, headers={"Host": f"evil.example:{port}"}).status_code == 421
        assert client.post(post, json=ping, headers={"Origin": "http://evil.example"}).status_code == 403
        # An allowed name gets past the checks: 202, or 404 once the server has seen the stream above close.
        assert client.post(post, json=ping, headers={"Host": "mcp.example.com"}).status_code in (202, 404)
        with httpx2.Client(timeout=10, headers={"Host": "mcp.example.com"}) as named:
            assert sse_endpoint(named, sse).startswith("/messages/")


def test_all_interfaces_bind_warns_and_keeps_protection(root):
    with serving(root, "--json-response", bind="0.0.0.0") as (base, port, errlog), \
            httpx2.Client(timeout=10) as client:
        assert initialize(client, f"{base}/mcp").status_code == 200
        assert initialize(client, f"{base}/mcp", Host=f"evil.example:{port}").status_code == 421
    stderr = errlog.read_text()
    assert "warning: listening on 0.0.0.0, reachable from other machines" in stderr
    assert "localhost, 127.0.0.1, [::1] (others get 421)" in stderr and "--allowed-host" in stderr


def test_star_turns_checks_off_with_a_warning(root):
    with serving(root, "--json-response", "--allowed-host", "*") as (base, port, errlog), \
            httpx2.Client(timeout=10) as client:
        assert initialize(client, f"{base}/mcp", Host=f"evil.example:{port}").status_code == 200
    assert "Host/Origin checks are off" in errlog.read_text()


def test_a_body_sent_too_slowly_gets_408_and_the_connection_closes(root):
    with serving(root, "--body-timeout", "1") as (base, port, _):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                         f"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n".encode())
            received = b""
            slow.setblocking(False)
            # One byte every 0.2 s: under the old behaviour this would take 20 s and hold the request throughout.
            while time.monotonic() - started < 8:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    slow.send(b"{")
                with contextlib.suppress(BlockingIOError):
                    chunk = slow.recv(65536)
                    if not chunk:
                        break  # the server closed the connection
                    received += chunk
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        assert received.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in received.lower()
        assert 0.9 < elapsed < 5
        # The server goes on serving.
        with httpx2.Client(timeout=10) as client:
            assert initialize(client, f"{base}/mcp").status_code == 200


def test_stateless_get_answers_405_at_once(root):
    with serving(root, "--stateless") as (base, _, _), httpx2.Client(timeout=5) as client:
        answer = client.get(f"{base}/mcp", headers={"Accept": "text/event-stream"})
        assert answer.status_code == 405
        assert answer.headers["allow"] == "POST"
        assert answer.json()["error"]["message"].startswith("Method Not Allowed")
        assert initialize(client, f"{base}/mcp").status_code == 200


def rpc(client: httpx2.Client, url: str, session: str, method: str, request_id: int = 1) -> httpx2.Response:
    return client.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": method},
                       headers={**MCP_HEADERS, "Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-06-18"})


def open_session(client: httpx2.Client, url: str) -> str:
    answer = initialize(client, url)
    assert answer.status_code == 200
    session = answer.headers["mcp-session-id"]
    notified = client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                           headers={**MCP_HEADERS, "Mcp-Session-Id": session, "Mcp-Protocol-Version": "2025-06-18"})
    assert notified.status_code == 202
    return session


def test_idle_sessions_expire_after_the_configured_time(root, user_config):
    user_config(USER_CONFIG + "transport:\n  http:\n    session_idle_timeout: 1\n")
    with serving(root, "--json-response") as (base, _, _), httpx2.Client(timeout=10) as client:
        url = f"{base}/mcp"
        session = open_session(client, url)
        assert rpc(client, url, session, "tools/list").status_code == 200
        time.sleep(0.6)
        assert rpc(client, url, session, "tools/list").status_code == 200  # activity restarts the countdown
        time.sleep(2)
        assert rpc(client, url, session, "tools/list").status_code == 404


def test_sessions_beyond_the_cap_get_503_until_one_ends(root):
    with serving(root, "--json-response", "--max-sessions", "2") as (base, _, _), \
            httpx2.Client(timeout=10) as client:
        url = f"{base}/mcp"
        first, second = open_session(client, url), open_session(client, url)
        refused = initialize(client, url)
        assert refused.status_code == 503
        assert refused.json()["error"]["message"] == "Too many open sessions"
        assert rpc(client, url, second, "tools/list").status_code == 200  # open sessions are unaffected
        deleted = client.delete(url, headers={"Mcp-Session-Id": first, "Mcp-Protocol-Version": "2025-06-18"})
        assert deleted.status_code == 200
        assert initialize(client, url).status_code == 200


def test_sse_streams_beyond_the_cap_get_503(root):
    with serving(root, "--max-sessions", "1", transport="sse") as (base, _, _), \
            httpx2.Client(timeout=10) as client:
        with client.stream("GET", f"{base}/sse", headers={"Accept": "text/event-stream"}) as held:
            assert held.status_code == 200
            refused = client.get(f"{base}/sse")
            assert refused.status_code == 503
            assert refused.json()["error"]["message"] == "Too many open sessions"
        # The first stream has ended: room again (the server notices the disconnect shortly).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with client.stream("GET", f"{base}/sse") as again:
                if again.status_code == 200:
                    break
            time.sleep(0.1)
        assert again.status_code == 200


@pytest.mark.parametrize(("config", "flags", "message"), [
    ("transport:\n  http:\n    body_timeout: 0\n", (), "body_timeout must be a positive number of seconds"),
    ("transport:\n  http:\n    max_sessions: -3\n", (), "max_sessions must be a positive number of sessions"),
    ("transport:\n  http:\n    allowed_origins: [example.com]\n", (), "allowed_origins[0] must look like"),
    ("", ("--session-idle-timeout", "0"), "session-idle-timeout must be a positive number"),
    ("", ("--allowed-origin", "app.example.com/path"), "an allowed origin must look like https://host"),
    # The SDK matches exact names (and `name:*`): a wildcard name would silently never match.
    ("transport:\n  http:\n    allowed_hosts: ['*.example.com']\n", (), "wildcards such as *.example.com"),
    ("", ("--allowed-host", "*.example.com"), "wildcards such as *.example.com cannot match"),
])
def test_bad_hardening_settings_are_refused_with_one_clear_message(root, user_config, run_mxcp, config, flags,
                                                                   message):
    user_config(USER_CONFIG + config)
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), *flags, cwd=root)
    assert done.returncode == 1 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_clear_error(root, run_mxcp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_mxcp("serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", str(port),
                        cwd=root)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr


def test_the_public_url_host_is_accepted_without_listing_it():
    """Behind a proxy with `base_url`, the Host clients send is the public one: accepted (and its origins)."""
    from mxcp_core.server.transports import ServeOptions, host_policy

    policy = host_policy(ServeOptions(transport="streamable-http", host="127.0.0.1", port=8000,
                                      base_url="https://mcp.example.com/"))
    assert "mcp.example.com" in policy.hosts and "mcp.example.com:*" in policy.hosts
    assert "https://mcp.example.com" in policy.origins
    assert "evil.example" not in policy.hosts
    with_port = host_policy(ServeOptions(host="127.0.0.1", base_url="https://mcp.example.com:8443"))
    assert "mcp.example.com:8443" in with_port.hosts and "mcp.example.com" not in with_port.hosts
