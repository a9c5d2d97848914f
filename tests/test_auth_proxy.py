"""The authorization-server proxy ("issuer" mode) and its SQLite store, driven over real HTTP.

The proxy's routes run in uvicorn on 127.0.0.1 (a thread per server); its upstream is the real authorization
server of tests/authserver (subprocess, `auth_server` fixture); client metadata documents come from an HTTPS
server on 127.0.0.1 with a self-signed certificate generated here and trusted through the proxy's httpx2 client.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
import uvicorn
from auth_fixtures import auth_server  # noqa: F401
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mxcp_core.sign_in import ProviderConnection
from mxcp_plugins.auth.proxy import CONSENT_PATH, SignInProxy
from mxcp_plugins.auth.store_sqlite import SqliteSignInStore, open_sign_in_store

RESOURCE_PATH = "/mcp"
CLIENT_REDIRECT = "http://127.0.0.1:8976/cb"  # nothing listens: the final redirect is only read


# ------------------------------------------------------------------------------------------- servers
@contextlib.contextmanager
def serve(make_app: Callable[[int], Any], *, certfile: str | None = None, keyfile: str | None = None,
          port: int = 0) -> Iterator[int]:
    """Run the app `make_app(port)` builds with uvicorn in a thread on 127.0.0.1; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(port), log_config=None, access_log=False, lifespan="on",
                            ssl_certfile=certfile, ssl_keyfile=keyfile, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


class ProxyServer:
    """One SignInProxy over a SQLite file, served on 127.0.0.1."""

    def __init__(self, proxy: SignInProxy, store: SqliteSignInStore, url: str, port: int,
                 stop: Callable[[], None]) -> None:
        self.proxy, self.store, self.url, self.port, self.stop = proxy, store, url, port, stop

    @property
    def resource(self) -> str:
        return self.url + RESOURCE_PATH

    def verify(self, token: str):
        return asyncio.run(self.proxy.verifier.verify_token(token))


@pytest.fixture
def make_proxy(auth_server, tmp_path: Path) -> Iterator[Callable[..., ProxyServer]]:  # noqa: F811
    discovery = auth_server.discovery()
    endpoints = SimpleNamespace(**{k: discovery.get(k) for k in (
        "issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint")})
    stack = contextlib.ExitStack()

    def make(db: Path | None = None, *, verify: Any = True, upstream_secret: str = "mxcp-server-secret",
             upstream_endpoints: Any = endpoints, port: int = 0, authorize_params: dict[str, str] | None = None,
             **options: Any) -> ProxyServer:
        own = contextlib.ExitStack()
        stack.callback(own.close)
        store = SqliteSignInStore(db or tmp_path / "signin.db")
        own.callback(store.close)
        upstream = ProviderConnection(client_id="mxcp-server", client_secret=upstream_secret,
                                      scope="openid profile email", config_url=auth_server.config_url,
                                      authorize_params=authorize_params or {})
        holder: dict[str, Any] = {}

        def app(port: int) -> Starlette:
            base = f"http://127.0.0.1:{port}"
            http = httpx2.AsyncClient(timeout=10, verify=verify)
            proxy = SignInProxy(store=store, upstream=upstream, endpoints=upstream_endpoints,
                                provider_name="testidp", base_url=base, resource_url=base + RESOURCE_PATH,
                                http=http, **options)
            holder["proxy"] = proxy

            @contextlib.asynccontextmanager
            async def lifespan(_app):
                yield
                await http.aclose()

            return Starlette(routes=proxy.routes(), lifespan=lifespan)

        port = own.enter_context(serve(app, port=port))
        return ProxyServer(holder["proxy"], store, f"http://127.0.0.1:{port}", port, own.close)

    with stack:
        yield make


# ------------------------------------------------------------------------------------------- client side
def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def register(server: ProxyServer, *, redirect_uris: list[str] | None = None, auth_method: str = "none",
             **extra: Any) -> httpx2.Response:
    body = {"redirect_uris": redirect_uris or [CLIENT_REDIRECT], "client_name": "test client",
            "token_endpoint_auth_method": auth_method, **extra}
    return httpx2.post(server.url + "/register", json=body, timeout=10)


def public_client(server: ProxyServer) -> dict[str, Any]:
    response = register(server)
    assert response.status_code == 201, response.text
    return response.json()


class Authorization:
    def __init__(self, response: httpx2.Response, verifier: str, location: str | None = None) -> None:
        self.response, self.verifier, self.location = response, verifier, location
        self.params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()} if location else {}

    @property
    def code(self) -> str | None:
        return self.params.get("code")


