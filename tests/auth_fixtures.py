"""A real OAuth 2.1 / OpenID Connect authorization server (tests/authserver, Authlib on Flask) for tests.

Use it with ``from auth_fixtures import auth_server`` (tests/ is on sys.path like server_helpers); to keep
ruff quiet about the imported fixture (F401/F811), list it in the module's ``__all__``, as
tests/test_authserver.py does. The AS runs
as a subprocess (``python -m tests.authserver``) on 127.0.0.1, so it is independent of the test's event loop
and can be reached by an MXCP server running in another subprocess.

Fixtures
    ``auth_server``        session-scoped, shared (one instance however many modules import it). Tests use
                           their own tokens, so revocations do not leak between tests. Do not ``rotate()``,
                           ``stop()`` or ``restart()`` it: that changes it for every later test.
    ``fresh_auth_server``  function-scoped private instance (about a second to start) for tests that rotate
                           keys, restart or stop the server.

Issuer ``http://127.0.0.1:<port>`` (no trailing slash); discovery at ``/.well-known/openid-configuration``
and ``/.well-known/oauth-authorization-server``; endpoints ``/authorize /token /jwks /userinfo /introspect
/revoke``, cookie login at ``/login``, test-only ``POST /_test/rotate``.

Users (subject = ``user-<name>``)
    alice / alice-pw   alice@example.com  "Alice Example"  realm_access.roles [admin, analyst]  groups [eng]
    bob   / bob-pw     bob@example.com    "Bob Example"    realm_access.roles [analyst]         groups [sales]

Clients (redirect URIs: any ``http://127.0.0.1:<port>/...``, ``http://localhost:<port>/...`` or
``http://[::1]:<port>/...``; PKCE S256 required for every client; scopes
``openid profile email offline_access mcp:read mcp:write``; default audience ``mxcp-server``)
    mxcp-server / mxcp-server-secret   confidential (client_secret_basic or _post): authorization_code,
                                       refresh_token, client_credentials; RS256 JWT access tokens (kid rsa-1)
    mxcp-opaque / mxcp-opaque-secret   same, but random opaque access tokens (use /introspect)
    mxcp-es256  / mxcp-es256-secret    same as mxcp-server, access tokens signed ES256 (kid ec-1)
    mxcp-eddsa  / mxcp-eddsa-secret    same as mxcp-server, access tokens signed EdDSA / Ed25519 (kid ed-1)
    mxcp-short  / mxcp-short-secret    same as mxcp-server, access tokens live 5 seconds
    test-public (no secret)            public client (auth method none): authorization_code, refresh_token

Tokens
    Access tokens are RFC 9068 JWTs (header ``typ: at+jwt``, ``kid``) with iss, sub, aud, exp, iat, nbf, jti,
    client_id, scope and, for users, preferred_username, email, name, realm_access.roles, groups; they live
    300 s. ``aud`` is the RFC 8707 ``resource`` of the token request if given, else the one of the
    authorization request (remembered with the code), else the client's default audience ``mxcp-server``
    (several ``resource`` values give a list). A refresh keeps the audience unless it names a ``resource``.
    client_credentials tokens have ``sub`` = the client id and no user claims.
    Refresh tokens: ALWAYS issued by the authorization_code grant (to clients allowed the refresh_token grant,
    i.e. all but none here), whatever the scope; never by client_credentials. Refreshing rotates: the response
    has a new refresh token and the old one is refused (invalid_grant); the old access token stays valid.
    ID tokens (scope ``openid``) are RS256 with aud = client id and the nonce if one was sent.
    Authorization codes are single use (a replay is refused with invalid_grant and revokes the tokens issued
    with that code), live 60 s and are bound to the client, the redirect_uri and the code_challenge.
    ``/introspect`` (client_secret_basic or _post) knows JWT and opaque access tokens and refresh tokens
    issued by this server; minted tokens (``mint``) are unknown to it, hence inactive. ``/revoke`` revokes
    either kind (revoking a refresh token revokes its access token too). ``/userinfo`` needs a bearer token
    with scope openid; it returns sub, the profile/email claims the scope allows, realm_access and groups.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2
import pytest
from server_helpers import stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
SUBJECTS = {"alice": "user-alice", "bob": "user-bob"}
CLIENT_SECRETS: dict[str, str | None] = {
    "mxcp-server": "mxcp-server-secret",
    "mxcp-opaque": "mxcp-opaque-secret",
    "mxcp-es256": "mxcp-es256-secret",
    "mxcp-eddsa": "mxcp-eddsa-secret",
    "mxcp-short": "mxcp-short-secret",
    "test-public": None,
}
DEFAULT_SCOPE = "openid profile email mcp:read"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8976/oauth/callback"  # nothing listens: the Location is captured

_DEFAULT: Any = object()  # "look the secret up in CLIENT_SECRETS"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class AuthFlowError(AssertionError):
    """The authorization / token flow did not end the way the helper expected."""


@dataclass
class AuthorizationResult:
    """Where the authorization request ended: the final redirect to the client (or an error response)."""

    response: httpx2.Response  # the last response of the AS
    redirect_uri: str
    code_verifier: str
    location: str | None = None  # the redirect to the client, if it came to that
    params: dict[str, str] = field(default_factory=dict)  # query of that redirect: code & state, or error

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def error(self) -> str | None:
        if self.location is None:
            try:
                return self.response.json().get("error")
            except ValueError:
                return None
        return self.params.get("error")


class AuthServer:
    """Controls one authorization server subprocess and runs client-side flows against it."""

    def __init__(self, state_dir: Path, port: int = 0):
        self.state_dir = Path(state_dir)
        self.port = port  # 0 until the first start; a restart keeps the port (and so the issuer)
        self.proc: subprocess.Popen[str] | None = None
        self._stderr_path = self.state_dir / "authserver.stderr.log"

    # ------------------------------------------------------------------ process

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def metadata_url(self) -> str:
        return f"{self.issuer}/.well-known/oauth-authorization-server"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.issuer}/authorize"

    @property
    def keys_path(self) -> Path:
        return self.state_dir / "keys.json"

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("authorization server already running")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.authserver", "--port", str(self.port), "--state-dir", str(self.state_dir)]
        with open(self._stderr_path, "ab") as stderr:  # a file, not a pipe: the server logs every request
            proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            line = ""
        if not line.startswith("READY "):
            stop_process(proc)
            raise RuntimeError(
                f"authorization server did not become ready within {READY_TIMEOUT:.0f}s "
                f"(exit code {proc.returncode}, stdout {line!r}); stderr:\n{self.stderr()}"
            )
        url = line.split()[1]
        self.port = int(url.rsplit(":", 1)[1])
        self.proc = proc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def restart(self) -> None:
        """Stop and start on the same port and state dir: the keys survive, tokens, codes and sessions do not."""
        self.stop()
        self.start()

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ keys and documents

    @property
    def keys(self) -> dict[str, Any]:
        """The PRIVATE JWK set from keys.json, read afresh on every access (it changes on rotate())."""
        return json.loads(self.keys_path.read_text())

    def key(self, kid: str) -> dict[str, Any]:
        for jwk in self.keys["keys"]:
            if jwk.get("kid") == kid:
                return jwk
        raise KeyError(f"no key {kid!r} in {self.keys_path}")

    def discovery(self) -> dict[str, Any]:
        return self._get_json(self.config_url)

    def jwks(self) -> dict[str, Any]:
        return self._get_json(self.jwks_url)

    def rotate(self) -> str:
        """Add a new RSA key (kid rsa-2, rsa-3, ...) that signs new access tokens from now on; returns its kid."""
        with httpx2.Client(timeout=10) as http:
            response = http.post(f"{self.issuer}/_test/rotate")
        response.raise_for_status()
        return response.json()["kid"]

    def _get_json(self, url: str) -> dict[str, Any]:
        with httpx2.Client(timeout=10) as http:
            response = http.get(url)
        response.raise_for_status()
        return response.json()

    # ------------------------------------------------------------------ flows

    def http(self) -> httpx2.Client:
        """A new client with its own cookie jar (a browser without a session)."""
        return httpx2.Client(timeout=10, follow_redirects=False)

    def login(self, http: httpx2.Client, username: str = "alice", password: str | None = None) -> httpx2.Response:
        """POST the login form; on success the session cookie is in ``http``'s jar."""
        return http.post(
            f"{self.issuer}/login",
            data={"username": username, "password": USERS.get(username, "") if password is None else password},
        )

    def authorize(
        self,
        username: str = "alice",
        *,
        client_id: str = "mxcp-server",
        scope: str = DEFAULT_SCOPE,
        resource: str | list[str] | None = None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        state: str | None = None,
        nonce: str | None = None,
        code_challenge_method: str | None = "S256",
        code_verifier: str | None = None,
        extra: dict[str, str] | None = None,
        http: httpx2.Client | None = None,
    ) -> AuthorizationResult:
        """Run the browser part of the authorization-code flow headlessly, as a user agent would.

        GET /authorize, get sent to /login, POST the login form, get sent back to /authorize, then stop at the
        redirect to ``redirect_uri`` (not followed). With ``code_challenge_method="plain"`` the challenge is the
        verifier itself; ``None`` sends no PKCE parameters at all.
        """
        verifier = code_verifier or pkce_pair()[0]
        params: list[tuple[str, str]] = [
            ("response_type", "code"), ("client_id", client_id), ("redirect_uri", redirect_uri), ("scope", scope),
            ("state", state or secrets.token_urlsafe(8)),
        ]
        if code_challenge_method == "S256":
            params += [("code_challenge", b64url(hashlib.sha256(verifier.encode()).digest())),
                       ("code_challenge_method", "S256")]
        elif code_challenge_method is not None:
            params += [("code_challenge", verifier), ("code_challenge_method", code_challenge_method)]
        if nonce:
            params.append(("nonce", nonce))
        for value in [resource] if isinstance(resource, str) else (resource or []):
            params.append(("resource", value))
        params += list((extra or {}).items())

        own = http is None
        http = http or self.http()
        try:
            url = f"{self.authorize_url}?{urlencode(params)}"
            response = http.get(url)
            for _ in range(10):
                location = response.headers.get("location")
                if response.status_code not in (301, 302, 303, 307) or not location:
                    return AuthorizationResult(response, redirect_uri, verifier)
                target = urljoin(str(response.url), location)
                if target.startswith(self.issuer + "/login"):
                    next_url = parse_qs(urlsplit(target).query).get("next", ["/"])[0]
                    response = http.post(
                        f"{self.issuer}/login",
                        data={"username": username, "password": USERS.get(username, ""), "next": next_url},
                    )
                elif target.startswith(self.issuer + "/"):
                    response = http.get(target)
                else:  # the redirect back to the client: capture it
                    query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                    return AuthorizationResult(response, redirect_uri, verifier, target, query)
            raise AuthFlowError(f"too many redirects in the authorization flow (last: {response.headers})")
        finally:
            if own:
                http.close()

    def _client_auth(
        self, client_id: str, client_secret: Any, auth_method: str, data: dict[str, Any]
    ) -> httpx2.BasicAuth | None:
        secret = CLIENT_SECRETS.get(client_id) if client_secret is _DEFAULT else client_secret
        if secret is None:
            data["client_id"] = client_id
            return None
        if auth_method == "client_secret_post":
            data.update(client_id=client_id, client_secret=secret)
            return None
        return httpx2.BasicAuth(client_id, secret)

    def _post(self, path: str, data: dict[str, Any], auth: httpx2.BasicAuth | None) -> httpx2.Response:
        with httpx2.Client(timeout=10) as http:
            return http.post(f"{self.issuer}{path}", data=data, auth=auth)

    def exchange(
        self,
        code: str,
        *,
        code_verifier: str | None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        resource: str | list[str] | None = None,
        auth_method: str = "client_secret_basic",
    ) -> httpx2.Response:
        """POST /token grant_type=authorization_code; returns the raw response (errors included)."""
        data: dict[str, Any] = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if code_verifier is not None:
            data["code_verifier"] = code_verifier
        if resource is not None:
            data["resource"] = resource
        auth = self._client_auth(client_id, client_secret, auth_method, data)
        return self._post("/token", data, auth)

    def user_token(
        self,
        username: str = "alice",
        *,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        scope: str = DEFAULT_SCOPE,
        resource: str | list[str] | None = None,
        token_resource: str | list[str] | None = None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """The real authorization-code + PKCE S256 flow for ``username``; returns the token response JSON.

        ``resource`` goes on the authorization request (and so into the code), ``token_resource`` on the token
        request (it wins).
        """
        result = self.authorize(
            username, client_id=client_id, scope=scope, resource=resource, redirect_uri=redirect_uri, nonce=nonce
        )
        if not result.code:
            raise AuthFlowError(
                f"no authorization code: {result.location or result.response.status_code} {result.response.text}"
            )
        response = self.exchange(
            result.code, code_verifier=result.code_verifier, redirect_uri=redirect_uri, client_id=client_id,
            client_secret=client_secret, resource=token_resource,
        )
        if response.status_code != 200:
            raise AuthFlowError(f"token request failed: {response.status_code} {response.text}")
        return response.json()

    def refresh(
        self,
        refresh_token: str,
        *,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        scope: str | None = None,
        resource: str | list[str] | None = None,
    ) -> httpx2.Response:
        """POST /token grant_type=refresh_token; returns the raw response."""
        data: dict[str, Any] = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope is not None:
            data["scope"] = scope
        if resource is not None:
            data["resource"] = resource
        return self._post("/token", data, self._client_auth(client_id, client_secret, "client_secret_basic", data))

    def client_credentials(
        self,
        *,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        scope: str = "mcp:read",
        resource: str | list[str] | None = None,
    ) -> httpx2.Response:
        """POST /token grant_type=client_credentials; returns the raw response."""
        data: dict[str, Any] = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            data["resource"] = resource
        return self._post("/token", data, self._client_auth(client_id, client_secret, "client_secret_basic", data))

    def introspect(
        self,
        token: str,
        *,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        hint: str | None = None,
    ) -> dict[str, Any]:
        """RFC 7662 answer for ``token`` (raises on an HTTP error, e.g. bad client credentials)."""
        data: dict[str, Any] = {"token": token}
        if hint:
            data["token_type_hint"] = hint
        response = self._post("/introspect", data, self._client_auth(client_id, client_secret, "", data))
        response.raise_for_status()
        return response.json()

    def revoke(
        self,
        token: str,
        *,
        client_id: str = "mxcp-server",
        client_secret: Any = _DEFAULT,
        hint: str | None = None,
    ) -> httpx2.Response:
        data: dict[str, Any] = {"token": token}
        if hint:
            data["token_type_hint"] = hint
        return self._post("/revoke", data, self._client_auth(client_id, client_secret, "", data))

    def userinfo(self, access_token: str) -> httpx2.Response:
        with httpx2.Client(timeout=10) as http:
            return http.get(f"{self.issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"})

    # ------------------------------------------------------------------ special tokens

    def claims(
        self,
        username: str | None = "alice",
        *,
        client_id: str = "mxcp-server",
        aud: str | list[str] | None = "mxcp-server",
        scope: str = "mcp:read",
        expires_in: int = 300,
        **extra: Any,
    ) -> dict[str, Any]:
        """Claims of a valid-looking access token of this AS, to modify and ``mint`` (e.g. ``expires_in=-60``)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": SUBJECTS.get(username, username) if username else client_id, "aud": aud,
            "iat": now, "nbf": now, "exp": now + expires_in, "jti": secrets.token_urlsafe(12),
            "client_id": client_id, "scope": scope,
        }
        if username in SUBJECTS:
            profile = {
                "alice": ("alice@example.com", "Alice Example", ["admin", "analyst"], ["eng"]),
                "bob": ("bob@example.com", "Bob Example", ["analyst"], ["sales"]),
            }[username]
            claims.update(
                preferred_username=username, email=profile[0], name=profile[1],
                realm_access={"roles": profile[2]}, groups=profile[3],
            )
        if aud is None:
            del claims["aud"]
        claims.update(extra)
        return claims

    def mint(
        self, claims: dict[str, Any], *, kid: str = "rsa-1", alg: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` with the AS's private key ``kid`` (alg defaults to the key's). Header defaults:
        ``{"alg", "kid", "typ": "at+jwt"}``; ``headers`` overrides, a None value removes a field."""
        from joserfc import jwt as jose_jwt
        from joserfc.jwk import import_key

        key = import_key(self.key(kid))
        alg = alg or key.alg
        header = _header({"alg": alg, "kid": kid, "typ": "at+jwt"}, headers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc warns that "EdDSA" is deprecated by RFC 9864 ("Ed25519")
            return jose_jwt.encode(header, claims, key, algorithms=[alg], default_type=None)

    def mint_with_foreign_key(self, claims: dict[str, Any], *, kid: str = "rsa-1") -> str:
        """RS256 with a fresh RSA key the AS does not publish, but the header names ``kid``: a bad signature."""
        from joserfc import jwt as jose_jwt
        from joserfc.jwk import RSAKey

        key = RSAKey.generate_key(2048, {"kid": kid, "alg": "RS256"}, private=True)
        return jose_jwt.encode({"alg": "RS256", "kid": kid, "typ": "at+jwt"}, claims, key, algorithms=["RS256"])

    @staticmethod
    def unsigned(claims: dict[str, Any], *, headers: dict[str, Any] | None = None) -> str:
        """An ``alg: none`` token (empty signature)."""
        header = _header({"alg": "none", "typ": "at+jwt"}, headers)
        return f"{_segment(header)}.{_segment(claims)}."

    def hs256_with_public_key(self, claims: dict[str, Any], *, kid: str = "rsa-1") -> str:
        """HS256 keyed with the PEM of RSA key ``kid``'s PUBLIC key: the classic algorithm-confusion attack."""
        from joserfc.jwk import import_key

        pem = import_key(self.key(kid)).as_pem(private=False)
        signing_input = f"{_segment({'alg': 'HS256', 'kid': kid, 'typ': 'at+jwt'})}.{_segment(claims)}"
        signature = hmac.new(pem, signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"


def _header(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    merged = {**base, **(overrides or {})}
    return {k: v for k, v in merged.items() if v is not None}


def _segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


# ---------------------------------------------------------------------------------------------- fixtures

# One shared server however many test modules import the session fixture (each import is its own
# FixtureDef); the last teardown stops it.
_shared: dict[str, Any] = {"server": None, "users": 0}
_shared_lock = threading.Lock()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with _shared_lock:
        if _shared["server"] is None:
            server = AuthServer(tmp_path_factory.mktemp("authserver"))
            server.start()
            _shared["server"] = server
        _shared["users"] += 1
        server = _shared["server"]
    try:
        yield server
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                _shared["server"] = None
                server.stop()


@pytest.fixture
def fresh_auth_server(tmp_path: Path) -> Iterator[AuthServer]:
    """A private authorization server for tests that rotate keys, restart or stop it."""
    server = AuthServer(tmp_path / "authserver")
    server.start()
    try:
        yield server
    finally:
        server.stop()
