"""Bearer-token verification for the OAuth resource server ("verifier" mode).

The HTTP server calls `await verifier.verify_token(token)` for every request to the MCP paths; the answer is an
`mcp.server.auth.provider.AccessToken` for a token that is valid *for this server* and None for anything else.

- `JwtVerifier` checks a signed JWT against the provider's JWKS (`JwksCache`): the algorithms a token may use come
  from the key (never the token header alone), `iss` must equal the issuer, `exp` is required, `nbf`/`iat` are
  honoured with a leeway, and `aud` must name this server (RFC 8707 resource URL or a configured audience).
- `IntrospectionVerifier` asks the provider about opaque tokens (RFC 7662), failing closed when the answer names
  no audience, and caches positive answers briefly per sha256 of the token.
- `TokenVerifier` routes a token that looks like a JWS to the JWT verifier and others to introspection.

All cryptography is PyJWT's. Tokens and client secrets never appear in log lines, exception messages or reprs:
refusals are logged at INFO with a short reason only.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import jwt
from mcp.server.auth.provider import AccessToken

from mxcp_core import ProviderConnection

if TYPE_CHECKING:  # pragma: no cover
    import httpx2

log = logging.getLogger(__name__)

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": ("ES256",), "P-384": ("ES384",), "P-521": ("ES512",)}
OKP_CURVES = ("Ed25519", "Ed448")
# Every algorithm a token may name at all; anything else (none, HS*) is refused before a key is looked up.
ASYMMETRIC_ALGORITHMS = frozenset((*RSA_ALGORITHMS, "ES256", "ES384", "ES512", "EdDSA"))
MAX_TOKEN_LENGTH = 64 * 1024
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class SignInError(Exception):
    """The provider or its configuration cannot work; the message names the URL or key, never a secret."""


@attrs.frozen
class ProviderMetadata:
    """The provider endpoints in use: discovered ones, overridden by those given explicitly on the connection."""

    issuer: str | None
    authorization_endpoint: str | None
    token_endpoint: str | None
    userinfo_endpoint: str | None
    jwks_uri: str | None
    introspection_endpoint: str | None
    revocation_endpoint: str | None = None
    scopes_supported: tuple[str, ...] = ()


def _refuse(reason: str) -> None:
    log.info("token refused: %s", reason)


# Why PyJWT refused a token, for the log line (the first matching class; subclasses come first).
_DECODE_REFUSALS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "audience"),
    (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidSignatureError, "signature"),
    (jwt.InvalidAlgorithmError, "algorithm"),
)


def _decode_refusal(exc: Exception) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return "audience" if exc.claim == "aud" else f"missing {exc.claim}"
    return next((reason for kind, reason in _DECODE_REFUSALS if isinstance(exc, kind)),
                f"invalid ({type(exc).__name__})")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _same_url(a: str, b: str) -> bool:
    """Audience comparison: exact, except that a trailing slash does not matter."""
    return a.rstrip("/") == b.rstrip("/")


def _matched_audience(aud: Any, audiences: Sequence[str]) -> str | None:
    """The accepted audience (as configured) that `aud` (a string or a list of strings) names, or None."""
    if isinstance(aud, str):
        named = [aud]
    elif isinstance(aud, list):
        named = [a for a in aud if isinstance(a, str)]
    else:
        return None
    for accepted in audiences:
        if any(_same_url(accepted, a) for a in named):
            return accepted
    return None


def scopes_of(claims: Mapping) -> tuple[str, ...]:
    """The scopes a token grants: `scope` (a space-separated string) or else `scp` (a list or a string)."""
    value = claims.get("scope")
    if value is None:
        value = claims.get("scp")
    if isinstance(value, str):
        items = value.split()
    elif isinstance(value, (list, tuple)):
        items = [s for item in value if isinstance(item, str) for s in item.split()]
    else:
        items = []
    return tuple(dict.fromkeys(items))


def _subject(claims: Mapping) -> str | None:
    sub = claims.get("sub")
    return sub if isinstance(sub, str) and sub else None


def _client_id(claims: Mapping) -> str:
    for name in ("client_id", "azp"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return "unknown"


def _expiry(claims: Mapping) -> int | None:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return int(exp)


# ---------------------------------------------------------------------------------------------------------------
# Discovery


def _access_token(token: str, claims: Mapping, audiences: Sequence[str]) -> AccessToken | None:
    """The verified token as the SDK knows it, when its audience is one of ours (RFC 8707); None otherwise."""
    resource = _matched_audience(claims.get("aud"), audiences)
    if resource is None:
        _refuse("audience")
        return None
    return AccessToken(token=token, client_id=_client_id(claims), scopes=list(scopes_of(claims)),
                       expires_at=_expiry(claims), resource=resource, subject=_subject(claims), claims=dict(claims))


async def _get_json(http: httpx2.AsyncClient, url: str, what: str) -> dict[str, Any]:
    """GET a JSON object; SignInError naming `url` for anything else."""
    try:
        response = await http.get(url, headers={"Accept": "application/json"})
    except Exception as exc:  # httpx2.HTTPError and friends: the provider cannot be reached
        raise SignInError(f"{what} {url} could not be fetched: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise SignInError(f"{what} {url} answered HTTP {response.status_code}")
    try:
        document = response.json()
    except (ValueError, UnicodeDecodeError):
        raise SignInError(f"{what} {url} is not JSON") from None
    if not isinstance(document, dict):
        raise SignInError(f"{what} {url} is not a JSON object")
    return document


async def discover(connection: ProviderConnection, http: httpx2.AsyncClient) -> ProviderMetadata:
    """The provider's endpoints: `connection.config_url` (OIDC discovery or RFC 8414 metadata) when given, with
    explicit endpoints on the connection winning over discovered ones.

    Raises SignInError naming config_url for an unreachable, non-2xx or non-JSON document, or one whose `issuer`
    differs from `connection.issuer` when both are set.
    """
    document: dict[str, Any] = {}
    if connection.config_url:
        document = await _get_json(http, connection.config_url, "discovery document")
        found = document.get("issuer")
        if found is not None and not isinstance(found, str):
            raise SignInError(f"discovery document {connection.config_url} has a non-string issuer")
        if connection.issuer and found and found != connection.issuer:
            raise SignInError(
                f"discovery document {connection.config_url} names issuer {found!r}, "
                f"but the configured issuer is {connection.issuer!r}"
            )
    scopes = document.get("scopes_supported")
    return ProviderMetadata(
        issuer=connection.issuer or _str_or_none(document.get("issuer")),
        authorization_endpoint=connection.authorization_endpoint
        or _str_or_none(document.get("authorization_endpoint")),
        token_endpoint=connection.token_endpoint or _str_or_none(document.get("token_endpoint")),
        userinfo_endpoint=connection.userinfo_endpoint or _str_or_none(document.get("userinfo_endpoint")),
        jwks_uri=connection.jwks_uri or _str_or_none(document.get("jwks_uri")),
        introspection_endpoint=connection.introspection_endpoint
        or _str_or_none(document.get("introspection_endpoint")),
        revocation_endpoint=_str_or_none(document.get("revocation_endpoint")),
        scopes_supported=tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else (),
    )


# ---------------------------------------------------------------------------------------------------------------
# JWKS


def key_algorithms(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """The algorithms a JWK may verify: from its type and curve, narrowed to its `alg` when it has one.

    Symmetric keys, encryption keys and unknown key types verify nothing.
    """
    use = jwk.get("use")
    if use is not None and use != "sig":
        return ()
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return ()
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed: tuple[str, ...] = RSA_ALGORITHMS
    elif kty == "EC":
        allowed = EC_ALGORITHMS.get(jwk.get("crv"), ())  # type: ignore[arg-type]
    elif kty == "OKP" and jwk.get("crv") in OKP_CURVES:
        allowed = ("EdDSA",)
    else:
        return ()
    alg = jwk.get("alg")
    if alg is not None:
        return (alg,) if alg in allowed else ()
    return allowed


class JwksCache:
    """The provider's signing keys from `jwks_uri`, fetched on first use and kept for `max_age` seconds.

    An unknown `kid` triggers one refresh, but refreshes happen at most once per `min_refresh_interval` (a flood
    of made-up kids must not hammer the provider). A token without `kid` matches when the set has exactly one key
    usable for its algorithm. Concurrent callers share one fetch; a failed fetch keeps the old keys.
    """

    def __init__(self, jwks_uri: str, http: httpx2.AsyncClient, *, max_age: float = 600.0,
                 min_refresh_interval: float = 30.0) -> None:
        self.jwks_uri = jwks_uri
        self._http = http
        self.max_age = max_age
        self.min_refresh_interval = min_refresh_interval
        self._keys: list[dict[str, Any]] = []
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._attempted_at: float | None = None  # monotonic time of the last fetch attempt
        self._generation = 0  # bumped by every fetch attempt, so waiters on the lock know one happened
        self._lock = asyncio.Lock()
        self._prepared: dict[tuple[int, str], jwt.PyJWK] = {}
        self.fetches = 0  # fetch attempts, for monitoring and tests

    def __repr__(self) -> str:
        return f"JwksCache({self.jwks_uri!r}, keys={len(self._keys)})"

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The key for a token with this `kid` header (None: no kid) and `alg`, bound to `alg`; None if none."""
        if alg not in ASYMMETRIC_ALGORITHMS:
            return None
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self.max_age:
            await self._refresh()
        found = self._find(kid, alg)
        if found is None and (kid is None or not any(k.get("kid") == kid for k in self._keys)):
            # An unknown kid (or no usable key without one): the provider may have rotated its keys.
            await self._refresh()
            found = self._find(kid, alg)
        return found

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if kid is not None:
            candidates = [i for i, k in enumerate(self._keys) if k.get("kid") == kid and alg in key_algorithms(k)]
        else:
            candidates = [i for i, k in enumerate(self._keys) if alg in key_algorithms(k)]
            if len(candidates) != 1:
                return None
        for index in candidates:
            prepared = self._prepared.get((index, alg))
            if prepared is None:
                try:
                    prepared = jwt.PyJWK(self._keys[index], algorithm=alg)
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
                    log.info("jwks %s: key %r is unusable", self.jwks_uri, self._keys[index].get("kid"))
                    continue
                self._prepared[(index, alg)] = prepared
            return prepared
        return None

    async def _refresh(self) -> None:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:
                return  # another caller fetched while this one waited
            now = time.monotonic()
            if self._attempted_at is not None and now - self._attempted_at < self.min_refresh_interval:
                return
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            finally:
                # Bumped once the fetch is over: every caller that queued up meanwhile uses its result.
                self._generation += 1
            if keys is not None:
                self._keys = keys
                self._prepared = {}
                self._fetched_at = time.monotonic()

    async def _fetch(self) -> list[dict[str, Any]] | None:
        try:
            document = await _get_json(self._http, self.jwks_uri, "jwks")
        except SignInError as exc:
            log.info("jwks fetch failed, keeping %d old key(s): %s", len(self._keys), exc)
            return None
        keys = document.get("keys")
        if not isinstance(keys, list):
            log.info("jwks fetch failed, keeping %d old key(s): %s has no keys list", len(self._keys),
                     self.jwks_uri)
            return None
        usable = []
        for k in keys:
            if not isinstance(k, dict):
                continue
            if any(member in k for member in _PRIVATE_MEMBERS):
                log.info("jwks %s: ignoring key %r, which carries private or symmetric material",
                         self.jwks_uri, k.get("kid"))
                continue
            if key_algorithms(k):
                usable.append(k)
        return usable


