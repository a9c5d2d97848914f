"""The authorization server's Flask app: Authlib's OAuth 2.1 / OpenID Connect server with in-memory models.

Protocol logic comes from Authlib: ``AuthorizationServer`` (Flask integration), ``AuthorizationCodeGrant`` +
``CodeChallenge`` (PKCE, restricted to S256 and required for every client) + ``OpenIDCode`` (ID tokens),
``RefreshTokenGrant`` (rotating), ``ClientCredentialsGrant``, ``IntrospectionEndpoint`` (RFC 7662),
``RevocationEndpoint`` (RFC 7009), ``UserInfoEndpoint`` behind a ``ResourceProtector``, and a
``JWTBearerTokenGenerator`` subclass for RFC 9068 access tokens. Keys are ``joserfc`` JWKs.

What this module adds is the models (users, clients, codes, tokens), the cookie login, discovery, JWKS, the
RFC 8707 ``resource`` -> ``aud`` mapping and the test-only key rotation endpoint. See
``tests/auth_fixtures.py`` for the users and clients from a test's point of view.
"""
from __future__ import annotations

import html
import json
import logging
import os
import secrets
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidRequestError,
    TokenMixin,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import (
    AuthorizationCodeMixin,
    OpenIDCode,
    UserInfo,
    UserInfoEndpoint,
)
from flask import Flask, Response, current_app, g, jsonify, redirect, request, session
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

log = logging.getLogger("authserver")

ACCESS_TOKEN_TTL = 300  # seconds, unless the client says otherwise
REFRESH_TOKEN_TTL = 24 * 3600
CODE_TTL = 60
ID_TOKEN_TTL = 3600
SCOPES = ["openid", "profile", "email", "offline_access", "mcp:read", "mcp:write"]
CLIENT_AUTH = ("client_secret_basic", "client_secret_post")
SIGNING_ALGS = ["RS256", "ES256", "EdDSA"]


# --------------------------------------------------------------------------------------------- users


@dataclass(frozen=True)
class User:
    id: str
    username: str
    password: str
    email: str
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]

    def get_user_id(self) -> str:
        return self.id

    def claims(self) -> dict[str, Any]:
        """The profile claims copied into access tokens and introspection answers."""
        return {
            "preferred_username": self.username,
            "email": self.email,
            "name": self.name,
            "realm_access": {"roles": list(self.roles)},
            "groups": list(self.groups),
        }


USERS = {
    u.username: u
    for u in (
        User("user-alice", "alice", "alice-pw", "alice@example.com", "Alice Example", ("admin", "analyst"), ("eng",)),
        User("user-bob", "bob", "bob-pw", "bob@example.com", "Bob Example", ("analyst",), ("sales",)),
    )
}
USERS_BY_ID = {u.id: u for u in USERS.values()}


def user_info(user: User, scope: str) -> UserInfo:
    """OIDC claims for the ID token and /userinfo: standard claims filtered by scope, roles and groups always."""
    standard = UserInfo(
        sub=user.id, name=user.name, preferred_username=user.username, email=user.email, email_verified=True
    ).filter(scope)
    info = UserInfo(sub=user.id, **{k: v for k, v in standard.items() if k != "sub"})
    info["realm_access"] = {"roles": list(user.roles)}
    info["groups"] = list(user.groups)
    return info


# --------------------------------------------------------------------------------------------- clients


