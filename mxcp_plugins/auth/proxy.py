"""The authorization-server proxy ("issuer" mode): this server is the OAuth authorization server its MCP clients see,
and delegates the user's login to an upstream provider (GitHub, Google, any OAuth 2 / OpenID Connect provider).

Built on the mcp SDK's authorization-server pieces: `create_auth_routes` serves /authorize, /token, /register,
/revoke and the RFC 8414 metadata, and validates what it can (PKCE S256, redirect_uri match, code expiry, client
authentication, scope subsets). `SignInProxy` is the `OAuthAuthorizationServerProvider` behind them:

    client --/authorize--> proxy --302--> consent page --approve--> upstream login --302--> proxy callback
        --302--> client redirect_uri?code
    client --/token (code + PKCE verifier)--> proxy: opaque access + refresh token

The consent page asks the user about clients that registered themselves (operator-configured ones go straight
on) and binds the login to the browser that opened it: the callback only completes in that browser.

State lives in a `SignInStore` (see mxcp_core.sign_in): pending logins, our authorization codes, access and
refresh tokens, registered clients. Codes and tokens are stored under the sha256 of their value only; the
upstream access token (and registered clients' secrets) are Fernet-encrypted with a key kept in the store.

Nothing here logs a token, code, secret or upstream token: client ids, grant ids and reasons only.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import html
import ipaddress
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import httpx2
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import build_metadata, cors_middleware, create_auth_routes
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyHttpUrl, BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mxcp_core import ProviderConnection, SignInStore

logger = logging.getLogger("mxcp.auth.proxy")

LOGIN_TTL = 600  # seconds a user has to finish the upstream login
CONSENT_PATH = "/oauth/consent"
METADATA_PATH = "/.well-known/oauth-authorization-server"

# Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document)
CIMD_TIMEOUT = 5.0
CIMD_MAX_BYTES = 64 * 1024
CIMD_DEFAULT_TTL = 300
CIMD_MAX_TTL = 3600

# Claims of an ID token that describe the token, not the user: not carried into our identity claims.
TOKEN_CLAIMS = frozenset({"iss", "aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "jti", "azp", "sid"})

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")

# Record kinds in the store.
KEY, CLIENT, LOGIN, CODE, USED_CODE, ACCESS, REFRESH, ROTATED = (
    "key", "client", "login", "code", "used_code", "access", "refresh", "rotated",
)


class _Url(BaseModel):
    # Keeps "http://host:port" without a trailing slash, as the SDK's AuthSettings does (issuers compare as strings).
    model_config = ConfigDict(url_preserve_empty_path=True)
    url: AnyHttpUrl


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def _page(title: str, body: str, *, status: int, raw: bool = False) -> Response:
    text = body if raw else f"<p>{html.escape(body)}</p>"
    return HTMLResponse(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>{text}",
        status_code=status,
        # No framing (clickjacking the Approve button) and no caching of a page tied to one login.
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                 "Content-Security-Policy": "frame-ancestors 'none'"},
    )


UNSAFE_REDIRECT_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "filesystem"})


def _acceptable_redirect(uri: str) -> bool:
    """https; http on a loopback host; or a native app's private-use scheme (RFC 8252 §7.1: cursor://, vscode://),
    never one a browser would run or read locally."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme or scheme in UNSAFE_REDIRECT_SCHEMES or "@" in parts.netloc:
        return False  # userinfo would let a consent page read "https://trusted.example@evil.example"
    return scheme != "http" or _is_loopback_http(uri)


def _same_resource(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.rstrip("/") == b.rstrip("/")


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS


def _unverified_jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise TypeError("id_token payload is not a JSON object")
    return claims


class UpstreamError(Exception):
    """The upstream provider's token or profile step failed; the message never holds a token."""


class _Verifier:
    """Verifies the access tokens this proxy issues (for the MCP paths): refuses tokens for another resource."""

    def __init__(self, proxy: SignInProxy) -> None:
        self._proxy = proxy

    async def verify_token(self, token: str) -> AccessToken | None:
        access = await self._proxy.load_access_token(token)
        if access is None or not _same_resource(access.resource, self._proxy.resource_url):
            return None
        return access


class _OffTheLoop:
    """The store's methods as coroutines that run them in a worker thread. A store waits on its database (a lock
    held elsewhere, a PostgreSQL server gone away, SQLite's busy timeout): on the event loop, that wait would stop
    every other request of the replica, `/health` included."""

    def __init__(self, store: SignInStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))

        return call


