"""Sign-in over HTTP, end to end: `mxcp serve` against a real authorization server (tests/authserver, Authlib).

Verifier mode: tokens the authorization server issues are verified by the served project (JWT + JWKS, or
introspection), and the token's identity reaches SQL, Python, policies and the audit. Issuer mode: the served
project is the authorization server the official MCP SDK client signs in with (discovery, registration, PKCE,
token, refresh), the login happening at the upstream server; a restart keeps the sign-in.
"""
from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import mcp
import pytest
from auth_fixtures import AuthServer, auth_server, fresh_auth_server  # noqa: F401
from server_helpers import free_port, health, mxcp_command, serve_env, stop_process, wait_for, wait_for_port
from test_auth_proxy import metadata_host  # noqa: F401

__all__ = ["auth_server", "fresh_auth_server", "metadata_host"]

SITE = """\
mxcp: 1
project: demo
profile: default
profiles:
  default:
    audit: {enabled: true, path: audit/logs.jsonl}
"""

WHOAMI_SQL = """\
mxcp: 1
tool:
  name: whoami
  description: Who the caller is, as SQL sees it
  parameters: []
  return:
    type: object
    properties:
      username: {type: string}
      email: {type: string}
      provider: {type: string}
  source:
    code: SELECT get_username() AS username, get_user_email() AS email, get_user_provider() AS provider
"""

WHOAMI_PY = """\
mxcp: 1
tool:
  name: whoami_py
  description: Who the caller is, as Python sees it
  language: python
  parameters: []
  return: {type: object}
  source: {file: ../python/who.py}
"""

WHO_PY = """\
from mxcp.runtime import user


def whoami_py() -> dict:
    current = user.current()
    return {"username": current.username, "user_id": current.user_id, "role": current.role,
            "capabilities": list(current.capabilities), "scopes": list(current.scopes),
            "has_external_token": current.external_token is not None}
"""

ADMIN_ONLY = """\
mxcp: 1
tool:
  name: admin_report
  description: Only for callers the claim mappings made admins
  parameters: []
  return: {type: string}
  policies:
    input:
      - condition: "!('admin-access' in user.capabilities)"
        action: deny
        reason: admins only
  source:
    code: SELECT 'secret figures' AS r
"""

FILES = {"mxcp-site.yml": SITE, "tools/whoami.yml": WHOAMI_SQL, "tools/whoami_py.yml": WHOAMI_PY,
         "python/who.py": WHO_PY, "tools/admin_report.yml": ADMIN_ONLY}


def verifier_config(auth: AuthServer, client: str = "mxcp-server") -> str:
    return f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        auth:
          mode: verifier
          provider: oidc
          oidc:
            config_url: {auth.config_url}
            client_id: {client}
            client_secret: {client}-secret
            claim_mappings:
              realm_access.roles: {{admin: [admin-access]}}
          authorization: {{required_scopes: [mcp:read]}}
"""


def issuer_config(auth: AuthServer, store: Path, access_ttl: int = 3600) -> str:
    return f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        auth:
          provider: oidc
          oidc:
            config_url: {auth.config_url}
            client_id: mxcp-server
            client_secret: mxcp-server-secret
            scope: openid profile email
            callback_path: /oidc/callback
            claim_mappings:
              realm_access.roles: {{admin: [admin-access]}}
          authorization: {{required_scopes: [mcp:read]}}
          access_token_ttl: {access_ttl}
          persistence: {{type: sqlite, path: {store}}}
"""


def write_project(root: Path, config: str) -> Path:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    config_path = root.parent / f"{root.name}-config.yml"
    config_path.write_text(config, encoding="utf-8")
    return config_path