def is_loopback_redirect(uri: str) -> bool:
    """RFC 8252 loopback redirect: http on 127.0.0.1 / localhost / [::1], any port, no fragment."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1") and not parts.fragment


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str | None  # None: a public client (token_endpoint_auth_method "none")
    grant_types: tuple[str, ...]
    scope: str = " ".join(SCOPES)
    default_audience: str = "mxcp-server"
    opaque: bool = False  # random opaque access tokens instead of JWTs
    alg: str = "RS256"  # access token signing algorithm
    access_token_ttl: int = ACCESS_TOKEN_TTL
    client_metadata: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # every authorization request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scope.split())
        return list_to_scope([s for s in scope_to_list(scope) if s in allowed])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return is_loopback_redirect(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in CLIENT_AUTH

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


CONFIDENTIAL = ("authorization_code", "refresh_token", "client_credentials")
CLIENTS = {
    c.client_id: c
    for c in (
        Client("mxcp-server", "mxcp-server-secret", CONFIDENTIAL),
        Client("mxcp-opaque", "mxcp-opaque-secret", CONFIDENTIAL, opaque=True),
        Client("mxcp-es256", "mxcp-es256-secret", CONFIDENTIAL, alg="ES256"),
        Client("mxcp-eddsa", "mxcp-eddsa-secret", CONFIDENTIAL, alg="EdDSA"),
        Client("mxcp-short", "mxcp-short-secret", CONFIDENTIAL, access_token_ttl=5),
        Client("test-public", None, ("authorization_code", "refresh_token")),
    )
}


# --------------------------------------------------------------------------------------------- keys


class KeyStore:
    """The signing keys, persisted as a private JWK set in ``<state_dir>/keys.json`` (so a restart keeps them).

    The signing key for an algorithm is the LAST key of that algorithm in the set, so a rotated RSA key
    (appended by ``rotate``) signs new tokens while the older ones stay published for verification.
    """

    def __init__(self, state_dir: Path):
        self.path = state_dir / "keys.json"
        self.lock = threading.Lock()
        if self.path.exists():
            self.keys = list(KeySet.import_key_set(json.loads(self.path.read_text())).keys)
        else:
            params = {"use": "sig"}
            self.keys = [
                RSAKey.generate_key(2048, {**params, "kid": "rsa-1", "alg": "RS256"}, private=True),
                ECKey.generate_key("P-256", {**params, "kid": "ec-1", "alg": "ES256"}, private=True),
                OKPKey.generate_key("Ed25519", {**params, "kid": "ed-1", "alg": "EdDSA"}, private=True),
            ]
            self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(KeySet(self.keys).as_dict(private=True), indent=2))
        os.replace(tmp, self.path)

    def signing_key(self, alg: str):
        with self.lock:
            return [k for k in self.keys if k.alg == alg][-1]

    def public_jwks(self) -> dict[str, Any]:
        with self.lock:
            return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def rotate(self) -> str:
        with self.lock:
            kids = {k.kid for k in self.keys}
            n = 2
            while f"rsa-{n}" in kids:
                n += 1
            kid = f"rsa-{n}"
            self.keys.append(RSAKey.generate_key(2048, {"use": "sig", "kid": kid, "alg": "RS256"}, private=True))
            self.save()
        log.info("rotated: new RSA signing key %s", kid)
        return kid


# --------------------------------------------------------------------------------------------- codes and tokens


@dataclass
class AuthCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    auth_time: int
    resource: list[str]
    created_at: float = field(default_factory=time.time)
    used: bool = False
    issued_tokens: list[TokenRecord] = field(default_factory=list)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def is_expired(self) -> bool:
        return time.time() > self.created_at + CODE_TTL


@dataclass
class TokenRecord(TokenMixin):
    """One token response: the access token (JWT or opaque) and its optional refresh token."""

    access_token: str
    refresh_token: str | None
    client_id: str
    user_id: str | None
    scope: str
    aud: str | list[str]
    iss: str
    jti: str
    issued_at: int
    expires_at: int
    refresh_expires_at: int
    is_jwt: bool
    access_revoked: bool = False
    refresh_revoked: bool = False

    # TokenMixin (the access token)
    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_at - self.issued_at

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> User | None:
        return USERS_BY_ID.get(self.user_id) if self.user_id else None

    def get_client(self) -> Client:
        return CLIENTS[self.client_id]

    def revoke(self) -> None:
        self.access_revoked = True

    def introspection(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "scope": self.scope,
            "client_id": self.client_id,
            "sub": self.user_id or self.client_id,
            "aud": self.aud,
            "iss": self.iss,
            "exp": self.expires_at,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "jti": self.jti,
        }
        user = self.get_user()
        if user is not None:
            payload["username"] = user.username
            payload.update(user.claims())
        return payload


@dataclass
class RefreshTokenView(TokenMixin):
    """The refresh token of a record, for introspection and revocation."""

    record: TokenRecord

    def check_client(self, client: Client) -> bool:
        return self.record.check_client(client)

    def get_scope(self) -> str:
        return self.record.scope

    def is_expired(self) -> bool:
        return time.time() >= self.record.refresh_expires_at

    def is_revoked(self) -> bool:
        return self.record.refresh_revoked

    def revoke(self) -> None:
        # RFC 7009 2.1: revoking a refresh token also invalidates the access token of the same grant.
        self.record.refresh_revoked = True
        self.record.access_revoked = True

    def introspection(self) -> dict[str, Any]:
        payload = self.record.introspection()
        payload.update(token_type="refresh_token", exp=self.record.refresh_expires_at)
        return payload


class Store:
    """In-memory storage shared by the request threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.codes: dict[str, AuthCode] = {}
        self.by_access: dict[str, TokenRecord] = {}
        self.by_refresh: dict[str, TokenRecord] = {}

    def add_token(self, record: TokenRecord) -> None:
        with self.lock:
            self.by_access[record.access_token] = record
            if record.refresh_token:
                self.by_refresh[record.refresh_token] = record

    def find(self, token: str, hint: str | None) -> TokenRecord | RefreshTokenView | None:
        with self.lock:
            if hint != "refresh_token" and token in self.by_access:
                return self.by_access[token]
            if hint != "access_token" and token in self.by_refresh:
                return RefreshTokenView(self.by_refresh[token])
            # RFC 7009 / 7662: a wrong hint must not hide the token
            if token in self.by_access:
                return self.by_access[token]
            if token in self.by_refresh:
                return RefreshTokenView(self.by_refresh[token])
        return None