# ---------------------------------------------------------------------------------------------------------------
# Verifiers


def _unverified_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS (three base64url segments, a JSON header with `alg`), or None."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    if not all(_B64URL.match(p) for p in parts):
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


def looks_like_jws(token: str) -> bool:
    return _unverified_header(token) is not None


class VerifiedTokens:
    """Tokens verified lately, by sha256: each kept for min(`seconds`, its expiry), at most `size` of them (LRU).

    Clients send the same token with every request; verifying it once per `seconds` spares the signature check
    (or the provider round trip). The price: a token the provider stops vouching for (revoked, its key withdrawn)
    stays accepted that long at most.
    """

    def __init__(self, seconds: float, size: int) -> None:
        self.seconds, self.size = seconds, size
        self._entries: collections.OrderedDict[str, tuple[float, AccessToken]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> AccessToken | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, access = entry
        if time.monotonic() >= deadline or (access.expires_at is not None and access.expires_at <= time.time()):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return access

    def put(self, key: str, access: AccessToken) -> None:
        lifetime = self.seconds
        if access.expires_at is not None:
            lifetime = min(lifetime, access.expires_at - time.time())
        if lifetime <= 0 or self.size <= 0:
            return
        self._entries[key] = (time.monotonic() + lifetime, access)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class JwtVerifier:
    """Verifies JWT access tokens signed by the provider's keys (see the module docstring for the rules).

    A token verified once is remembered for `cache_seconds` (at most until it expires): see `VerifiedTokens`.
    """

    def __init__(self, *, issuer: str, jwks: JwksCache, audiences: Sequence[str], leeway: float = 30.0,
                 required_claims: Sequence[str] = ("exp", "iss", "aud"), cache_seconds: float = 60.0,
                 cache_size: int = 10_000) -> None:
        if not issuer:
            raise SignInError("JWT verification needs an issuer")
        if not audiences:
            raise SignInError("JWT verification needs at least one audience")
        self.issuer = issuer
        self.jwks = jwks
        self.audiences = tuple(dict.fromkeys(audiences))
        self.leeway = leeway
        # exp and aud are always required, whatever else is.
        self.required_claims = tuple(dict.fromkeys((*required_claims, "exp", "aud")))
        # PyJWT compares audiences exactly: give it each accepted one with and without a trailing slash.
        self._audience_forms = tuple(
            dict.fromkeys(form for a in self.audiences for form in (a, a.rstrip("/"), a.rstrip("/") + "/"))
        )
        self.verified = VerifiedTokens(cache_seconds, cache_size)

    def __repr__(self) -> str:
        return f"JwtVerifier(issuer={self.issuer!r}, audiences={self.audiences!r})"

    async def verify_token(self, token: str) -> AccessToken | None:
        key = _token_key(token)
        access = self.verified.get(key)
        if access is None:
            access = await self._verify(token)
            if access is not None:
                self.verified.put(key, access)
        return access

    async def _verify(self, token: str) -> AccessToken | None:
        header = _unverified_header(token)
        if header is None:
            _refuse("not a JWS")
            return None
        alg = header["alg"]
        if alg not in ASYMMETRIC_ALGORITHMS:
            _refuse("algorithm")
            return None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            _refuse("malformed kid")
            return None
        key = await self.jwks.key(kid, alg)
        if key is None:
            _refuse("unknown key")
            return None
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=list(self._audience_forms),
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": list(self.required_claims), "verify_signature": True, "verify_exp": True,
                         "verify_nbf": True, "verify_iat": True, "verify_aud": True, "verify_iss": True},
            )
        except jwt.InvalidTokenError as exc:
            _refuse(_decode_refusal(exc))
            return None
        if claims.get("iss") != self.issuer:  # belt and braces: PyJWT checked it when present
            _refuse("issuer")
            return None
        return _access_token(token, claims, self.audiences)