@contextlib.contextmanager
def serving(root: Path, config: Path, port: int | None = None, host: str = "127.0.0.1",
            env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mxcp serve` over streamable HTTP; its stderr goes to `<root>-server.log` (read with `server_log`)."""
    port = port or free_port()
    with open(server_log_path(root), "ab") as log:
        process = subprocess.Popen(
            [*mxcp_command(), "serve", "--transport", "streamable-http", "--host", host, "--port", str(port)],
            cwd=root, env=serve_env({"MXCP_CONFIG": str(config), **(env or {})}), stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        try:
            wait_for_port(port, process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{server_log(root)}") from None
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop_process(process)


def server_log_path(root: Path) -> Path:
    return root.parent / f"{root.name}-server.log"


def server_log(root: Path) -> str:
    path = server_log_path(root)
    return path.read_text(errors="replace") if path.exists() else ""


async def call(url: str, token: str | None, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with mcp.Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            return await client.call_tool(tool, arguments or {})


def post_initialize(url: str, token: str | None) -> httpx2.Response:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    return httpx2.post(f"{url}/mcp", json=body, headers=headers, timeout=10)


# -- verifier mode ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verifier_server(auth_server, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    root = tmp_path_factory.mktemp("verifier") / "project"
    config = write_project(root, verifier_config(auth_server))
    with serving(root, config) as (url, process):
        yield url, process, root


def test_a_valid_token_signs_the_caller_in_for_sql_python_policies_and_audit(auth_server, verifier_server):
    url, _, root = verifier_server
    alice = auth_server.user_token("alice", resource=f"{url}/mcp")["access_token"]
    bob = auth_server.user_token("bob", resource=f"{url}/mcp")["access_token"]

    async def main() -> None:
        result = await call(url, alice, "whoami")
        assert result.structured_content == {"username": "alice", "email": "alice@example.com", "provider": "oidc"}
        python = (await call(url, alice, "whoami_py")).structured_content
        assert python["username"] == "alice" and python["user_id"] == "user-alice"
        assert python["capabilities"] == ["admin-access"] and "mcp:read" in python["scopes"]
        assert python["has_external_token"] is True
        assert (await call(url, alice, "admin_report")).is_error is False
        # Each request's own token decides: bob right after alice is bob, and no admin.
        assert (await call(url, bob, "whoami")).structured_content["username"] == "bob"
        denied = await call(url, bob, "admin_report")
        assert denied.is_error and "admins only" in denied.content[0].text

    anyio.run(main)
    records = [json.loads(line) for line in (root / "audit" / "logs.jsonl").read_text().splitlines()]
    users = {r["user_id"] for r in records if r["operation_name"] == "whoami"}
    assert {"user-alice", "user-bob"} <= users
    text = (root / "audit" / "logs.jsonl").read_text()
    assert alice not in text and bob not in text


def test_tokens_from_every_signing_algorithm_and_opaque_ones_by_introspection(auth_server, tmp_path):
    root = tmp_path / "opaque"
    config = write_project(root, verifier_config(auth_server, client="mxcp-opaque"))
    with serving(root, config) as (url, _):
        resource = f"{url}/mcp"
        opaque = auth_server.user_token("bob", client_id="mxcp-opaque", client_secret="mxcp-opaque-secret",
                                        resource=resource)["access_token"]
        assert opaque.count(".") != 2  # not a JWT: only introspection can vouch for it
        tokens = [opaque] + [
            auth_server.user_token("alice", client_id=client, client_secret=f"{client}-secret",
                                   resource=resource)["access_token"]
            for client in ("mxcp-server", "mxcp-es256", "mxcp-eddsa")
        ]

        async def main() -> list[str]:
            return [(await call(url, token, "whoami")).structured_content["username"] for token in tokens]

        assert anyio.run(main) == ["bob", "alice", "alice", "alice"]
        inactive = auth_server.user_token("bob", client_id="mxcp-opaque", client_secret="mxcp-opaque-secret",
                                          resource=resource)["access_token"]
        auth_server.revoke(inactive, client_id="mxcp-opaque", client_secret="mxcp-opaque-secret")
        assert post_initialize(url, inactive).status_code == 401  # revoked before first use: introspection says so


def test_refusals_carry_the_challenge_mcp_clients_need(auth_server, verifier_server):
    url, process, _ = verifier_server
    resource = f"{url}/mcp"
    claims = auth_server.claims
    bad = {
        "expired": auth_server.mint(claims(aud=resource, expires_in=-120)),
        "not yet valid": auth_server.mint(claims(aud=resource, nbf=int(time.time()) + 600)),
        "wrong audience": auth_server.user_token("alice", resource="http://127.0.0.1:9/other")["access_token"],
        "default audience only": auth_server.user_token("alice")["access_token"],
        "no audience": auth_server.mint(claims(aud=None)),
        "wrong issuer": auth_server.mint(claims(aud=resource, iss="http://127.0.0.1:1")),
        "bad signature": auth_server.mint_with_foreign_key(claims(aud=resource)),
        "alg none": auth_server.unsigned(claims(aud=resource)),
        "HS256 with the public key": auth_server.hs256_with_public_key(claims(aud=resource)),
        "garbage": "not-a-token",
    }
    for why, token in bad.items():
        answer = post_initialize(url, token)
        assert answer.status_code == 401, why
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, why
        assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/mcp"' in challenge, why
        assert 'scope="mcp:read"' in challenge, why

    missing = post_initialize(url, None)
    assert missing.status_code == 401 and "error=" not in missing.headers["www-authenticate"]
    assert 'scope="mcp:read"' in missing.headers["www-authenticate"]

    no_scope = auth_server.user_token("alice", scope="openid profile", resource=resource)["access_token"]
    forbidden = post_initialize(url, no_scope)
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope"' in forbidden.headers["www-authenticate"]

    assert post_initialize(url, auth_server.mint(claims(aud=resource))).status_code == 200
    assert httpx2.get(f"{url}/health").status_code == 200
    metadata = httpx2.get(f"{url}/.well-known/oauth-protected-resource/mcp").json()
    assert metadata["resource"] == resource
    assert [s.rstrip("/") for s in metadata["authorization_servers"]] == [auth_server.issuer]
    assert metadata["scopes_supported"] == ["mcp:read"]

    # Nothing the server logged holds a token.
    log = server_log(verifier_server[2])
    for token in [*bad.values(), no_scope]:
        assert token not in log


def test_a_provider_no_plugin_offers_stops_serve_naming_it(auth_server, tmp_path, run_mxcp):
    root = tmp_path / "p"
    config = write_project(root, verifier_config(auth_server).replace("provider: oidc", "provider: okta"))
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0
    assert "sign-in provider 'okta' is not available: no loaded plugin provides it" in done.stderr
    assert "projects.demo.profiles.default.auth.provider" in done.stderr


def test_a_disabled_provider_plugin_is_named(auth_server, tmp_path, run_mxcp):
    root = tmp_path / "p"
    config = write_project(root, verifier_config(auth_server))
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config), "MXCP_DISABLE_PLUGINS": "auth_oidc"})
    assert done.returncode != 0
    assert "provided by plugin 'auth_oidc', which is disabled or not installed" in done.stderr
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config), "MXCP_DISABLE_PLUGINS": "sign_in"})
    assert done.returncode != 0 and "plugin 'sign_in', which is disabled" in done.stderr


def test_an_unreachable_provider_stops_serve(tmp_path, run_mxcp):
    root = tmp_path / "p"
    dead = AuthServer.__new__(AuthServer)  # only its URLs: nothing listens on this port
    dead.port = free_port()
    config = write_project(root, verifier_config(dead))
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0 and "sign-in" in done.stderr and str(dead.port) in done.stderr


def test_no_sign_in_on_an_exposed_host_warns_that_the_server_is_open(tmp_path):
    root = tmp_path / "p"
    config = write_project(root, "mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                                 "        auth: {provider: none}\n")
    with serving(root, config, host="0.0.0.0"):
        pass
    log = server_log(root)
    assert "no sign-in (auth.provider none): anyone who can reach 0.0.0.0" in log


# -- issuer mode: the official SDK client signs in ----------------------------------------------------------


class MemoryTokens:
    """The SDK client's token storage, kept across client sessions (a client remembering its sign-in)."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None
        self.saved: list[Any] = []

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens
        self.saved.append(tokens)

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


class HeadlessBrowser:
    """What a person's browser does: logs in at the upstream provider, follows redirects, and hands the code
    that reaches the client's redirect URI back to the client."""

    def __init__(self, auth: AuthServer, redirect_uri: str, username: str = "alice") -> None:
        self.auth, self.redirect_uri, self.username = auth, redirect_uri, username
        self.result: Any = None
        self.visits = 0
        self.consented = 0

    async def open(self, authorization_url: str) -> None:
        from mcp.client.auth import AuthorizationCodeResult

        self.visits += 1
        async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as browser:
            login = await browser.post(f"{self.auth.issuer}/login",
                                       data={"username": self.username, "password": f"{self.username}-pw"})
            assert login.status_code in (200, 302, 303)
            location = authorization_url
            for _ in range(10):
                if location.startswith(self.redirect_uri):
                    query = parse_qs(urlsplit(location).query)
                    assert "code" in query, f"the sign-in failed: {location}"
                    self.result = AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0])
                    return
                answer = await browser.get(location)
                if answer.status_code == 200 and answer.url.path == "/oauth/consent":
                    # The server asks whether this self-registered client may act for the user: approve.
                    form = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', answer.text))
                    self.consented += 1
                    answer = await browser.post(str(answer.url.copy_with(query=None)),
                                                data={**form, "decision": "approve"})
                assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
                location = str(answer.headers["location"])
                if location.startswith("/"):
                    location = f"{urlsplit(str(answer.url)).scheme}://{urlsplit(str(answer.url)).netloc}{location}"
            raise AssertionError("too many redirects")

    async def code(self) -> Any:
        assert self.result is not None
        return self.result


def sdk_client_auth(url: str, storage: MemoryTokens, browser: HeadlessBrowser,
                    client_metadata_url: str | None = None) -> Any:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    metadata = OAuthClientMetadata(client_name="sign-in test", redirect_uris=[browser.redirect_uri],
                                   grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                                   token_endpoint_auth_method="none")
    return OAuthClientProvider(server_url=f"{url}/mcp", client_metadata=metadata, storage=storage,
                               redirect_handler=browser.open, callback_handler=browser.code,
                               client_metadata_url=client_metadata_url)


async def tool_call(url: str, http: httpx2.AsyncClient, tool: str) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    async with mcp.Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        return await client.call_tool(tool, {})


def test_issuer_mode_the_sdk_client_signs_in_refreshes_and_survives_a_restart(auth_server, tmp_path):
    root = tmp_path / "issuer"
    store = tmp_path / "state" / "oauth.db"
    ttl = 2
    config = write_project(root, issuer_config(auth_server, store, access_ttl=ttl))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    storage = MemoryTokens()
    browser = HeadlessBrowser(auth_server, f"http://127.0.0.1:{free_port()}/callback")

    async def main() -> None:
        # One client for the whole test, like an MCP client application that stays open.
        async with httpx2.AsyncClient(auth=sdk_client_auth(url, storage, browser), timeout=30) as http:
            with serving(root, config, port):
                metadata = httpx2.get(f"{url}/.well-known/oauth-authorization-server").json()
                assert metadata["issuer"] == url and metadata["code_challenge_methods_supported"] == ["S256"]
                assert metadata.get("client_id_metadata_document_supported") is True
                first = await tool_call(url, http, "whoami")
                assert first.structured_content["username"] == "alice"
                assert browser.visits == 1 and storage.client is not None  # registered, signed in once
                assert browser.consented == 1  # a self-registered client: the user approved it
                python = (await tool_call(url, http, "whoami_py")).structured_content
                assert python["capabilities"] == ["admin-access"] and python["has_external_token"] is True
                await anyio.sleep(ttl + 0.3)  # the access token expires: the client refreshes, no new login
                again = await tool_call(url, http, "whoami")
                assert again.structured_content["username"] == "alice"
                # Refreshed (at least once: a slow machine may take longer than the lifetime between calls).
                assert browser.visits == 1 and len(storage.saved) >= 2
                assert storage.saved[-1].access_token != storage.saved[0].access_token
                assert storage.saved[-1].refresh_token != storage.saved[0].refresh_token  # rotated
                refreshed = len(storage.saved)
            # Restarted: the tokens (the refresh token included) live in the store, not in the process.
            with serving(root, config, port):
                assert (await tool_call(url, http, "whoami")).structured_content["username"] == "alice"
                await anyio.sleep(ttl + 0.3)
                assert (await tool_call(url, http, "whoami")).structured_content["username"] == "alice"
                assert browser.visits == 1 and len(storage.saved) > refreshed  # refreshed after the restart

    anyio.run(main)
    raw = b"".join(p.read_bytes() for p in store.parent.iterdir())
    for tokens in storage.saved:
        assert tokens.access_token.encode() not in raw and tokens.refresh_token.encode() not in raw
    log = server_log(root)
    for tokens in storage.saved:
        assert tokens.access_token not in log and tokens.refresh_token not in log


def test_identity_comes_from_each_requests_token_not_from_the_session(auth_server, verifier_server):
    """A request joining alice's session with bob's token is never alice (the SDK refuses the foreign session)."""
    url, _, _ = verifier_server
    resource = f"{url}/mcp"
    alice = auth_server.user_token("alice", resource=resource)["access_token"]
    bob = auth_server.user_token("bob", resource=resource)["access_token"]
    opened = post_initialize(url, alice)
    session = opened.headers["mcp-session-id"]
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    httpx2.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={**headers, "Authorization": f"Bearer {alice}"}, timeout=10)
    call_whoami = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    hijack = httpx2.post(f"{url}/mcp", json=call_whoami, headers={**headers, "Authorization": f"Bearer {bob}"},
                         timeout=10)
    assert "alice" not in hijack.text
    assert hijack.status_code in (403, 404), hijack.text
    own = httpx2.post(f"{url}/mcp", json=call_whoami, headers={**headers, "Authorization": f"Bearer {alice}"},
                      timeout=10)
    assert own.status_code == 200 and "alice" in own.text


def test_sse_transport_requires_the_token_too(auth_server, tmp_path):
    root = tmp_path / "sse"
    config = write_project(root, verifier_config(auth_server))
    port = free_port()
    with open(server_log_path(root), "ab") as log:
        process = subprocess.Popen(
            [*mxcp_command(), "serve", "--transport", "sse", "--host", "127.0.0.1", "--port", str(port)],
            cwd=root, env=serve_env({"MXCP_CONFIG": str(config)}), stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for_port(port, process)
        url = f"http://127.0.0.1:{port}"
        refused = httpx2.get(f"{url}/sse", timeout=10)
        assert refused.status_code == 401
        assert f'resource_metadata="{url}/.well-known/oauth-protected-resource/sse"' in \
            refused.headers["www-authenticate"]
        assert httpx2.post(f"{url}/messages/?session_id=x", json={}, timeout=10).status_code == 401
        token = auth_server.user_token("alice", resource=f"{url}/sse")["access_token"]
        with httpx2.stream("GET", f"{url}/sse", headers={"Authorization": f"Bearer {token}"}, timeout=10) as stream:
            assert stream.status_code == 200
    finally:
        stop_process(process)


def test_settings_under_provider_none_are_refused_not_served_open(tmp_path, run_mxcp):
    root = tmp_path / "p"
    config = write_project(root, "mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                                 "        auth: {provider: NONE, oidc: {config_url: 'https://idp', client_id: x}}\n")
    done = run_mxcp("serve", "--transport", "streamable-http", "--port", str(free_port()), cwd=root,
                    env={"MXCP_CONFIG": str(config)})
    assert done.returncode != 0
    assert "provider is 'none' but the block configures oidc" in done.stderr


def test_issuer_mode_a_client_identified_by_its_metadata_document(auth_server, metadata_host, tmp_path):
    """The SDK client with a Client ID Metadata Document: its client_id is an https URL the server fetches (here
    served on 127.0.0.1 with a certificate the server trusts through SSL_CERT_FILE), no registration."""
    root = tmp_path / "cimd"
    config = write_project(root, issuer_config(auth_server, tmp_path / "state" / "oauth.db")
                           + "          allow_private_metadata_hosts: true\n")
    storage = MemoryTokens()
    browser = HeadlessBrowser(auth_server, f"http://127.0.0.1:{free_port()}/callback")
    document = f"{metadata_host.url}/clients/sdk-client.json"
    metadata_host.docs["/clients/sdk-client.json"] = {
        "client_id": document, "client_name": "SDK client (metadata document)",
        "redirect_uris": [browser.redirect_uri], "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"], "token_endpoint_auth_method": "none"}
    with serving(root, config, env={"SSL_CERT_FILE": str(metadata_host.certfile)}) as (url, _):
        async def main() -> Any:
            auth = sdk_client_auth(url, storage, browser, client_metadata_url=document)
            async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
                return await tool_call(url, http, "whoami")

        assert anyio.run(main).structured_content["username"] == "alice"
    assert storage.client.client_id == document  # the URL is the client id: nothing was registered
    assert browser.consented == 1 and "/clients/sdk-client.json" in metadata_host.fetches


def test_issuer_mode_refuses_replayed_codes_wrong_verifiers_and_foreign_redirects(auth_server, tmp_path):
    """The authorization server `mxcp serve` becomes, attacked directly: each refusal has the OAuth status, and
    the server's log holds none of the codes or tokens involved."""
    import base64
    import hashlib
    import secrets

    root = tmp_path / "attacks"
    config = write_project(root, issuer_config(auth_server, tmp_path / "state" / "oauth.db"))
    redirect = f"http://127.0.0.1:{free_port()}/cb"
    with serving(root, config) as (url, _):
        client = httpx2.post(f"{url}/register", json={"redirect_uris": [redirect], "client_name": "probe",
                                                       "token_endpoint_auth_method": "none"}, timeout=10).json()
        browser = HeadlessBrowser(auth_server, redirect)

        def code_for(verifier: str, state: str) -> str:
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            query = httpx2.QueryParams({"response_type": "code", "client_id": client["client_id"],
                                        "redirect_uri": redirect, "state": state, "code_challenge": challenge,
                                        "code_challenge_method": "S256", "scope": "mcp:read"})
            anyio.run(browser.open, f"{url}/authorize?{query}")
            return browser.result.code

        def exchange(code: str, verifier: str) -> httpx2.Response:
            return httpx2.post(f"{url}/token", data={"grant_type": "authorization_code", "code": code,
                                                     "redirect_uri": redirect, "client_id": client["client_id"],
                                                     "code_verifier": verifier}, timeout=10)

        verifier = secrets.token_urlsafe(48)
        code = code_for(verifier, "one")
        first = exchange(code, verifier)
        assert first.status_code == 200
        replayed = exchange(code, verifier)
        assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
        # A replayed code revokes what the first exchange issued.
        assert post_initialize(url, first.json()["access_token"]).status_code == 401

        other = secrets.token_urlsafe(48)
        wrong = exchange(code_for(other, "two"), secrets.token_urlsafe(48))
        assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"

        foreign = httpx2.get(f"{url}/authorize", params={
            "response_type": "code", "client_id": client["client_id"], "redirect_uri": "http://127.0.0.1:1/evil",
            "state": "x", "code_challenge": "a" * 43, "code_challenge_method": "S256"}, timeout=10)
        assert foreign.status_code == 400 and "location" not in foreign.headers
        plain = httpx2.get(f"{url}/authorize", params={
            "response_type": "code", "client_id": client["client_id"], "redirect_uri": redirect, "state": "x",
            "code_challenge": "a" * 43, "code_challenge_method": "plain"}, timeout=10)
        assert "code=" not in plain.headers.get("location", "") and "error" in plain.headers.get("location", "x")
    log = server_log(root)
    for secret in (code, first.json()["access_token"], first.json()["refresh_token"], verifier):
        assert secret not in log


def test_issuer_only_settings_in_verifier_mode_are_named_not_silently_ignored(auth_server, tmp_path):
    root = tmp_path / "p"
    config = write_project(root, verifier_config(auth_server) + "          persistence: {type: sqlite}\n"
                                                                 "          access_token_ttl: 60\n")
    with serving(root, config) as (url, _):
        assert post_initialize(url, None).status_code == 401  # served, and signed in all the same
    assert "persistence, access_token_ttl only apply to mode issuer" in server_log(root)


def test_sign_in_survives_a_reload_of_the_definitions_and_still_refuses_a_changed_auth_block(auth_server, tmp_path):
    """SIGHUP reads the whole project again: the sign-in set up at start stays in force (callers keep their
    identity, never anonymous), and a later change of `auth:` is still refused."""
    root = tmp_path / "project"
    config = write_project(root, verifier_config(auth_server))
    with serving(root, config) as (url, process):
        alice = auth_server.user_token("alice", resource=f"{url}/mcp")["access_token"]
        assert anyio.run(call, url, alice, "whoami").structured_content["username"] == "alice"
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(url)[1].get("reloads") == 1)
        assert "config_problem" not in health(url)[1]
        assert anyio.run(call, url, alice, "whoami").structured_content["username"] == "alice"
        config.write_text(verifier_config(auth_server, client="another-client"), encoding="utf-8")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(url)[1].get("reloads") == 2)
        assert "sign-in settings" in health(url)[1]["config_problem"]
        assert anyio.run(call, url, alice, "whoami").structured_content["username"] == "alice"