def authorize(server: ProxyServer, auth_server, client_id: str, *, redirect_uri: str | None = CLIENT_REDIRECT,  # noqa: F811
              user: str = "alice", state: str = "client-state", method: str = "S256", verifier: str | None = None,
              extra: dict[str, str] | None = None, hops: list[str] | None = None,
              consent: str | None = "approve") -> Authorization:
    """The browser part: our /authorize, our consent page (answered with `consent`), the upstream (already signed
    in), our callback, the client redirect."""
    verifier = verifier or pkce()[0]
    challenge = s256(verifier) if method == "S256" else verifier
    params = {"response_type": "code", "client_id": client_id, "state": state,
              "code_challenge": challenge, "code_challenge_method": method}
    if redirect_uri:
        params["redirect_uri"] = redirect_uri
    params.update(extra or {})
    target = redirect_uri or CLIENT_REDIRECT
    with httpx2.Client(timeout=10, follow_redirects=False) as http:
        assert auth_server.login(http, user).status_code in (302, 303)
        response = http.get(server.url + "/authorize", params=params)
        for _ in range(6):
            location = response.headers.get("location")
            if response.status_code == 200 and consent and response.url.path == CONSENT_PATH:
                response = approve(http, server, response)
                continue
            if response.status_code not in (302, 303) or not location:
                return Authorization(response, verifier)
            if hops is not None:
                hops.append(location)
            if location.startswith(target):
                return Authorization(response, verifier, location)
            response = http.get(location)
    raise AssertionError("too many redirects")