class IntrospectionVerifier:
    """Verifies opaque tokens with the provider's RFC 7662 introspection endpoint.

    Positive answers are cached per sha256(token) for min(cache_seconds, exp - now), at most `cache_size` of them.
    A provider error or timeout refuses the token (logged), never raises out of `verify_token`.
    """

    def __init__(self, *, endpoint: str, client_id: str, client_secret: str | None, http: httpx2.AsyncClient,
                 audiences: Sequence[str], issuer: str | None = None, cache_seconds: float = 30.0,
                 cache_size: int = 10_000) -> None:
        if not audiences:
            raise SignInError("token introspection needs at least one audience")
        self.endpoint = endpoint
        self.client_id = client_id
        self._client_secret = client_secret
        self._http = http
        self.audiences = tuple(dict.fromkeys(audiences))
        self.issuer = issuer
        self.verified = VerifiedTokens(cache_seconds, cache_size)
        self.requests = 0  # introspection requests made, for monitoring and tests

    def __repr__(self) -> str:
        return f"IntrospectionVerifier(endpoint={self.endpoint!r}, client_id={self.client_id!r})"

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return await self._verify(token)
        except Exception as exc:  # never let a provider problem escape as an exception
            log.info("token refused: introspection error (%s)", type(exc).__name__)
            return None

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        data = {"token": token, "token_type_hint": "access_token"}
        auth = None
        if self._client_secret is None:
            data["client_id"] = self.client_id
        else:
            import httpx2

            # RFC 6749 2.3.1: the client id and secret are form-encoded before HTTP Basic.
            auth = httpx2.BasicAuth(quote(self.client_id, safe=""), quote(self._client_secret, safe=""))
        self.requests += 1
        try:
            response = await self._http.post(self.endpoint, data=data, auth=auth,
                                             headers={"Accept": "application/json"})
        except Exception as exc:
            log.info("token refused: introspection at %s failed (%s)", self.endpoint, type(exc).__name__)
            return None
        if not 200 <= response.status_code < 300:
            log.info("token refused: introspection at %s answered HTTP %d", self.endpoint, response.status_code)
            return None
        try:
            answer = response.json()
        except (ValueError, UnicodeDecodeError):
            answer = None
        if not isinstance(answer, dict):
            log.info("token refused: introspection at %s did not answer a JSON object", self.endpoint)
            return None
        return answer

    async def _verify(self, token: str) -> AccessToken | None:
        key = _token_key(token)
        cached = self.verified.get(key)
        if cached is not None:
            return cached
        answer = await self._introspect(token)
        if answer is None:
            return None
        if answer.get("active") is not True:
            _refuse("inactive")
            return None
        if answer.get("token_type") == "refresh_token":
            _refuse("not an access token")
            return None
        now = time.time()
        exp = answer.get("exp")
        if exp is not None and (_expiry(answer) is None or exp <= now):
            _refuse("expired")
            return None
        nbf = answer.get("nbf")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and nbf > now + 30:
            _refuse("not yet valid")
            return None
        if self.issuer and "iss" in answer and answer.get("iss") != self.issuer:
            _refuse("issuer")
            return None
        if answer.get("aud") in (None, "", []):
            log.info("token refused: introspection gave no audience")
            return None
        access = _access_token(token, answer, self.audiences)
        if access is None:
            return None
        self.verified.put(key, access)
        return access