# --------------------------------------------------------------------------------------------- RFC 8707 resources


class InvalidTargetError(OAuth2Error):
    error = "invalid_target"


def checked_resources(values: list[str]) -> list[str]:
    for value in values:
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc or parts.fragment:
            raise InvalidTargetError(f"'resource' must be an absolute URI without fragment: {value!r}")
    return values


def audience_of(resources: list[str]) -> str | list[str] | None:
    if not resources:
        return None
    return resources[0] if len(resources) == 1 else list(resources)


def issuer() -> str:
    return current_app.config["ISSUER"]


# --------------------------------------------------------------------------------------------- the app


def create_app(state_dir: Path, issuer_url: str | None = None) -> Flask:
    """Build the app. ``issuer_url`` may be set later through ``app.config["ISSUER"]`` (once the port is known)."""
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback, this process only
    state_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(state_dir)
    store = Store()

    app = Flask("authserver")
    app.config.update(
        ISSUER=issuer_url,
        SECRET_KEY=secrets.token_hex(32),
        SESSION_COOKIE_NAME="authserver_session",  # cookies ignore ports: do not collide with the app under test
        OAUTH2_SCOPES_SUPPORTED=SCOPES,
    )
    app.extensions["authserver.keys"] = keys
    app.extensions["authserver.store"] = store

    # ---------------------------------------------------------------- token generation

    class AccessTokenGenerator(JWTBearerTokenGenerator):
        """RFC 9068 access tokens; opaque random strings for clients with ``opaque=True``.

        The claims come from the library's hooks (``get_audiences``, ``get_extra_claims``, ``get_jti``,
        expiry); the signing is redone here because the client picks the algorithm and key (joserfc only
        allows its "recommended" algorithms by default, which excludes EdDSA) and the header names the kid.
        """

        def get_audiences(self, client, user, scope):
            return g.get("token_audience") or client.default_audience

        def get_extra_claims(self, client, grant_type, user, scope):
            return user.claims() if user is not None else {}

        def access_token_generator(self, client, grant_type, user, scope):
            if client.opaque:
                g.issued_claims = None
                return generate_token(42)
            now = int(time.time())
            claims = {
                "iss": issuer(),
                "sub": str(user.get_user_id()) if user is not None else client.get_client_id(),
                "aud": self.get_audiences(client, user, scope),
                "exp": now + self._get_expires_in(client, grant_type),
                "iat": now,
                "nbf": now,
                "jti": self.get_jti(client, grant_type, user, scope),
                "client_id": client.get_client_id(),
                "scope": scope,
            }
            if user is not None and g.get("auth_time"):
                claims["auth_time"] = g.auth_time
            claims.update(self.get_extra_claims(client, grant_type, user, scope))
            key = keys.signing_key(client.alg)
            header = {"alg": client.alg, "typ": "at+jwt", "kid": key.kid}
            g.issued_claims = claims
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # joserfc: "EdDSA is deprecated via RFC 9864" (still the usual name)
                return jose_jwt.encode(header, claims, key, algorithms=[client.alg])

    generator = AccessTokenGenerator(
        issuer=None,  # read per request from the app config
        refresh_token_generator=lambda **_: generate_token(48),
        expires_generator=lambda client, grant_type: client.access_token_ttl,
    )

    def save_token(token: dict[str, Any], req) -> None:
        client = req.client
        user = req.user
        claims = g.pop("issued_claims", None)
        now = int(time.time())
        record = TokenRecord(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            client_id=client.client_id,
            user_id=user.id if user is not None else None,
            scope=token.get("scope", ""),
            aud=claims["aud"] if claims else (g.get("token_audience") or client.default_audience),
            iss=issuer(),
            jti=claims["jti"] if claims else generate_token(16),
            issued_at=claims["iat"] if claims else now,
            expires_at=claims["exp"] if claims else now + int(token.get("expires_in", client.access_token_ttl)),
            refresh_expires_at=now + REFRESH_TOKEN_TTL,
            is_jwt=claims is not None,
        )
        store.add_token(record)
        g.saved_token = record

    server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
    server.register_token_generator("default", generator)

    # ---------------------------------------------------------------- grants

    def resources_of_token_request() -> list[str]:
        return checked_resources(request.form.getlist("resource"))

    class S256CodeChallenge(CodeChallenge):
        """PKCE for every client (confidential ones too), S256 only."""

        SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)
        DEFAULT_CODE_CHALLENGE_METHOD = "S256"

        def validate_code_challenge(self, grant, redirect_uri):
            data = grant.request.payload.data
            if not data.get("code_challenge"):
                raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
            if data.get("code_challenge_method") != "S256":
                raise InvalidRequestError("PKCE 'code_challenge_method' must be S256")
            super().validate_code_challenge(grant, redirect_uri)

    class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = (*CLIENT_AUTH, "none")

        def save_authorization_code(self, code, req):
            data = req.payload.data
            resources = checked_resources(req.payload.datalist.get("resource", []))
            item = AuthCode(
                code=code,
                client_id=req.client.client_id,
                redirect_uri=req.payload.redirect_uri,
                scope=req.scope,
                user_id=req.user.id,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                nonce=data.get("nonce"),
                auth_time=int(session.get("auth_time") or time.time()),
                resource=resources,
            )
            with store.lock:
                store.codes[code] = item

        def query_authorization_code(self, code, client):
            with store.lock:
                item = store.codes.get(code)
                if item is None or item.client_id != client.client_id:
                    return None
                if item.used:
                    # RFC 6749 4.1.2: a replayed code revokes what was issued with it
                    log.warning("authorization code replayed by %s: revoking its tokens", client.client_id)
                    for record in item.issued_tokens:
                        record.access_revoked = record.refresh_revoked = True
                    return None
                if item.is_expired():
                    return None
                return item

        def delete_authorization_code(self, item):
            item.used = True  # kept (not deleted) to detect replays

        def authenticate_user(self, item):
            return USERS_BY_ID.get(item.user_id)

        def create_token_response(self):
            item = self.request.authorization_code
            g.token_audience = audience_of(resources_of_token_request() or item.resource)
            g.auth_time = item.auth_time
            result = super().create_token_response()
            if g.get("saved_token") is not None:
                item.issued_tokens.append(g.saved_token)
            return result

    class RefreshTokenGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = (*CLIENT_AUTH, "none")
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: the old refresh token is revoked below

        def authenticate_refresh_token(self, refresh_token):
            with store.lock:
                record = store.by_refresh.get(refresh_token)
            if record is None or record.refresh_revoked or time.time() >= record.refresh_expires_at:
                return None
            return record

        def authenticate_user(self, record):
            return USERS_BY_ID.get(record.user_id) if record.user_id else None

        def revoke_old_credential(self, record):
            record.refresh_revoked = True

        def create_token_response(self):
            record = self.request.refresh_token
            g.token_audience = audience_of(resources_of_token_request()) or record.aud
            return super().create_token_response()

    class ClientCredentialsGrant(grants.ClientCredentialsGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

        def create_token_response(self):
            g.token_audience = audience_of(resources_of_token_request())
            return super().create_token_response()

    class OIDCCode(OpenIDCode):
        def exists_nonce(self, nonce, req):
            with store.lock:
                return any(c.nonce == nonce and c.client_id == req.payload.client_id for c in store.codes.values())

        def resolve_client_private_key(self, client):
            return KeySet([keys.signing_key("RS256")])

        def get_client_algorithm(self, client):
            return "RS256"

        def get_client_claims(self, client):
            now = int(time.time())
            return {"iss": issuer(), "aud": client.client_id, "azp": client.client_id, "exp": now + ID_TOKEN_TTL}

        def generate_user_info(self, user, scope):
            return user_info(user, scope)

    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(required=True), OIDCCode(require_nonce=False)])
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)

    # ---------------------------------------------------------------- endpoints

    class Introspection(IntrospectionEndpoint):
        CLIENT_AUTH_METHODS = CLIENT_AUTH

        def query_token(self, token_string, token_type_hint):
            return store.find(token_string, token_type_hint)

        def check_permission(self, token, client, req):
            return True  # any confidential client (e.g. a resource server) may introspect

        def introspect_token(self, token):
            return token.introspection()

    class Revocation(RevocationEndpoint):
        CLIENT_AUTH_METHODS = (*CLIENT_AUTH, "none")

        def query_token(self, token_string, token_type_hint):
            return store.find(token_string, token_type_hint)

        def revoke_token(self, token, req):
            with store.lock:
                token.revoke()

    class StoredBearerTokenValidator(BearerTokenValidator):
        def authenticate_token(self, token_string):
            with store.lock:
                return store.by_access.get(token_string)

    protector = ResourceProtector()
    protector.register_token_validator(StoredBearerTokenValidator())

    class UserInfoEp(UserInfoEndpoint):
        def generate_user_info(self, user, scope):
            return user_info(user, scope)

        def get_issuer(self):
            return issuer()

        def resolve_private_key(self):
            return KeySet([keys.signing_key("RS256")])

    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    server.register_endpoint(UserInfoEp(resource_protector=protector))

    # ---------------------------------------------------------------- routes

    def metadata() -> dict[str, Any]:
        base = issuer()
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "userinfo_endpoint": f"{base}/userinfo",
            "introspection_endpoint": f"{base}/introspect",
            "revocation_endpoint": f"{base}/revoke",
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [*CLIENT_AUTH, "none"],
            "introspection_endpoint_auth_methods_supported": list(CLIENT_AUTH),
            "revocation_endpoint_auth_methods_supported": [*CLIENT_AUTH, "none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "userinfo_signing_alg_values_supported": ["RS256"],
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name", "preferred_username", "email",
                "email_verified", "realm_access", "groups",
            ],
            "authorization_response_iss_parameter_supported": False,
            "resource_indicators_supported": True,
        }

    @app.get("/.well-known/openid-configuration")
    @app.get("/.well-known/oauth-authorization-server")
    def discovery():
        return jsonify(metadata())

    @app.get("/jwks")
    def jwks():
        return jsonify(keys.public_jwks())

    def current_user() -> User | None:
        user_id = session.get("user_id")
        return USERS_BY_ID.get(user_id) if user_id else None

    def login_page(next_url: str, error: str = "", status: int = 200) -> Response:
        body = f"""<!doctype html>
<html><head><title>Sign in</title></head><body>
<h1>Sign in</h1>
{f'<p class="error">{html.escape(error)}</p>' if error else ''}
<form method="post" action="/login">
  <input type="hidden" name="next" value="{html.escape(next_url)}">
  <label>Username <input name="username" autocomplete="username"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form></body></html>"""
        return Response(body, status=status, mimetype="text/html")

    def safe_next(value: str | None) -> str:
        # Only local paths: no open redirect through the login form.
        if value and value.startswith("/") and not value.startswith("//"):
            return value
        return "/"

    @app.get("/login")
    def login_form():
        return login_page(safe_next(request.args.get("next")))

    @app.post("/login")
    def login():
        username = request.form.get("username", "")
        password = request.form.get("password", "")
        next_url = safe_next(request.form.get("next"))
        user = USERS.get(username)
        if user is None or not secrets.compare_digest(user.password, password):
            log.info("login failed for %r", username)
            return login_page(next_url, "Invalid username or password.", status=401)
        session.clear()
        session["user_id"] = user.id
        session["auth_time"] = int(time.time())
        log.info("login: %s", username)
        return redirect(next_url)

    @app.route("/logout", methods=["GET", "POST"])
    def logout():
        session.clear()
        return redirect(safe_next(request.values.get("next")))

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize():
        user = current_user()
        try:
            # validate the client, redirect_uri, scope and PKCE before anything else
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        if user is None:
            return redirect("/login?" + urlencode({"next": request.full_path}))
        # no consent screen: a signed-in user approves automatically
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.post("/introspect")
    def introspect():
        return server.create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME)

    @app.post("/revoke")
    def revoke():
        return server.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo():
        return server.create_endpoint_response(UserInfoEndpoint.ENDPOINT_NAME)

    @app.post("/_test/rotate")
    def rotate():
        kid = keys.rotate()
        return jsonify({"kid": kid, "alg": "RS256"})

    return app