def consent_form(page: httpx2.Response) -> dict[str, str]:
    """The hidden fields of the consent page's form."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page.text))


def approve(http: httpx2.Client, server: ProxyServer, page: httpx2.Response, decision: str = "approve",
            ) -> httpx2.Response:
    return http.post(server.url + CONSENT_PATH, data={**consent_form(page), "decision": decision})


def token(server: ProxyServer, **data: str) -> httpx2.Response:
    return httpx2.post(server.url + "/token", data=data, timeout=10)


def exchange(server: ProxyServer, client: dict[str, Any], auth: Authorization, *, verifier: str | None = None,
             redirect_uri: str = CLIENT_REDIRECT) -> httpx2.Response:
    data = {"grant_type": "authorization_code", "code": auth.code or "", "redirect_uri": redirect_uri,
            "client_id": client["client_id"], "code_verifier": verifier or auth.verifier}
    if client.get("client_secret"):
        data["client_secret"] = client["client_secret"]
    return token(server, **data)


def refresh(server: ProxyServer, client: dict[str, Any], refresh_token: str, **extra: str) -> httpx2.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client["client_id"], **extra}
    if client.get("client_secret"):
        data["client_secret"] = client["client_secret"]
    return token(server, **data)


def sign_in(server: ProxyServer, auth_server, client: dict[str, Any], **kw: Any) -> dict[str, Any]:  # noqa: F811
    auth = authorize(server, auth_server, client["client_id"], **kw)
    assert auth.code, (auth.location, auth.response.status_code, auth.response.text)
    response = exchange(server, client, auth)
    assert response.status_code == 200, response.text
    return {**response.json(), "code": auth.code}


# ------------------------------------------------------------------------------------------- the flow
def test_full_flow_yields_upstream_identity(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    metadata = httpx2.get(server.url + "/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == server.url
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["registration_endpoint"] == server.url + "/register"
    assert metadata["revocation_endpoint"] == server.url + "/revoke"
    assert metadata["code_challenge_methods_supported"] == ["S256"]

    client = public_client(server)
    hops: list[str] = []
    auth = authorize(server, auth_server, client["client_id"], hops=hops)
    assert hops[0].startswith(server.url + CONSENT_PATH + "?login=")  # a self-registered client: the user is asked
    upstream = urlsplit(hops[1])
    assert f"{upstream.scheme}://{upstream.netloc}{upstream.path}" == auth_server.authorize_url
    up = {k: v[0] for k, v in parse_qs(upstream.query).items()}
    assert up["client_id"] == "mxcp-server" and up["code_challenge_method"] == "S256"
    assert up["redirect_uri"] == server.url + "/oauth/callback" and up["scope"] == "openid profile email"
    assert hops[2].startswith(server.url + "/oauth/callback?")
    assert auth.params["state"] == "client-state" and auth.code

    response = exchange(server, client, auth)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600 and tokens["refresh_token"]

    access = server.verify(tokens["access_token"])
    assert access is not None
    assert access.client_id == client["client_id"] and access.subject == "user-alice"
    assert access.resource == server.resource
    claims = access.claims
    assert claims["preferred_username"] == "alice" and claims["email"] == "alice@example.com"
    assert claims["realm_access"] == {"roles": ["admin", "analyst"]} and claims["groups"] == ["eng"]
    assert claims["iss"] == server.url and claims["mxcp:provider"] == "testidp"
    # The upstream token is the real one: the upstream accepts it.
    assert auth_server.userinfo(claims["mxcp:upstream_token"]).json()["sub"] == "user-alice"
    assert server.verify("not-a-token") is None


def test_code_replay_is_refused_and_revokes_the_first_tokens(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    auth = authorize(server, auth_server, client["client_id"])
    first = exchange(server, client, auth)
    assert first.status_code == 200
    assert server.verify(first.json()["access_token"]) is not None

    again = exchange(server, client, auth)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_grant", "error_description": "authorization code already used"}
    assert server.verify(first.json()["access_token"]) is None
    assert refresh(server, client, first.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_wrong_pkce_verifier_is_invalid_grant(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    auth = authorize(server, auth_server, client["client_id"])
    response = exchange(server, client, auth, verifier=pkce()[0])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_unregistered_redirect_uri_is_refused_without_redirect(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    auth = authorize(server, auth_server, client["client_id"], redirect_uri="http://127.0.0.1:8976/elsewhere")
    assert auth.response.status_code == 400 and "location" not in auth.response.headers
    assert auth.response.json()["error"] == "invalid_request"


def test_plain_pkce_is_refused(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    hops: list[str] = []
    auth = authorize(server, auth_server, client["client_id"], method="plain", hops=hops)
    # Refused before the upstream is involved: the error goes back to the (registered) client redirect.
    assert len(hops) == 1 and auth.params["error"] == "invalid_request" and "code" not in auth.params


def test_resource_and_scopes_are_checked(make_proxy, auth_server):  # noqa: F811
    server = make_proxy(scopes=["mcp:read", "mcp:write"])
    metadata = httpx2.get(server.url + "/.well-known/oauth-authorization-server").json()
    assert metadata["scopes_supported"] == ["mcp:read", "mcp:write"]
    client = public_client(server)
    assert client["scope"] == "mcp:read mcp:write"
    other = authorize(server, auth_server, client["client_id"], extra={"resource": "https://other.example/mcp"})
    assert other.params["error"] == "invalid_target" and other.params["state"] == "client-state"
    unknown = authorize(server, auth_server, client["client_id"], extra={"scope": "admin"})
    assert unknown.params["error"] == "invalid_scope"
    # The resource with a trailing slash is the same resource; a narrower scope is granted as asked.
    tokens = sign_in(server, auth_server, client, extra={"resource": server.resource + "/", "scope": "mcp:read"})
    assert tokens["scope"] == "mcp:read"
    access = server.verify(tokens["access_token"])
    assert access is not None and access.scopes == ["mcp:read"]


def test_registration_refuses_non_loopback_http_redirects(make_proxy):
    server = make_proxy()
    response = register(server, redirect_uris=["http://example.com/cb"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_redirect_uri"
    assert register(server, redirect_uris=["https://example.com/cb"]).status_code == 201
    assert register(server, redirect_uris=["http://localhost:1234/cb"]).status_code == 201
    # A consent page must not read "https://claude.ai@attacker.example" as claude.ai: no userinfo.
    assert register(server, redirect_uris=["https://claude.ai@attacker.example/cb"]).status_code == 400
    # Native apps' own schemes (Cursor, VS Code) register; schemes a browser would run or read do not.
    assert register(server, redirect_uris=["cursor://anysphere.cursor-retrieval/oauth/callback"]).status_code == 201
    for unsafe in ("javascript:alert(1)", "data:text/html,x", "file:///etc/passwd"):
        assert register(server, redirect_uris=[unsafe]).status_code == 400, unsafe


def test_registration_can_be_switched_off(make_proxy):
    server = make_proxy(allow_registration=False)
    assert httpx2.post(server.url + "/register", json={"redirect_uris": [CLIENT_REDIRECT]}).status_code in (404, 405)
    metadata = httpx2.get(server.url + "/.well-known/oauth-authorization-server").json()
    assert "registration_endpoint" not in metadata


def test_refresh_rotation_and_reuse_revokes_the_grant(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    first = sign_in(server, auth_server, client)

    rotated = refresh(server, client, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    access = server.verify(second["access_token"])
    assert access is not None and access.claims["preferred_username"] == "alice"

    # The old refresh token is refused, and its reuse revokes the whole grant.
    reuse = refresh(server, client, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert server.verify(second["access_token"]) is None
    assert server.verify(first["access_token"]) is None
    assert refresh(server, client, second["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_belongs_to_its_client(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client, other = public_client(server), public_client(server)
    tokens = sign_in(server, auth_server, client)
    assert refresh(server, other, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert refresh(server, client, tokens["refresh_token"]).status_code == 200


def test_revocation_ends_the_grant(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    tokens = sign_in(server, auth_server, client)
    # The SDK's RevocationRequest requires a client_secret field, even empty for a public client.
    response = httpx2.post(server.url + "/revoke", data={"token": tokens["access_token"],
                                                         "client_id": client["client_id"], "client_secret": ""})
    assert response.status_code == 200
    assert server.verify(tokens["access_token"]) is None
    assert refresh(server, client, tokens["refresh_token"]).json()["error"] == "invalid_grant"

    # Revoking by refresh token works too.
    tokens = sign_in(server, auth_server, client)
    response = httpx2.post(server.url + "/revoke", data={"token": tokens["refresh_token"], "client_secret": "",
                                                         "client_id": client["client_id"],
                                                         "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert server.verify(tokens["access_token"]) is None


def test_static_confidential_client(make_proxy, auth_server):  # noqa: F811
    server = make_proxy(clients=[{"client_id": "cli", "name": "CLI", "client_secret": "cli-secret",
                                  "redirect_uris": [CLIENT_REDIRECT], "scopes": ["mcp:read"]}],
                        scopes=["mcp:read"])
    client = {"client_id": "cli", "client_secret": "cli-secret"}
    tokens = sign_in(server, auth_server, client)
    assert tokens["scope"] == "mcp:read"
    auth = authorize(server, auth_server, "cli")
    bad = exchange(server, {"client_id": "cli", "client_secret": "wrong"}, auth)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


def start_login(http: httpx2.Client, server: ProxyServer, client: dict[str, Any], state: str = "s1",
                redirect_uri: str = CLIENT_REDIRECT) -> httpx2.Response:
    """/authorize in `http` (a browser), following to the consent page."""
    _verifier, challenge = pkce()
    start = http.get(server.url + "/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": redirect_uri,
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256"})
    assert start.status_code == 302 and urlsplit(start.headers["location"]).path == CONSENT_PATH
    return http.get(start.headers["location"])


def test_callback_errors(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    unknown = httpx2.get(server.url + "/oauth/callback", params={"code": "x", "state": "nope"})
    assert unknown.status_code == 400 and "expired, was already used" in unknown.text
    assert "location" not in unknown.headers

    with httpx2.Client(timeout=10, follow_redirects=False) as http:
        page = start_login(http, server, client)
        upstream = approve(http, server, page)
        state = parse_qs(urlsplit(upstream.headers["location"]).query)["state"][0]
        denied = http.get(server.url + "/oauth/callback", params={"error": "access_denied", "state": state})
        assert denied.status_code == 302
        params = parse_qs(urlsplit(denied.headers["location"]).query)
        assert denied.headers["location"].startswith(CLIENT_REDIRECT)
        assert params["error"] == ["access_denied"] and params["state"] == ["s1"]
        # The pending login was used up.
        again = http.get(server.url + "/oauth/callback", params={"code": "x", "state": state})
        assert again.status_code == 400


def test_a_self_registered_client_gets_no_code_without_the_users_approval(make_proxy, auth_server):  # noqa: F811
    """The confused-deputy attack: an attacker registers a client with their own redirect URI and sends a user who
    is signed in upstream a crafted /authorize link. The user sees a consent page naming the client and where it
    returns to; nothing reaches the attacker unless the user approves in that browser."""
    server = make_proxy()
    attacker = register(server, redirect_uris=["https://attacker.example/cb"], client_name="Claude").json()
    with httpx2.Client(timeout=10, follow_redirects=False) as victim:
        assert auth_server.login(victim, "alice").status_code in (302, 303)
        page = start_login(victim, server, attacker, redirect_uri="https://attacker.example/cb")
        assert page.status_code == 200 and "https://attacker.example" in page.text and "Approve" in page.text
        assert page.headers["x-frame-options"] == "DENY"
        form = consent_form(page)
        # A cross-site form post (the attacker's page auto-submitting) carries no SameSite=Lax cookie: refused.
        forged = httpx2.post(server.url + CONSENT_PATH, data={**form, "decision": "approve"})
        assert forged.status_code == 403 and "location" not in forged.headers
        # The user saying no sends the client an access_denied, never a code.
        denied = approve(victim, server, page, decision="deny")
        assert denied.status_code == 303
        params = parse_qs(urlsplit(denied.headers["location"]).query)
        assert params["error"] == ["access_denied"] and "code" not in params


def test_a_login_approved_in_one_browser_cannot_be_finished_in_another(make_proxy, auth_server):  # noqa: F811
    """The attacker approves a login of their own client in their own browser and hands the victim (signed in
    upstream) its consent page and upstream URL: the page is refused (the login belongs to the browser that
    opened it first), and the upstream round trip ends at a callback that refuses the victim's browser, whatever
    cookies of other logins it holds."""
    server = make_proxy()
    attacker = register(server, redirect_uris=["https://attacker.example/cb"]).json()
    with httpx2.Client(timeout=10, follow_redirects=False) as own, \
            httpx2.Client(timeout=10, follow_redirects=False) as victim:
        own_page = start_login(own, server, attacker, redirect_uri="https://attacker.example/cb")
        upstream = approve(own, server, own_page)
        assert upstream.status_code == 303
        consent_url = str(own_page.url)
        assert auth_server.login(victim, "alice").status_code in (302, 303)
        start_login(victim, server, attacker, redirect_uri="https://attacker.example/cb")  # a login of its own
        assert victim.get(consent_url).status_code == 403  # someone else's login: not shown, not rebound
        back = victim.get(upstream.headers["location"])  # the victim is signed in upstream: auto-approved
        assert back.status_code in (302, 303) and back.headers["location"].startswith(server.url + "/oauth/callback")
        refused = victim.get(back.headers["location"])
        assert refused.status_code == 400 and "another browser" in refused.text
        assert "code=" not in refused.headers.get("location", "")


def test_two_logins_in_one_browser_do_not_undo_each_other(make_proxy, auth_server):  # noqa: F811
    server = make_proxy()
    client = public_client(server)
    with httpx2.Client(timeout=10, follow_redirects=False) as http:
        assert auth_server.login(http, "alice").status_code in (302, 303)
        first, second = start_login(http, server, client, state="a"), start_login(http, server, client, state="b")
        for page, state in ((first, "a"), (second, "b")):
            upstream = approve(http, server, page)
            assert upstream.status_code == 303
            back = http.get(upstream.headers["location"])
            done = http.get(back.headers["location"])
            params = parse_qs(urlsplit(done.headers["location"]).query)
            assert params["state"] == [state] and params["code"]


def test_clients_the_operator_configured_skip_the_question_but_not_the_browser_binding(
        make_proxy, auth_server):  # noqa: F811
    server = make_proxy(clients=[{"client_id": "desk", "name": "Desk", "redirect_uris": [CLIENT_REDIRECT]}])
    with httpx2.Client(timeout=10, follow_redirects=False) as http:
        assert auth_server.login(http, "alice").status_code in (302, 303)
        straight = start_login(http, server, {"client_id": "desk"})
        assert straight.status_code == 302 and straight.headers["location"].startswith(auth_server.authorize_url)
        back = http.get(straight.headers["location"])
        with httpx2.Client(timeout=10, follow_redirects=False) as other:
            assert other.get(back.headers["location"]).status_code == 400  # another browser
        done = http.get(back.headers["location"])
        assert done.status_code == 302 and "code=" in done.headers["location"]


def test_upstream_failure_is_server_error(make_proxy, auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="mxcp.auth.proxy")
    server = make_proxy(upstream_secret="wrong-secret")
    client = public_client(server)
    auth = authorize(server, auth_server, client["client_id"])
    assert auth.params["error"] == "server_error" and auth.params["state"] == "client-state"
    assert any("token endpoint answered HTTP 401" in r.getMessage() for r in caplog.records)


def test_id_token_profile_without_userinfo(make_proxy, auth_server):  # noqa: F811
    discovery = auth_server.discovery()
    endpoints = SimpleNamespace(issuer=discovery["issuer"], authorization_endpoint=discovery["authorization_endpoint"],
                                token_endpoint=discovery["token_endpoint"], userinfo_endpoint=None)
    server = make_proxy(upstream_endpoints=endpoints)
    client = public_client(server)
    access = server.verify(sign_in(server, auth_server, client)["access_token"])
    assert access is not None and access.subject == "user-alice"
    assert access.claims["iss"] == server.url and "exp" not in access.claims and "aud" not in access.claims


# ------------------------------------------------------------------------------------------- persistence
def test_restart_keeps_tokens_and_clients(make_proxy, auth_server, tmp_path):  # noqa: F811
    db = tmp_path / "persist.db"
    server = make_proxy(db)
    public = public_client(server)
    confidential = register(server, auth_method="client_secret_post").json()
    assert confidential["client_secret"]
    tokens = sign_in(server, auth_server, public)
    conf_tokens = sign_in(server, auth_server, confidential)

    server.stop()  # the process ends; a new one starts on the same URL over the same file
    again = make_proxy(db, port=server.port)
    access = again.verify(tokens["access_token"])
    assert access is not None and access.claims["preferred_username"] == "alice"
    assert auth_server.userinfo(access.claims["mxcp:upstream_token"]).status_code == 200
    assert refresh(again, public, tokens["refresh_token"]).status_code == 200
    assert refresh(again, confidential, conf_tokens["refresh_token"]).status_code == 200
    assert refresh(again, {**confidential, "client_secret": "nope"}, "x").status_code == 401
    assert sign_in(again, auth_server, confidential)["access_token"]


def test_tokens_are_not_stored_in_clear(make_proxy, auth_server, tmp_path):  # noqa: F811
    db = tmp_path / "clear.db"
    server = make_proxy(db)
    confidential = register(server, auth_method="client_secret_post").json()
    tokens = sign_in(server, auth_server, confidential)
    rotated = refresh(server, confidential, tokens["refresh_token"]).json()
    upstream = server.verify(rotated["access_token"]).claims["mxcp:upstream_token"]
    secrets_ = [tokens["access_token"], tokens["refresh_token"], tokens["code"], rotated["access_token"],
                rotated["refresh_token"], upstream, confidential["client_secret"]]
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert raw  # the database (and its WAL) exists
    for value in secrets_:
        assert value.encode() not in raw
    assert hashlib.sha256(tokens["access_token"].encode()).hexdigest().encode() in raw
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_no_log_record_holds_a_token(make_proxy, auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    server = make_proxy()
    confidential = register(server, auth_method="client_secret_post").json()
    tokens = sign_in(server, auth_server, confidential)
    rotated = refresh(server, confidential, tokens["refresh_token"]).json()
    upstream = server.verify(rotated["access_token"]).claims["mxcp:upstream_token"]
    exchange(server, confidential, Authorization(httpx2.Response(302), "v", CLIENT_REDIRECT + "?code=" + tokens["code"]))
    httpx2.post(server.url + "/revoke", data={"token": rotated["access_token"], **confidential})
    values = [tokens["access_token"], tokens["refresh_token"], tokens["code"], rotated["access_token"],
              rotated["refresh_token"], upstream, confidential["client_secret"], "mxcp-server-secret"]
    # The test's own HTTP client logs its request URLs (with codes): only the server threads and our loggers count.
    records = [r for r in caplog.records if r.threadName != "MainThread" or r.name.startswith("mxcp")]
    assert any(r.name == "mxcp.auth.proxy" for r in records)
    for record in records:
        text = record.getMessage() + repr(record.__dict__.get("args"))
        for value in values:
            assert value not in text, record.name


# ------------------------------------------------------------------------------------------- client metadata documents
def self_signed_cert(directory: Path) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(pem)
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile, pem


@pytest.fixture(scope="module")
def metadata_host(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """An HTTPS server on 127.0.0.1 serving client metadata documents from `docs` (path -> JSON)."""
    certfile, keyfile, pem = self_signed_cert(tmp_path_factory.mktemp("tls"))
    docs: dict[str, Any] = {}
    fetches: list[str] = []

    async def document(request: Request) -> Response:
        fetches.append(request.url.path)
        doc = docs.get(request.url.path)
        if doc is None:
            return Response(status_code=404)
        if isinstance(doc, Response):
            return doc
        return JSONResponse(doc, headers={"Cache-Control": "max-age=60"})

    with serve(lambda port: Starlette(routes=[Route("/{path:path}", document)]),
               certfile=str(certfile), keyfile=str(keyfile)) as port:
        yield SimpleNamespace(url=f"https://127.0.0.1:{port}", docs=docs, fetches=fetches, certfile=certfile,
                              ssl=ssl.create_default_context(cadata=pem.decode()))


def test_client_metadata_document_flow(make_proxy, auth_server, metadata_host):  # noqa: F811
    client_id = metadata_host.url + "/clients/good.json"
    metadata_host.docs["/clients/good.json"] = {
        "client_id": client_id, "client_name": "Doc client", "redirect_uris": [CLIENT_REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    server = make_proxy(verify=metadata_host.ssl, allow_private_metadata_hosts=True)
    before = len(metadata_host.fetches)
    tokens = sign_in(server, auth_server, {"client_id": client_id})
    access = server.verify(tokens["access_token"])
    assert access is not None and access.client_id == client_id
    assert access.claims["preferred_username"] == "alice"
    assert refresh(server, {"client_id": client_id}, tokens["refresh_token"]).status_code == 200
    # Fetched once: the document is cached (max-age=60) across /authorize, /token and refresh.
    assert metadata_host.fetches[before:] == ["/clients/good.json"]


@pytest.mark.parametrize("name, doc", [
    ("mismatch", lambda url: {"client_id": url + "-other", "redirect_uris": [CLIENT_REDIRECT]}),
    ("noredirects", lambda url: {"client_id": url}),
    ("jwt", lambda url: {"client_id": url, "redirect_uris": [CLIENT_REDIRECT],
                         "token_endpoint_auth_method": "private_key_jwt"}),
    ("big", lambda url: {"client_id": url, "redirect_uris": [CLIENT_REDIRECT], "pad": "x" * 70000}),
    ("redirect", lambda url: Response(status_code=302, headers={"Location": url.rsplit("/", 1)[0] + "/ok"})),
    # Redirect URIs a registration would refuse: a code in cleartext to another host, a script.
    ("cleartext", lambda url: {"client_id": url, "redirect_uris": [CLIENT_REDIRECT, "http://evil.example/cb"]}),
    ("script", lambda url: {"client_id": url, "redirect_uris": [CLIENT_REDIRECT, "javascript:alert(1)"]}),
    ("userinfo", lambda url: {"client_id": url, "redirect_uris": ["https://claude.ai@evil.example/cb"]}),
])
def test_bad_client_metadata_documents_are_unknown_clients(make_proxy, auth_server, metadata_host, name, doc):  # noqa: F811
    client_id = f"{metadata_host.url}/clients/{name}"
    metadata_host.docs[f"/clients/{name}"] = doc(client_id)
    metadata_host.docs["/clients/ok"] = {"client_id": metadata_host.url + "/clients/ok",
                                         "redirect_uris": [CLIENT_REDIRECT]}
    server = make_proxy(verify=metadata_host.ssl, allow_private_metadata_hosts=True)
    auth = authorize(server, auth_server, client_id)
    assert auth.response.status_code == 400 and "location" not in auth.response.headers
    assert "not found" in auth.response.json()["error_description"]


def test_private_metadata_hosts_are_refused_by_default(make_proxy, auth_server, metadata_host, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="mxcp.auth.proxy")
    client_id = metadata_host.url + "/clients/private"
    metadata_host.docs["/clients/private"] = {"client_id": client_id, "redirect_uris": [CLIENT_REDIRECT]}
    server = make_proxy(verify=metadata_host.ssl)
    before = len(metadata_host.fetches)
    auth = authorize(server, auth_server, client_id)
    assert auth.response.status_code == 400
    assert metadata_host.fetches[before:] == []  # never even asked
    assert any("non-public address" in r.getMessage() for r in caplog.records)


def test_metadata_documents_can_be_switched_off(make_proxy, auth_server, metadata_host):  # noqa: F811
    client_id = metadata_host.url + "/clients/off"
    metadata_host.docs["/clients/off"] = {"client_id": client_id, "redirect_uris": [CLIENT_REDIRECT]}
    server = make_proxy(verify=metadata_host.ssl, allow_private_metadata_hosts=True, client_metadata_documents=False)
    assert authorize(server, auth_server, client_id).response.status_code == 400
    metadata = httpx2.get(server.url + "/.well-known/oauth-authorization-server").json()
    assert "client_id_metadata_document_supported" not in metadata


# ------------------------------------------------------------------------------------------- the SQLite store
def test_store_take_is_single_use_under_racing_threads(tmp_path):
    store = SqliteSignInStore(tmp_path / "race.db")
    other = SqliteSignInStore(tmp_path / "race.db")  # a second connection, as a second replica would have
    try:
        for round_ in range(30):
            store.put("code", f"k{round_}", {"n": round_})
            barrier = threading.Barrier(2)
            results: list[Any] = []

            def racer(s: SqliteSignInStore, key: str = f"k{round_}", barrier: threading.Barrier = barrier,
                      results: list[Any] = results) -> None:
                barrier.wait()
                results.append(s.take("code", key))

            threads = [threading.Thread(target=racer, args=(s,)) for s in (store, other)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(results, key=lambda r: r is None) == [{"n": round_}, None]
    finally:
        store.close()
        other.close()


def test_store_expiry_grants_and_purge(tmp_path):
    store = SqliteSignInStore(tmp_path / "sub" / "s.db")
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "sub").st_mode) == 0o700
        assert stat.S_IMODE(os.stat(tmp_path / "sub" / "s.db").st_mode) == 0o600
        now = time.time()
        store.put("access", "old", {"a": 1}, expires_at=now - 1, grant="g1")
        store.put("access", "new", {"a": 2}, expires_at=now + 60, grant="g1")
        store.put("refresh", "r", {"a": 3}, grant="g1")
        store.put("refresh", "other", {"a": 4}, grant="g2")
        store.put("key", "k", {"a": 5})
        assert store.get("access", "old") is None and store.take("access", "old") is None
        assert store.get("access", "new") == {"a": 2}
        store.put("access", "old2", {"a": 1}, expires_at=now - 1)
        assert store.purge() == 1
        assert store.delete_grant("g1") == 2
        assert store.get("access", "new") is None and store.get("refresh", "r") is None
        assert store.get("refresh", "other") == {"a": 4}
        store.delete("refresh", "other")
        assert store.get("refresh", "other") is None
        store.put("key", "k", {"a": 6})  # put replaces
        assert store.get("key", "k") == {"a": 6}
    finally:
        store.close()
    with pytest.raises(RuntimeError):
        store.get("key", "k")


def test_open_sign_in_store_hook(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    project = SimpleNamespace(root=tmp_path / "proj", site=SimpleNamespace(project="demo"), profile="dev")
    assert open_sign_in_store({"type": "redis"}, project) is None
    default = open_sign_in_store({}, project)
    try:
        assert default.path == tmp_path / "home" / ".mxcp" / "oauth" / "demo-dev.db"
        assert default.path.exists()
    finally:
        default.close()
    (tmp_path / "proj").mkdir()
    relative = open_sign_in_store({"type": "sqlite", "path": "state/signin.db"}, project)
    try:
        assert relative.path == tmp_path / "proj" / "state" / "signin.db"
    finally:
        relative.close()
    home = open_sign_in_store({"path": "~/x.db"}, project)
    try:
        assert home.path == tmp_path / "home" / "x.db"
    finally:
        home.close()


def test_without_configured_scopes_no_scope_is_granted(make_proxy, auth_server):  # noqa: F811
    """A client asking for `admin` on a server that configures no scopes gets a token without it."""
    server = make_proxy()
    client = register(server, scope="admin mcp:write").json()  # registration takes any scope here
    assert client["scope"] == "admin mcp:write"
    tokens = sign_in(server, auth_server, client, extra={"scope": "admin mcp:write"})
    access = server.verify(tokens["access_token"])
    assert access is not None and access.scopes == []


def test_a_providers_extra_authorization_parameters_reach_its_login(make_proxy, auth_server):  # noqa: F811
    """Atlassian needs `audience` and `prompt` on its authorization URL; they never replace the protocol's own."""
    server = make_proxy(authorize_params={"audience": "api.example.com", "prompt": "consent", "state": "forged"})
    hops: list[str] = []
    auth = authorize(server, auth_server, public_client(server)["client_id"], hops=hops)
    upstream = {k: v[0] for k, v in parse_qs(urlsplit(hops[1]).query).items()}
    assert upstream["audience"] == "api.example.com" and upstream["prompt"] == "consent"
    assert upstream["state"] != "forged" and auth.code  # the proxy's own state wins, and the login completes