class SignInProxy:
    """An `OAuthAuthorizationServerProvider` that signs users in through `upstream` and issues opaque tokens.

    `endpoints` is the upstream's resolved metadata (anything with `authorization_endpoint`, `token_endpoint`,
    `userinfo_endpoint` (may be None) and `issuer`). `clients` are static clients from the configuration
    (`client_id`, `name`, `client_secret` (absent: public client), `redirect_uris`, `grant_types`, `scopes`).
    `scopes` are the scopes this server grants (empty: none, whatever a client registered with).
    """

    def __init__(self, *, store: SignInStore, upstream: ProviderConnection, endpoints: Any, provider_name: str,
                 base_url: str, resource_url: str, http: httpx2.AsyncClient, clients: Sequence[Mapping[str, Any]] = (),
                 scopes: Sequence[str] = (), access_ttl: int = 3600, refresh_ttl: int = 30 * 86400,
                 code_ttl: int = 300, allow_registration: bool = True, client_metadata_documents: bool = True,
                 allow_private_metadata_hosts: bool = False) -> None:
        self.store = store
        self._db = _OffTheLoop(store)
        self.upstream = upstream
        self.endpoints = endpoints
        self.provider_name = provider_name
        self.base_url = base_url.rstrip("/")
        self.resource_url = resource_url
        self.http = http
        self.scopes = tuple(scopes)
        self.access_ttl = int(access_ttl)
        self.refresh_ttl = int(refresh_ttl)
        self.code_ttl = int(code_ttl)
        self.allow_registration = allow_registration
        self.client_metadata_documents = client_metadata_documents
        self.allow_private_metadata_hosts = allow_private_metadata_hosts
        self.callback_url = self.base_url + upstream.callback_path
        self.static_clients = {info.client_id: info for info in map(self._static_client, clients)}
        self.verifier = _Verifier(self)
        self._fernet: Any = None
        self._fernet_lock = threading.Lock()
        self._cimd_cache: dict[str, tuple[float, OAuthClientInformationFull]] = {}

    # -- routes ---------------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        issuer = _Url(url=self.base_url).url
        registration = ClientRegistrationOptions(
            enabled=self.allow_registration,
            valid_scopes=list(self.scopes) or None,
            default_scopes=list(self.scopes) or None,
        )
        revocation = RevocationOptions(enabled=True)
        routes = [
            route for route in create_auth_routes(self, issuer, None, registration, revocation)
            if route.path != METADATA_PATH
        ]
        metadata = build_metadata(issuer, None, registration, revocation)
        if self.scopes:
            metadata.scopes_supported = list(self.scopes)
        if self.client_metadata_documents:
            metadata.client_id_metadata_document_supported = True
        routes.insert(0, Route(
            METADATA_PATH,
            endpoint=cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
            methods=["GET", "OPTIONS"],
        ))
        routes.append(Route(CONSENT_PATH, endpoint=self._consent, methods=["GET", "POST"]))
        routes.append(Route(self.upstream.callback_path, endpoint=self._callback, methods=["GET"]))
        return routes

    # -- encryption -----------------------------------------------------------------------------------------
    def _cipher(self) -> Any:
        # The key lives in the store next to what it protects: this keeps upstream tokens and client secrets out
        # of plain sight (backups, a casual `sqlite3 .dump`), not away from someone who can read the whole store.
        # Replicas sharing a store must agree on it: a store offering `put_if_absent` (both builtin ones) keeps the
        # first writer's key when two create it at the same moment. With others the last writer's is stored, and a
        # replica that raced it would encrypt with a key no other replica reads.
        with self._fernet_lock:
            if self._fernet is None:
                from cryptography.fernet import Fernet

                record = self.store.get(KEY, "fernet")
                if record is None:
                    fresh = {"key": Fernet.generate_key().decode()}
                    put_if_absent = getattr(self.store, "put_if_absent", None)
                    if put_if_absent is not None:
                        record = put_if_absent(KEY, "fernet", fresh)
                    else:
                        self.store.put(KEY, "fernet", fresh)
                        record = self.store.get(KEY, "fernet")
                assert record is not None
                self._fernet = Fernet(record["key"].encode())
            return self._fernet

    async def _ready_cipher(self) -> Any:
        """The cipher, its key read (or created) off the event loop the first time, as every store call."""
        if self._fernet is None:
            return await anyio.to_thread.run_sync(self._cipher)
        return self._fernet

    async def _encrypt(self, value: str) -> str:
        return (await self._ready_cipher()).encrypt(value.encode()).decode()

    async def _decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        from cryptography.fernet import InvalidToken

        try:
            return (await self._ready_cipher()).decrypt(value.encode()).decode()
        except InvalidToken:
            logger.warning("sign-in: a stored secret could not be decrypted (the store's key changed?)")
            return None

    # -- clients --------------------------------------------------------------------------------------------
    def _static_client(self, config: Mapping[str, Any]) -> OAuthClientInformationFull:
        secret = config.get("client_secret")
        scopes = config.get("scopes")
        return OAuthClientInformationFull(
            client_id=str(config["client_id"]),
            client_name=config.get("name"),
            client_secret=secret,
            redirect_uris=list(config.get("redirect_uris") or []),
            grant_types=list(config.get("grant_types") or ["authorization_code", "refresh_token"]),
            response_types=["code"],
            scope=" ".join(scopes) if scopes else (" ".join(self.scopes) or None),
            token_endpoint_auth_method="client_secret_post" if secret else "none",
        )

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if client_id in self.static_clients:
            return self.static_clients[client_id]
        record = await self._db.get(CLIENT, client_id)
        if record is not None:
            data = dict(record)
            encrypted = data.pop("client_secret_enc", None)
            if encrypted is not None:
                data["client_secret"] = await self._decrypt(encrypted)
            return OAuthClientInformationFull.model_validate(data)
        if self.client_metadata_documents and client_id.startswith("https://"):
            return await self._metadata_document_client(client_id)
        return None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        for uri in client_info.redirect_uris or []:
            if not _acceptable_redirect(str(uri)):
                raise RegistrationError(
                    "invalid_redirect_uri",
                    "redirect URIs must use https, http on a loopback host, or an app's own scheme",
                )
        data = client_info.model_dump(mode="json", exclude_none=True)
        secret = data.pop("client_secret", None)
        if secret is not None:
            data["client_secret_enc"] = await self._encrypt(secret)
        await self._db.put(CLIENT, client_info.client_id, data)
        logger.info("sign-in: registered client %s (%s)", client_info.client_id, client_info.client_name or "unnamed")

    async def _metadata_document_client(self, url: str) -> OAuthClientInformationFull | None:
        cached = self._cimd_cache.get(url)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        self._cimd_cache.pop(url, None)
        try:
            info, ttl = await self._fetch_metadata_document(url)
        except Exception as exc:  # noqa: BLE001 - any failure means "unknown client"
            logger.warning("sign-in: client metadata document %s refused: %s", url, exc)
            return None
        if ttl > 0:
            if len(self._cimd_cache) > 1000:
                self._cimd_cache.clear()
            self._cimd_cache[url] = (time.monotonic() + ttl, info)
        return info

    async def _check_metadata_host(self, host: str, port: int) -> None:
        if self.allow_private_metadata_hosts:
            return
        # SSRF guard: the client_id comes from anyone on the internet. The address is checked here and resolved
        # again by the HTTP client; DNS rebinding between the two stays possible, but needs an attacker-run
        # DNS server answering differently within seconds, and the response is only read as a JSON document.
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            infos = await anyio.getaddrinfo(host, port, proto=6)
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise ValueError(f"host {host} does not resolve")
        for address in addresses:
            if (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
                    or address.is_multicast or address.is_unspecified
                    or (getattr(address, "ipv4_mapped", None) is not None and not address.ipv4_mapped.is_global)):
                raise ValueError(f"host {host} resolves to a non-public address")

    async def _fetch_metadata_document(self, url: str) -> tuple[OAuthClientInformationFull, float]:
        parts = urlsplit(url)
        if (parts.scheme != "https" or not parts.hostname or parts.path in ("", "/") or parts.fragment
                or parts.username is not None or parts.password is not None
                or any(seg in (".", "..") for seg in parts.path.split("/"))):
            raise ValueError("not a valid client metadata document URL")
        await self._check_metadata_host(parts.hostname, parts.port or 443)
        body = bytearray()
        async with self.http.stream("GET", url, headers={"Accept": "application/json"}, follow_redirects=False,
                                    timeout=CIMD_TIMEOUT) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > CIMD_MAX_BYTES:
                raise ValueError("document too large")
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > CIMD_MAX_BYTES:
                    raise ValueError("document too large")
            cache_control = response.headers.get("cache-control", "")
        doc = json.loads(bytes(body))
        if not isinstance(doc, dict):
            raise TypeError("document is not a JSON object")
        if doc.get("client_id") != url:
            raise ValueError("client_id in the document differs from its URL")
        redirect_uris = doc.get("redirect_uris")
        if not isinstance(redirect_uris, list) or not redirect_uris:
            raise ValueError("redirect_uris missing")
        if not all(isinstance(uri, str) and _acceptable_redirect(uri) for uri in redirect_uris):
            raise ValueError("a redirect URI is neither https, http on a loopback host, nor an app's own scheme")
        method = doc.get("token_endpoint_auth_method") or "none"
        if method == "private_key_jwt":
            raise ValueError("token_endpoint_auth_method private_key_jwt is not supported")
        if method != "none" or "client_secret" in doc:
            raise ValueError("a client metadata document cannot use a shared secret")
        fields = ("client_name", "client_uri", "logo_uri", "contacts", "tos_uri", "policy_uri", "software_id",
                  "software_version", "grant_types", "response_types", "scope")
        data = {k: doc[k] for k in fields if k in doc}
        if "scope" not in data and self.scopes:
            data["scope"] = " ".join(self.scopes)
        info = OAuthClientInformationFull.model_validate(
            {**data, "client_id": url, "redirect_uris": redirect_uris, "token_endpoint_auth_method": "none"}
        )
        return info, _cache_ttl(cache_control)

    # -- authorization ----------------------------------------------------------------------------------------
    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.resource is not None and not _same_resource(params.resource, self.resource_url):
            raise AuthorizeError("invalid_target", "this authorization server issues tokens for its own resource only")
        scopes = params.scopes
        if scopes is None:
            scopes = client.scope.split() if client.scope else list(self.scopes)
        unknown = [s for s in scopes if s not in self.scopes]
        if unknown and self.scopes:
            raise AuthorizeError("invalid_scope", f"unknown scope(s): {' '.join(unknown)}")
        # With no scopes configured this server grants none: a client cannot mint itself `admin`.
        scopes = [s for s in scopes if s in self.scopes]
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        await self._db.put(LOGIN, _hash(state), {
            "client_id": client.client_id,
            "redirect_uri": str(params.redirect_uri),
            "redirect_uri_provided_explicitly": params.redirect_uri_provided_explicitly,
            "code_challenge": params.code_challenge,
            "state": params.state,
            "scopes": list(scopes),
            "resource": params.resource,
            "verifier": verifier,
            "client_name": client.client_name,
            "expires_at": time.time() + LOGIN_TTL,  # fixed here: nothing later extends a pending login
        }, expires_at=time.time() + LOGIN_TTL)
        # Every login passes our consent step first: it binds the login to this browser (a cookie checked at the
        # callback) and, for clients that registered themselves, asks the user. Without it, a link crafted by
        # anyone who registered a client would hand them a code for a user already signed in upstream.
        return construct_redirect_uri(self.base_url + CONSENT_PATH, login=state)

    def _upstream_url(self, state: str, verifier: str) -> str:
        query = {
            "response_type": "code",
            "client_id": self.upstream.client_id,
            "redirect_uri": self.callback_url,
            "scope": self.upstream.scope or None,
            "state": state,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        }
        extra = {k: v for k, v in (self.upstream.authorize_params or {}).items() if k not in query}
        return construct_redirect_uri(str(self.endpoints.authorization_endpoint), **query, **extra)

    def _cookie_name(self, state: str) -> str:
        # One cookie per login, so two logins in one browser do not undo each other.
        name = f"mxcp_login_{_hash(state)[:16]}"
        return f"__Host-{name}" if self.base_url.startswith("https://") else name

    def _bound(self, response: Response, state: str, browser: str) -> Response:
        response.set_cookie(self._cookie_name(state), browser, max_age=LOGIN_TTL, path="/", httponly=True,
                            samesite="lax", secure=self.base_url.startswith("https://"))
        return response

    def _browser_of(self, request: Request, state: str, login: Mapping[str, Any]) -> str | None:
        """The login's cookie as this request carries it, when it is the one the login is bound to."""
        cookie = request.cookies.get(self._cookie_name(state), "")
        bound = login.get("browser") or ""
        return cookie if cookie and bound and secrets.compare_digest(_hash(cookie), bound) else None

    async def _save(self, key: str, login: Mapping[str, Any]) -> None:
        await self._db.put(LOGIN, key, login, expires_at=login["expires_at"])

    async def _consent(self, request: Request) -> Response:
        """GET: the consent page (or, for a client configured by the operator, straight on); POST: the answer.

        The first browser to open a login's page owns it (a cookie only it has; later visitors are refused), and
        only an approval posted from that browser, carrying the cookie's value in the form (a cross-site POST has
        no SameSite=Lax cookie), counts. The callback then requires the same cookie: a login approved in one
        browser cannot be finished in another, so no link sent to a user signed in upstream completes by itself.
        """
        if request.method == "POST":
            form = await request.form()
            state, token = str(form.get("login", "")), str(form.get("browser", ""))
        else:
            state, token = request.query_params.get("login", ""), ""
        key = _hash(state) if state else ""
        login = await self._db.get(LOGIN, key) if state else None
        if login is None or login["expires_at"] <= time.time():
            return _page("Sign-in failed", "This login expired or was already used. Start again from your "
                         "application.", status=400)
        browser = self._browser_of(request, state, login)
        if request.method == "GET":
            if login.get("browser") and browser is None:
                return _page("Sign-in refused", "This login was opened in another browser. Start again from your "
                             "application.", status=403)
            if browser is None:
                browser = secrets.token_urlsafe(32)
                login = {**login, "browser": _hash(browser)}
                await self._save(key, login)
            if login["client_id"] in self.static_clients:
                # A client the operator configured: no question to ask, but the login is still bound to this browser.
                login = {**login, "approved": login["browser"]}
                await self._save(key, login)
                return self._bound(RedirectResponse(self._upstream_url(state, login["verifier"]), status_code=302,
                                                    headers={"Cache-Control": "no-store"}), state, browser)
            return self._bound(self._consent_page(state, browser, login), state, browser)
        if browser is None or not token or not secrets.compare_digest(browser, token):
            return _page("Sign-in refused", "This approval did not come from the page this server showed. Start "
                         "again from your application.", status=403)
        if form.get("decision") != "approve":
            await self._db.delete(LOGIN, key)
            url = construct_redirect_uri(login["redirect_uri"], error="access_denied",
                                         error_description="the user declined", state=login.get("state"))
            return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
        await self._save(key, {**login, "approved": login["browser"]})  # approved by this browser, and only for it
        return RedirectResponse(self._upstream_url(state, login["verifier"]), status_code=303,
                                headers={"Cache-Control": "no-store"})

    def _consent_page(self, state: str, browser: str, login: Mapping[str, Any]) -> Response:
        esc = html.escape
        client = login.get("client_name") or "An application"
        target = urlsplit(login["redirect_uri"])
        # scheme://host[:port] only: userinfo (https://trusted.example@evil.example) is refused at registration, and
        # never shown.
        host = f"[{target.hostname}]" if target.hostname and ":" in target.hostname else target.hostname
        returns_to = f"{target.scheme}://{host}{f':{target.port}' if target.port else ''}" if host \
            else f"{target.scheme}:"
        scopes = " ".join(login.get("scopes") or []) or "(none)"
        body = (
            f"<p><strong>{esc(client)}</strong> (client id <code>{esc(login['client_id'])}</code>) asks to use "
            f"<strong>{esc(self.resource_url)}</strong> as you, with the scopes <code>{esc(scopes)}</code>.</p>"
            f"<p>After you sign in with {esc(self.provider_name)}, you will be sent to "
            f"<code>{esc(returns_to)}</code>. Approve only if you started this from that application.</p>"
            f'<form method="post" action="{CONSENT_PATH}">'
            f'<input type="hidden" name="login" value="{esc(state)}">'
            f'<input type="hidden" name="browser" value="{esc(browser)}">'
            '<button type="submit" name="decision" value="approve">Approve</button> '
            '<button type="submit" name="decision" value="deny">Deny</button></form>'
        )
        return _page("Allow access?", body, status=200, raw=True)

    async def _callback(self, request: Request) -> Response:
        query = request.query_params
        state = query.get("state")
        login = await self._db.get(LOGIN, _hash(state)) if state else None
        # Only the browser that was asked, and approved, may finish its login.
        if login is None or self._browser_of(request, state, login) is None \
                or login.get("approved") != login.get("browser"):
            return _page("Sign-in failed", "This login expired, was already used, or was started in another "
                         "browser. Start again from your application.", status=400)
        login = await self._db.take(LOGIN, _hash(state))
        if login is None:  # a second callback raced this one
            return _page("Sign-in failed", "This login was already used.", status=400)

        def back(**params: str | None) -> Response:
            url = construct_redirect_uri(login["redirect_uri"], **params, state=login.get("state"))
            return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

        if query.get("error") or not query.get("code"):
            logger.info("sign-in: %s login for client %s ended with %r", self.provider_name, login["client_id"],
                        (query.get("error") or "no code")[:100])
            return back(error="access_denied", error_description="the sign-in was not completed")
        try:
            upstream_token, claims = await self._upstream_identity(query["code"], login["verifier"])
        except Exception as exc:  # noqa: BLE001 - every upstream failure is a server_error for the client
            logger.warning("sign-in: %s login for client %s failed: %s", self.provider_name, login["client_id"],
                           exc if isinstance(exc, UpstreamError) else type(exc).__name__)
            return back(error="server_error", error_description="the identity provider could not sign you in")

        code = secrets.token_urlsafe(32)
        grant = uuid.uuid4().hex
        expires_at = time.time() + self.code_ttl
        await self._db.put(CODE, _hash(code), {
            "client_id": login["client_id"],
            "scopes": login["scopes"],
            "code_challenge": login["code_challenge"],
            "redirect_uri": login["redirect_uri"],
            "redirect_uri_provided_explicitly": login["redirect_uri_provided_explicitly"],
            "resource": login.get("resource"),
            "expires_at": expires_at,
            "subject": claims["sub"],
            "claims": claims,
            "upstream": await self._encrypt(upstream_token),
            "grant": grant,
        }, expires_at=expires_at, grant=grant)
        logger.info("sign-in: %s user %s signed in for client %s", self.provider_name, claims["sub"],
                    login["client_id"])
        return back(code=code)

    async def _upstream_identity(self, code: str, verifier: str) -> tuple[str, dict[str, Any]]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.callback_url,
            "code_verifier": verifier,
            "client_id": self.upstream.client_id,
        }
        if self.upstream.client_secret:
            form["client_secret"] = self.upstream.client_secret  # client_secret_post
        # GitHub answers form-encoded unless asked for JSON.
        response = await self.http.post(str(self.endpoints.token_endpoint), data=form,
                                        headers={"Accept": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = dict(parse_qsl(response.text))
        if not isinstance(body, dict):
            raise UpstreamError(f"token endpoint answered HTTP {response.status_code} without a JSON object")
        if response.status_code != 200 or body.get("error") or not body.get("access_token"):
            # GitHub answers errors with HTTP 200 and an `error` member.
            raise UpstreamError(f"token endpoint answered HTTP {response.status_code} "
                                f"error={str(body.get('error') or 'no access_token')[:100]}")
        access_token = str(body["access_token"])

        userinfo = getattr(self.endpoints, "userinfo_endpoint", None)
        if userinfo:
            headers = {"Accept": "application/json", **dict(self.upstream.api_headers),
                       "Authorization": f"Bearer {access_token}"}
            answer = await self.http.get(str(userinfo), headers=headers)
            if answer.status_code != 200:
                raise UpstreamError(f"userinfo endpoint answered HTTP {answer.status_code}")
            try:
                profile = answer.json()
            except ValueError:
                raise UpstreamError("userinfo endpoint did not answer JSON") from None
        elif body.get("id_token"):
            # Read without checking the signature: OpenID Connect Core 3.1.3.7 lets a client rely on TLS server
            # validation instead, for an ID token received directly from the token endpoint (as here).
            try:
                profile = _unverified_jwt_claims(str(body["id_token"]))
            except (ValueError, TypeError, IndexError, binascii.Error):
                raise UpstreamError("id_token could not be read") from None
            profile = {k: v for k, v in profile.items() if k not in TOKEN_CLAIMS}
        else:
            raise UpstreamError("no userinfo endpoint and no id_token: cannot tell who signed in")
        if not isinstance(profile, dict):
            raise UpstreamError("user profile is not a JSON object")
        if self.upstream.profile is not None:
            profile = dict(self.upstream.profile(profile))
        claims = dict(profile)
        if claims.get("sub") in (None, ""):
            if claims.get("id") in (None, ""):
                raise UpstreamError("user profile has neither sub nor id")
            claims["sub"] = str(claims["id"])
        claims["sub"] = str(claims["sub"])
        return access_token, claims

    # -- authorization codes ------------------------------------------------------------------------------------
    @staticmethod
    def _code_from(record: Mapping[str, Any], code: str) -> AuthorizationCode:
        return AuthorizationCode(
            code=code, scopes=list(record["scopes"]), expires_at=record["expires_at"], client_id=record["client_id"],
            code_challenge=record["code_challenge"], redirect_uri=record["redirect_uri"],
            redirect_uri_provided_explicitly=record["redirect_uri_provided_explicitly"],
            resource=record.get("resource"), subject=record.get("subject"),
        )

    async def load_authorization_code(self, client: OAuthClientInformationFull,
                                      authorization_code: str) -> AuthorizationCode | None:
        # A replayed code (RFC 6749 §4.1.2) revokes what the first exchange issued, whatever comes next. The code
        # is still answered so that the exchange reports "already used".
        record = await self._live_or_revoked(client, authorization_code, CODE, USED_CODE, "authorization code replayed")
        return self._code_from(record, authorization_code) if record is not None else None

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        key = _hash(authorization_code.code)
        record = await self._db.take(CODE, key)
        if record is None or record["client_id"] != client.client_id:
            used = await self._db.get(USED_CODE, key)
            if used is not None and used["client_id"] == client.client_id:
                await self._db.delete_grant(used["grant"])
            raise TokenError("invalid_grant", "authorization code already used")
        grant = record["grant"]
        marker = {k: record[k] for k in ("client_id", "scopes", "code_challenge", "redirect_uri",
                                         "redirect_uri_provided_explicitly", "resource", "expires_at", "subject")}
        # Not part of the grant: it outlives a revocation, so later replays still read "already used".
        await self._db.put(USED_CODE, key, {**marker, "grant": grant}, expires_at=time.time() + self.refresh_ttl)
        return await self._issue(grant, client.client_id, list(record["scopes"]),
                           record.get("resource") or self.resource_url, record["subject"], record["claims"],
                           record["upstream"])

    async def _issue(self, grant: str, client_id: str, scopes: list[str], resource: str, subject: str,
               claims: Mapping[str, Any], upstream: str) -> OAuthToken:
        now = time.time()
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        base = {"client_id": client_id, "scopes": scopes, "resource": resource, "subject": subject,
                "claims": dict(claims), "upstream": upstream, "grant": grant}
        # Rounded up: a client counts `expires_in` from when it receives the token, so the server must not expire it
        # earlier (truncating lost up to a second, and a call in that gap got a 401 and a whole new login).
        access_expiry = math.ceil(now + self.access_ttl)
        refresh_expiry = math.ceil(now + self.refresh_ttl)
        await self._db.put(ACCESS, _hash(access), {**base, "expires_at": access_expiry}, expires_at=access_expiry,
                       grant=grant)
        await self._db.put(REFRESH, _hash(refresh), {**base, "expires_at": refresh_expiry}, expires_at=refresh_expiry,
                       grant=grant)
        return OAuthToken(access_token=access, token_type="Bearer", expires_in=self.access_ttl,
                          scope=" ".join(scopes) or None, refresh_token=refresh)

    # -- refresh tokens -----------------------------------------------------------------------------------------
    @staticmethod
    def _refresh_from(record: Mapping[str, Any], token: str) -> RefreshToken:
        return RefreshToken(token=token, client_id=record["client_id"], scopes=list(record["scopes"]),
                            expires_at=record.get("expires_at"), resource=record.get("resource"),
                            subject=record.get("subject"))

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        # Refresh token reuse (RFC 9700 §4.14.2): a rotated token came back, so one of its holders is not the
        # client. The whole grant is revoked; the exchange that follows answers invalid_grant.
        record = await self._live_or_revoked(client, refresh_token, REFRESH, ROTATED, "rotated refresh token reused")
        return self._refresh_from(record, refresh_token) if record is not None else None

    async def _live_or_revoked(self, client: OAuthClientInformationFull, token: str, live: str, spent: str,
                         misuse: str) -> Mapping[str, Any] | None:
        """The client's record of `token`: live, or already spent (a replay, which revokes its whole grant)."""
        key = _hash(token)
        record = await self._db.get(live, key)
        if record is not None:
            return record if record["client_id"] == client.client_id else None
        record = await self._db.get(spent, key)
        if record is None or record["client_id"] != client.client_id:
            return None
        if await self._db.delete_grant(record["grant"]):
            logger.warning("sign-in: %s by client %s; grant %s revoked", misuse, client.client_id, record["grant"])
        return record

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: RefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        if any(s not in refresh_token.scopes for s in scopes):
            raise TokenError("invalid_scope", "requested scopes exceed the original grant")
        key = _hash(refresh_token.token)
        record = await self._db.take(REFRESH, key)
        if record is None or record["client_id"] != client.client_id:
            rotated = await self._db.get(ROTATED, key)
            if rotated is not None and rotated["client_id"] == client.client_id:
                await self._db.delete_grant(rotated["grant"])
            raise TokenError("invalid_grant", "refresh token already used")
        grant = record["grant"]
        await self._db.put(ROTATED, key, {k: record.get(k) for k in ("client_id", "scopes", "resource", "subject",
                                                                 "expires_at", "grant")},
                       expires_at=record.get("expires_at"))
        granted = list(record["scopes"])
        scopes = [s for s in scopes if s in granted] if scopes else granted
        return await self._issue(grant, client.client_id, scopes, record["resource"],
                           record["subject"], record["claims"], record["upstream"])

    # -- access tokens ------------------------------------------------------------------------------------------
    async def load_access_token(self, token: str) -> AccessToken | None:
        record = await self._db.get(ACCESS, _hash(token))
        if record is None or record["expires_at"] <= time.time():
            return None
        claims = dict(record["claims"])
        claims.update({
            "iss": self.base_url,
            "mxcp:provider": self.provider_name,
            "mxcp:upstream_token": await self._decrypt(record.get("upstream")),
        })
        return AccessToken(token=token, client_id=record["client_id"], scopes=list(record["scopes"]),
                           expires_at=int(record["expires_at"]), resource=record.get("resource"),
                           subject=record.get("subject"), claims=claims)

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        key = _hash(token.token)
        for kind in (ACCESS, REFRESH):
            record = await self._db.get(kind, key)
            if record is not None:
                await self._db.delete_grant(record["grant"])
                logger.info("sign-in: client %s revoked grant %s", record["client_id"], record["grant"])
                return


def _cache_ttl(cache_control: str) -> float:
    directives = cache_control.lower()
    if "no-store" in directives or "no-cache" in directives:
        return 0
    match = re.search(r"max-age\s*=\s*(\d+)", directives)
    if match is None:
        return CIMD_DEFAULT_TTL
    return min(int(match.group(1)), CIMD_MAX_TTL)