class TokenVerifier:
    """What the server uses: a token that looks like a JWS goes to the JWT verifier (when there is one), others to
    introspection (when configured); anything else, and any unexpected error, is None."""

    def __init__(self, *, jwt: JwtVerifier | None, introspection: IntrospectionVerifier | None) -> None:
        self.jwt = jwt
        self.introspection = introspection

    def __repr__(self) -> str:
        return f"TokenVerifier(jwt={self.jwt!r}, introspection={self.introspection!r})"

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
                _refuse("malformed")
                return None
            if self.jwt is not None and looks_like_jws(token):
                return await self.jwt.verify_token(token)
            if self.introspection is not None:
                return await self.introspection.verify_token(token)
            _refuse("not a JWT and no introspection endpoint")
            return None
        except Exception as exc:
            log.info("token refused: verification error (%s)", type(exc).__name__)
            return None


async def build_verifier(connection: ProviderConnection, *, resource_url: str,
                         http: httpx2.AsyncClient) -> tuple[TokenVerifier, ProviderMetadata]:
    """The verifier for `connection`'s tokens: discovery, then a JWT verifier when the provider publishes a JWKS
    (and names its issuer) and token introspection when it has an introspection endpoint and a client id.

    The accepted audiences are `resource_url` (RFC 8707) and `connection.audience`. SignInError when the provider
    offers neither way to verify a token.
    """
    metadata = await discover(connection, http)
    audiences = tuple(dict.fromkeys(a for a in (resource_url, *connection.audience) if a))
    if not audiences:
        raise SignInError("token verification needs a resource URL or an audience")
    jwt_verifier = None
    if metadata.jwks_uri:
        if metadata.issuer:
            jwt_verifier = JwtVerifier(issuer=metadata.issuer, jwks=JwksCache(metadata.jwks_uri, http),
                                       audiences=audiences)
        else:
            log.warning("sign-in: jwks_uri %s is known but the issuer is not; JWT access tokens cannot be verified",
                        metadata.jwks_uri)
    introspection = None
    if metadata.introspection_endpoint and connection.client_id:
        introspection = IntrospectionVerifier(
            endpoint=metadata.introspection_endpoint, client_id=connection.client_id,
            client_secret=connection.client_secret, http=http, audiences=audiences, issuer=metadata.issuer,
        )
    if jwt_verifier is None and introspection is None:
        where = connection.config_url or "the provider configuration"
        raise SignInError(
            f"{where}: no way to verify access tokens (needs jwks_uri with an issuer, or introspection_endpoint "
            "with client_id)"
        )
    return TokenVerifier(jwt=jwt_verifier, introspection=introspection), metadata