def test_sqlite_put_if_absent_keeps_the_first_writers_record_across_stores_on_one_file(tmp_path):
    """Two processes' stores on one file racing to create the encryption key all end with the same one."""
    import threading

    path = tmp_path / "shared.db"
    stores = [SqliteSignInStore(path), SqliteSignInStore(path)]
    answers: list[dict] = []
    start = threading.Barrier(8)

    def race(index: int) -> None:
        start.wait()
        answers.append(stores[index % 2].put_if_absent("key", "fernet", {"key": f"writer-{index}"}))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(answers) == 8 and len({a["key"] for a in answers}) == 1
        assert stores[0].get("key", "fernet") == answers[0] == stores[1].get("key", "fernet")
        # An expired record counts as absent.
        stores[0].put("login", "x", {"v": 1}, expires_at=1.0)
        assert stores[1].put_if_absent("login", "x", {"v": 2}) == {"v": 2}
    finally:
        for store in stores:
            store.close()


def test_a_store_waiting_on_its_database_does_not_stop_the_event_loop(tmp_path):
    """Store calls run in a worker thread: a store stuck behind a lock (or a PostgreSQL server gone away) would
    otherwise stop every other request of the replica, /health included, for as long as it waits."""
    import anyio

    class SlowStore(SqliteSignInStore):
        def get(self, kind, key):
            time.sleep(0.5)  # a row lock held elsewhere
            return super().get(kind, key)

    store = SlowStore(tmp_path / "slow.db")
    upstream = ProviderConnection(client_id="c", client_secret="s", config_url="http://127.0.0.1:9/unused")
    endpoints = SimpleNamespace(issuer="http://127.0.0.1:9", authorization_endpoint="http://127.0.0.1:9/a",
                                token_endpoint="http://127.0.0.1:9/t", userinfo_endpoint=None)
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        proxy = SignInProxy(store=store, upstream=upstream, endpoints=endpoints, provider_name="idp",
                            base_url="http://127.0.0.1:1", resource_url="http://127.0.0.1:1/mcp",
                            http=httpx2.AsyncClient())

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as group:
            group.start_soon(heartbeat)
            assert await proxy.load_access_token("no-such-token") is None
            group.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        store.close()
    assert ticks >= 15, f"the event loop ran {ticks} times in 0.5 s: the store call blocked it"
