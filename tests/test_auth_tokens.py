"""Token verification for the OAuth resource server (`mxcp_plugins.auth.tokens`), against a real authorization
server (Authlib, `tests/authserver`) for discovery, JWT and introspection, plus a few JWKS edge cases served by an
in-memory transport.
"""
from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from auth_fixtures import auth_server, fresh_auth_server  # noqa: F401
from mxcp_core.sign_in import ProviderConnection
from mxcp_plugins.auth.tokens import (
    IntrospectionVerifier,
    JwksCache,
    JwtVerifier,
    ProviderMetadata,
    SignInError,
    TokenVerifier,
    build_verifier,
    discover,
    scopes_of,
)

RESOURCE = "http://127.0.0.1:9/mcp"
LOGGER = "mxcp_plugins.auth.tokens"


# ------------------------------------------------------------------------------------------------ helpers


class Requests:
    """Counts the HTTP requests a client makes, by path."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def hook(self, request: httpx2.Request) -> None:
        self.paths.append(request.url.path)

    def count(self, suffix: str) -> int:
        return sum(1 for p in self.paths if p.endswith(suffix))


@asynccontextmanager
async def http_client(requests: Requests | None = None, **kwargs: Any):
    hooks = {"request": [requests.hook]} if requests is not None else None
    async with httpx2.AsyncClient(timeout=5, trust_env=False, event_hooks=hooks, **kwargs) as http:
        yield http


def run(body: Callable[[], Any]) -> Any:
    return anyio.run(body)


def connection(server, **kwargs: Any) -> ProviderConnection:
    values: dict[str, Any] = dict(client_id="mxcp-server", client_secret="mxcp-server-secret",
                                  config_url=server.config_url, issuer=server.issuer)
    values.update(kwargs)
    return ProviderConnection(**values)


def verify_with(server, token: str, *, requests: Requests | None = None, **kwargs: Any):
    """Build the verifier for `server` (discovery and all) and verify one token."""

    async def main():
        async with http_client(requests) as http:
            verifier, _ = await build_verifier(connection(server, **kwargs), resource_url=RESOURCE, http=http)
            return await verifier.verify_token(token)

    return run(main)


def jwt_verifier(server, http, *, min_refresh_interval: float = 30.0, audiences=(RESOURCE,)) -> JwtVerifier:
    cache = JwksCache(f"{server.issuer}/jwks", http, min_refresh_interval=min_refresh_interval)
    return JwtVerifier(issuer=server.issuer, jwks=cache, audiences=audiences)


def claims(server, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": server.issuer, "sub": "user-alice", "aud": RESOURCE, "exp": now + 300, "iat": now,
              "nbf": now, "client_id": "mxcp-server", "scope": "mcp:read"}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# ------------------------------------------------------------------------------------------------ discovery


@pytest.mark.parametrize("well_known", ["openid-configuration", "oauth-authorization-server"])
def test_discovery_both_well_known_forms(auth_server, well_known):  # noqa: F811
    async def main():
        async with http_client() as http:
            conn = connection(auth_server, config_url=f"{auth_server.issuer}/.well-known/{well_known}")
            return await discover(conn, http)

    metadata = run(main)
    assert isinstance(metadata, ProviderMetadata)
    assert metadata.issuer == auth_server.issuer
    assert metadata.jwks_uri == f"{auth_server.issuer}/jwks"
    assert metadata.token_endpoint == f"{auth_server.issuer}/token"
    assert metadata.authorization_endpoint == f"{auth_server.issuer}/authorize"
    assert metadata.userinfo_endpoint == f"{auth_server.issuer}/userinfo"
    assert metadata.introspection_endpoint == f"{auth_server.issuer}/introspect"
    assert metadata.revocation_endpoint == f"{auth_server.issuer}/revoke"
    assert "mcp:read" in metadata.scopes_supported


def test_discovery_explicit_endpoints_win(auth_server):  # noqa: F811
    async def main():
        async with http_client() as http:
            conn = connection(auth_server, jwks_uri="http://127.0.0.1:9/keys", token_endpoint="http://t.example/t")
            return await discover(conn, http)

    metadata = run(main)
    assert metadata.jwks_uri == "http://127.0.0.1:9/keys"
    assert metadata.token_endpoint == "http://t.example/t"
    assert metadata.introspection_endpoint == f"{auth_server.issuer}/introspect"


def test_discovery_without_config_url_uses_the_connection():
    async def main():
        async with http_client() as http:
            conn = ProviderConnection(client_id="c", issuer="http://idp.example", jwks_uri="http://idp.example/k")
            return await discover(conn, http)

    metadata = run(main)
    assert metadata.issuer == "http://idp.example"
    assert metadata.jwks_uri == "http://idp.example/k"
    assert metadata.introspection_endpoint is None


def test_discovery_errors_name_the_url_never_the_secret(auth_server):  # noqa: F811
    port = free_port()
    cases = {
        "issuer": connection(auth_server, issuer="http://someone-else.example"),
        "HTTP 404": connection(auth_server, config_url=f"{auth_server.issuer}/.well-known/nothing-here"),
        "not JSON": connection(auth_server, config_url=f"{auth_server.issuer}/login"),
        "could not be fetched": connection(auth_server, config_url=f"http://127.0.0.1:{port}/.well-known/x"),
    }

    async def main():
        messages = {}
        async with http_client() as http:
            for expected, conn in cases.items():
                with pytest.raises(SignInError) as info:
                    await discover(conn, http)
                messages[expected] = (str(info.value), conn.config_url)
        return messages

    for expected, (message, url) in run(main).items():
        assert url in message
        assert expected in message
        assert "mxcp-server-secret" not in message


def test_build_verifier_needs_a_way_to_verify():
    async def main():
        async with http_client() as http:
            conn = ProviderConnection(client_id="c", client_secret="s3cret-value", issuer="http://idp.example")
            with pytest.raises(SignInError) as info:
                await build_verifier(conn, resource_url=RESOURCE, http=http)
            return str(info.value)

    message = run(main)
    assert "s3cret-value" not in message
    assert "jwks_uri" in message and "introspection_endpoint" in message


def test_build_verifier_audiences_and_parts(auth_server):  # noqa: F811
    async def main():
        async with http_client() as http:
            conn = connection(auth_server, audience=("mxcp-server",))
            return await build_verifier(conn, resource_url=RESOURCE, http=http)

    verifier, metadata = run(main)
    assert metadata.issuer == auth_server.issuer
    assert verifier.jwt is not None and verifier.introspection is not None
    assert verifier.jwt.audiences == (RESOURCE, "mxcp-server")
    assert verifier.introspection.audiences == (RESOURCE, "mxcp-server")
    assert "mxcp-server-secret" not in repr(verifier)


# ------------------------------------------------------------------------------------------------ JWT: valid


@pytest.mark.parametrize("client, alg", [("mxcp-server", "RS256"), ("mxcp-es256", "ES256"), ("mxcp-eddsa", "EdDSA")])
def test_valid_jwt_from_a_real_flow(auth_server, client, alg):  # noqa: F811
    answer = auth_server.user_token(client_id=client, client_secret=f"{client}-secret", resource=RESOURCE)
    token = answer["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == alg
    access = verify_with(auth_server, token)
    assert access is not None
    assert access.token == token
    assert access.client_id == client
    assert access.subject == "user-alice"
    assert access.resource == RESOURCE
    assert "mcp:read" in access.scopes and "openid" in access.scopes
    assert access.expires_at == access.claims["exp"] and access.expires_at > time.time()
    assert access.claims["iss"] == auth_server.issuer
    assert access.claims["preferred_username"] == "alice"


def test_audience_with_a_trailing_slash_matches(auth_server):  # noqa: F811
    token = auth_server.user_token(username="bob", resource=RESOURCE + "/")["access_token"]
    access = verify_with(auth_server, token)
    assert access is not None and access.resource == RESOURCE and access.subject == "user-bob"


def test_default_audience_needs_a_configured_audience(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    token = auth_server.user_token()["access_token"]  # aud = mxcp-server (the client's default)
    assert verify_with(auth_server, token) is None
    assert "token refused: audience" in refusals(caplog)
    access = verify_with(auth_server, token, audience=("mxcp-server",))
    assert access is not None and access.resource == "mxcp-server"


def test_audience_list_and_azp(auth_server):  # noqa: F811
    token = auth_server.mint(claims(auth_server, aud=["other", RESOURCE], client_id=None, azp="the-azp"))
    access = verify_with(auth_server, token)
    assert access is not None and access.resource == RESOURCE and access.client_id == "the-azp"
    token = auth_server.mint(claims(auth_server, client_id=None))
    assert verify_with(auth_server, token).client_id == "unknown"


# ------------------------------------------------------------------------------------------------ JWT: refused


def refused_cases(server) -> dict[str, tuple[str, str]]:
    """name -> (token, the logged reason)."""
    now = int(time.time())
    return {
        "expired": (server.mint(claims(server, exp=now - 120, iat=now - 400, nbf=now - 400)), "expired"),
        "nbf in the future": (server.mint(claims(server, nbf=now + 300)), "not yet valid"),
        "iat in the future": (server.mint(claims(server, iat=now + 300)), "not yet valid"),
        "wrong audience": (server.mint(claims(server, aud="http://127.0.0.1:9/other")), "audience"),
        "audience prefix": (server.mint(claims(server, aud="http://127.0.0.1:9/mcp/x")), "audience"),
        "no audience": (server.mint(claims(server, aud=None)), "audience"),
        "wrong issuer": (server.mint(claims(server, iss="http://evil.example")), "issuer"),
        "issuer with a slash": (server.mint(claims(server, iss=server.issuer + "/")), "issuer"),
        "no issuer": (server.mint(claims(server, iss=None)), "missing iss"),
        "no exp": (server.mint(claims(server, exp=None)), "missing exp"),
        "foreign key": (server.mint_with_foreign_key(claims(server)), None),
        "alg none": (server.unsigned(claims(server)), "algorithm"),
        "HS256 with the public key": (server.hs256_with_public_key(claims(server)), "algorithm"),
    }


def test_refused_jwts(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    cases = refused_cases(auth_server)
    good = auth_server.mint(claims(auth_server))

    async def main():
        async with http_client() as http:
            verifier = TokenVerifier(jwt=jwt_verifier(auth_server, http), introspection=None)
            assert await verifier.verify_token(good) is not None
            results = {}
            for name, (token, _) in cases.items():
                caplog.clear()
                results[name] = (await verifier.verify_token(token), refusals(caplog))
            return results

    for name, (result, logged) in run(main).items():
        assert result is None, name
        reason = cases[name][1]
        if reason is not None:
            assert f"token refused: {reason}" in logged, (name, logged)
        else:  # a foreign key: an unknown kid or a bad signature, depending on the kid it names
            assert logged and logged[-1] in ("token refused: signature", "token refused: unknown key"), logged


def test_foreign_key_with_a_known_kid_is_a_bad_signature(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(auth_server), foreign, algorithm="RS256", headers={"kid": "rsa-1"})
    assert verify_with(auth_server, token) is None
    assert "token refused: signature" in refusals(caplog)


def test_scopes_from_scp(auth_server):  # noqa: F811
    token = auth_server.mint(claims(auth_server, scope=None, scp=["mcp:read", "mcp:write"]))
    assert verify_with(auth_server, token).scopes == ["mcp:read", "mcp:write"]
    token = auth_server.mint(claims(auth_server, scope=None, scp="mcp:read mcp:write"))
    assert verify_with(auth_server, token).scopes == ["mcp:read", "mcp:write"]
    token = auth_server.mint(claims(auth_server, scope=None))
    assert verify_with(auth_server, token).scopes == []


def test_scopes_of():
    assert scopes_of({"scope": "a b  c"}) == ("a", "b", "c")
    assert scopes_of({"scp": ["a", "b"]}) == ("a", "b")
    assert scopes_of({"scp": "a b"}) == ("a", "b")
    assert scopes_of({"scope": "a a b"}) == ("a", "b")
    assert scopes_of({"scope": "a", "scp": ["b"]}) == ("a",)
    assert scopes_of({}) == ()
    assert scopes_of({"scope": 7}) == ()


# ------------------------------------------------------------------------------------------------ JWKS refresh


def test_unknown_kid_after_rotation_refreshes(fresh_auth_server):  # noqa: F811
    server = fresh_auth_server  # rotating keys: a private server, never the shared one
    requests = Requests()
    before = server.user_token(resource=RESOURCE)["access_token"]

    async def main():
        async with http_client(requests) as http:
            verifier = jwt_verifier(server, http, min_refresh_interval=0.2)
            assert await verifier.verify_token(before) is not None
            assert requests.count("/jwks") == 1
            server.rotate()
            after = server.user_token(resource=RESOURCE)["access_token"]
            new_kid = jwt.get_unverified_header(after)["kid"]
            assert new_kid != jwt.get_unverified_header(before)["kid"]
            await anyio.sleep(0.25)
            access = await verifier.verify_token(after)
            assert access is not None and access.subject == "user-alice"
            assert requests.count("/jwks") == 2
            assert await verifier.verify_token(before) is not None  # the old key is still published
            assert requests.count("/jwks") == 2

    run(main)


def test_unknown_kid_within_the_interval_does_not_refresh(fresh_auth_server):  # noqa: F811
    server = fresh_auth_server  # rotating keys: a private server, never the shared one
    requests = Requests()
    before = server.mint(claims(server))

    async def main():
        async with http_client(requests) as http:
            verifier = jwt_verifier(server, http, min_refresh_interval=60)
            assert await verifier.verify_token(before) is not None
            server.rotate()
            after = server.user_token(resource=RESOURCE)["access_token"]
            assert await verifier.verify_token(after) is None  # refused until the interval has passed
            assert requests.count("/jwks") == 1

    run(main)


def test_flood_of_unknown_kids_refreshes_at_most_once_per_interval(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    requests = Requests()
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = [jwt.encode(claims(auth_server), attacker, algorithm="RS256", headers={"kid": f"made-up-{i}"})
              for i in range(40)]
    good = auth_server.mint(claims(auth_server))

    async def main():
        async with http_client(requests) as http:
            verifier = TokenVerifier(jwt=jwt_verifier(auth_server, http, min_refresh_interval=0.5), introspection=None)
            assert await verifier.verify_token(good) is not None
            assert requests.count("/jwks") == 1
            # within the interval: no refresh at all, however many (concurrent) made-up kids arrive
            results = []

            async def check(token):
                results.append(await verifier.verify_token(token))

            async with anyio.create_task_group() as group:
                for token in forged[:20]:
                    group.start_soon(check, token)
            assert requests.count("/jwks") == 1
            await anyio.sleep(0.6)
            # after the interval: one refresh, shared by the concurrent callers
            async with anyio.create_task_group() as group:
                for token in forged[20:]:
                    group.start_soon(check, token)
            for token in forged:
                results.append(await verifier.verify_token(token))
            assert requests.count("/jwks") == 2
            assert results and all(r is None for r in results)
            assert await verifier.verify_token(good) is not None

    run(main)
    assert "token refused: unknown key" in refusals(caplog)


# ------------------------------------------------------------------------------------------------ JWKS edge cases


def jwk(alg_obj, key, kid: str | None, **extra: Any) -> dict[str, Any]:
    data = json.loads(alg_obj.to_jwk(key.public_key()))
    if kid is not None:
        data["kid"] = kid
    data.update(extra)
    return data


@asynccontextmanager
async def local_jwks(keys: list[dict[str, Any]], requests: Requests):
    """A JWKS served by an in-memory transport (edge cases the real server does not publish)."""
    state = {"fail": False}

    def handler(request: httpx2.Request) -> httpx2.Response:
        if state["fail"]:
            return httpx2.Response(503, text="down")
        return httpx2.Response(200, json={"keys": keys})

    async with http_client(requests, transport=httpx2.MockTransport(handler)) as http:
        yield http, state


def test_jwks_edge_cases(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    issuer = "http://idp.example"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs_only = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    ed4 = ed448.Ed448PrivateKey.generate()
    keys = [
        jwk(RSAAlgorithm(RSAAlgorithm.SHA256), rsa_key, None),  # no kid, no alg: any RSA algorithm
        jwk(RSAAlgorithm(RSAAlgorithm.SHA256), rs_only, "rs-only", alg="RS256"),  # only RS256
        jwk(ECAlgorithm(ECAlgorithm.SHA384), p384, "p384"),
        jwk(OKPAlgorithm(), ed, "ed", use="sig"),
        jwk(OKPAlgorithm(), ed4, "ed448"),
        jwk(RSAAlgorithm(RSAAlgorithm.SHA256), rsa_key, "enc-key", use="enc"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
    ]
    now = int(time.time())
    base = {"iss": issuer, "aud": RESOURCE, "exp": now + 60, "sub": "s"}
    requests = Requests()

    def sign(key, alg, kid=None):
        return jwt.encode(base, key, algorithm=alg, headers={"kid": kid} if kid else None)

    async def main():
        async with local_jwks(keys, requests) as (http, state):
            cache = JwksCache("http://idp.example/jwks", http, min_refresh_interval=0)
            verifier = JwtVerifier(issuer=issuer, jwks=cache, audiences=[RESOURCE])
            ok = [
                sign(rsa_key, "PS256"), sign(rsa_key, "RS512"),  # no kid: the only key usable for these
                sign(rs_only, "RS256", "rs-only"),
                sign(p384, "ES384", "p384"), sign(ed, "EdDSA", "ed"), sign(ed4, "EdDSA", "ed448"),
            ]
            for token in ok:
                assert await verifier.verify_token(token) is not None, jwt.get_unverified_header(token)
            bad = [
                sign(ec.generate_private_key(ec.SECP256R1()), "ES256", "p384"),  # the key's curve says ES384
                sign(rs_only, "PS256", "rs-only"),  # the key says RS256
                sign(rs_only, "RS512", "rs-only"),
                sign(p384, "ES384", "rs-only"),  # an EC algorithm naming an RSA key
                sign(rsa_key, "RS256"),  # no kid and two keys usable for RS256: ambiguous
                sign(ed, "EdDSA"),  # no kid and two EdDSA keys: ambiguous
                sign(rsa_key, "RS256", "enc-key"),  # an encryption key
                jwt.encode(base, "a-shared-secret-of-at-least-32-bytes", algorithm="HS256", headers={"kid": "hmac"}),  # symmetric
            ]
            for token in bad:
                assert await verifier.verify_token(token) is None, jwt.get_unverified_header(token)
            # a failed refresh keeps the old keys
            fetched = requests.count("/jwks")
            state["fail"] = True
            assert await verifier.verify_token(sign(ed, "EdDSA", "unknown")) is None
            assert requests.count("/jwks") == fetched + 1
            assert await verifier.verify_token(ok[3]) is not None

    run(main)
    assert any("jwks fetch failed" in m and "HTTP 503" in m for m in refusals(caplog))


def test_concurrent_callers_share_one_fetch():
    """Even without a refresh interval, callers waiting for a fetch in progress use it instead of fetching again."""
    key = ed25519.Ed25519PrivateKey.generate()
    keys = [jwk(OKPAlgorithm(), key, "ed")]
    fetches = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        fetches.append(request.url.path)
        await anyio.sleep(0.05)
        return httpx2.Response(200, json={"keys": keys})

    async def main():
        async with http_client(transport=httpx2.MockTransport(handler)) as http:
            cache = JwksCache("http://idp.example/jwks", http, min_refresh_interval=0)
            found: list = []

            async def lookup(kid):
                found.append(await cache.key(kid, "EdDSA"))

            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(lookup, "ed")
            assert len(fetches) == 1 and all(k is not None for k in found)
            found.clear()
            async with anyio.create_task_group() as group:
                for i in range(20):
                    group.start_soon(lookup, f"unknown-{i}")
            assert len(fetches) == 2 and found == [None] * 20

    run(main)


# ------------------------------------------------------------------------------------------------ introspection


def opaque_token(server, **kwargs: Any) -> str:
    values = dict(client_id="mxcp-opaque", client_secret="mxcp-opaque-secret", resource=RESOURCE)
    values.update(kwargs)
    token = server.user_token(**values)["access_token"]
    assert token.count(".") != 2  # really opaque
    return token


def opaque_connection(server, **kwargs: Any) -> ProviderConnection:
    return connection(server, client_id="mxcp-opaque", client_secret="mxcp-opaque-secret", **kwargs)


def test_opaque_token_active(auth_server):  # noqa: F811
    token = opaque_token(auth_server)
    requests = Requests()
    access = verify_with(auth_server, token, requests=requests, client_id="mxcp-opaque",
                         client_secret="mxcp-opaque-secret")
    assert access is not None
    assert access.token == token
    assert access.client_id == "mxcp-opaque"
    assert access.subject == "user-alice"
    assert access.resource == RESOURCE
    assert "mcp:read" in access.scopes
    assert access.expires_at and access.expires_at > time.time()
    assert access.claims["active"] is True and access.claims["preferred_username"] == "alice"
    assert requests.count("/introspect") == 1 and requests.count("/jwks") == 0  # not a JWT: straight to introspection


def test_opaque_token_inactive_and_wrong_audience(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert verify_with(auth_server, "no-such-token-at-all", client_id="mxcp-opaque",
                       client_secret="mxcp-opaque-secret") is None
    assert "token refused: inactive" in refusals(caplog)
    caplog.clear()
    token = opaque_token(auth_server, resource=None)  # aud = mxcp-server
    assert verify_with(auth_server, token, client_id="mxcp-opaque", client_secret="mxcp-opaque-secret") is None
    assert "token refused: audience" in refusals(caplog)


def test_opaque_token_with_bad_client_credentials_is_refused(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger=LOGGER)
    token = opaque_token(auth_server)
    assert verify_with(auth_server, token, client_id="mxcp-opaque", client_secret="wrong-secret") is None
    assert any("introspection" in m and "HTTP 401" in m for m in refusals(caplog))
    assert not any("wrong-secret" in m for m in refusals(caplog))


def test_revoked_opaque_token_and_caching(auth_server):  # noqa: F811
    token = opaque_token(auth_server)
    requests = Requests()

    async def main():
        async with http_client(requests) as http:
            _, metadata = await build_verifier(opaque_connection(auth_server), resource_url=RESOURCE, http=http)

            def introspection(cache_seconds: float) -> IntrospectionVerifier:
                return IntrospectionVerifier(endpoint=metadata.introspection_endpoint, client_id="mxcp-opaque",
                                             client_secret="mxcp-opaque-secret", http=http, audiences=[RESOURCE],
                                             issuer=auth_server.issuer, cache_seconds=cache_seconds)

            cached, uncached = introspection(30), introspection(0)
            for _ in range(3):
                assert await cached.verify_token(token) is not None
                assert await uncached.verify_token(token) is not None
            assert cached.requests == 1 and uncached.requests == 3
            assert requests.count("/introspect") == 4

            response = await http.post(metadata.revocation_endpoint, data={"token": token},
                                       auth=httpx2.BasicAuth("mxcp-opaque", "mxcp-opaque-secret"))
            assert response.status_code == 200
            assert await uncached.verify_token(token) is None  # revoked
            # a fresh verifier asks again and is refused; the cache keeps an accepted token for cache_seconds
            fresh = introspection(30)
            assert await fresh.verify_token(token) is None
            assert await cached.verify_token(token) is not None
            assert requests.count("/introspect") == 6

    run(main)


def test_introspection_cache_is_bounded(auth_server):  # noqa: F811
    tokens = [opaque_token(auth_server) for _ in range(3)]

    async def main():
        async with http_client() as http:
            verifier = IntrospectionVerifier(endpoint=f"{auth_server.issuer}/introspect", client_id="mxcp-opaque",
                                             client_secret="mxcp-opaque-secret", http=http, audiences=[RESOURCE],
                                             cache_size=2)
            for token in tokens:
                assert await verifier.verify_token(token) is not None
            assert len(verifier.verified) == 2
            assert await verifier.verify_token(tokens[0]) is not None  # evicted: asked again
            assert verifier.requests == 4
            assert await verifier.verify_token(tokens[2]) is not None  # still cached
            assert verifier.requests == 4

    run(main)


def test_introspection_answers_checked(caplog):
    """Answers a real server would rarely give: no audience (fail closed), another issuer, expired, inactive."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    now = int(time.time())
    answers = {
        "no-aud": {"active": True, "sub": "s", "exp": now + 60},
        "other-iss": {"active": True, "aud": RESOURCE, "iss": "http://evil.example", "exp": now + 60},
        "expired": {"active": True, "aud": RESOURCE, "exp": now - 5},
        "active-string": {"active": "true", "aud": RESOURCE},
        "refresh": {"active": True, "aud": RESOURCE, "token_type": "refresh_token"},
        "scp": {"active": True, "aud": [RESOURCE + "/"], "scp": ["x", "y"], "exp": now + 60, "iss": "http://idp"},
        "not-json": None,
    }
    seen: list[tuple[str, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        form = dict(pair.split("=", 1) for pair in request.content.decode().split("&"))
        seen.append((request.headers.get("authorization", ""), form.get("token_type_hint", "")))
        answer = answers[form["token"]]
        return httpx2.Response(200, text="<html>") if answer is None else httpx2.Response(200, json=answer)

    async def main():
        async with http_client(transport=httpx2.MockTransport(handler)) as http:
            verifier = IntrospectionVerifier(endpoint="http://idp/introspect", client_id="rs", client_secret="pw",
                                             http=http, audiences=[RESOURCE], issuer="http://idp")
            return {name: await verifier.verify_token(name) for name in answers}

    results = run(main)
    assert results["scp"] is not None and results["scp"].scopes == ["x", "y"] and results["scp"].resource == RESOURCE
    assert results["scp"].client_id == "unknown"
    assert all(results[name] is None for name in answers if name != "scp")
    logged = refusals(caplog)
    assert "token refused: introspection gave no audience" in logged
    assert "token refused: issuer" in logged and "token refused: expired" in logged
    assert "token refused: inactive" in logged and "token refused: not an access token" in logged
    assert all(auth.startswith("Basic ") and hint == "access_token" for auth, hint in seen)


# ------------------------------------------------------------------------------------------------ failures


def test_unreachable_provider_refuses_without_raising(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    base = f"http://127.0.0.1:{free_port()}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwt_token = jwt.encode({"iss": base, "aud": RESOURCE, "exp": int(time.time()) + 60}, key, algorithm="RS256",
                           headers={"kid": "k"})

    async def main():
        async with http_client() as http:
            verifier = TokenVerifier(
                jwt=JwtVerifier(issuer=base, jwks=JwksCache(f"{base}/jwks", http), audiences=[RESOURCE]),
                introspection=IntrospectionVerifier(endpoint=f"{base}/introspect", client_id="c", client_secret="s",
                                                    http=http, audiences=[RESOURCE]),
            )
            return await verifier.verify_token(jwt_token), await verifier.verify_token("opaque-token-value")

    assert run(main) == (None, None)
    logged = refusals(caplog)
    assert any("jwks fetch failed" in m for m in logged)
    assert any("introspection" in m and "ConnectError" in m for m in logged)


def test_unexpected_errors_are_refusals(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)

    class Broken:
        async def verify_token(self, token):
            raise RuntimeError(f"boom {token}")

    verifier = TokenVerifier(jwt=Broken(), introspection=Broken())  # type: ignore[arg-type]
    jws_looking = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    assert run(lambda: verifier.verify_token(jws_looking)) is None
    assert run(lambda: verifier.verify_token("opaque")) is None
    assert run(lambda: TokenVerifier(jwt=None, introspection=None).verify_token("opaque")) is None
    logged = refusals(caplog)
    assert "token refused: verification error (RuntimeError)" in logged
    assert not any("boom" in m or jws_looking in m for m in logged)


def test_no_log_record_contains_a_token(auth_server, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    tokens = [
        auth_server.user_token(resource=RESOURCE)["access_token"],
        opaque_token(auth_server),
        "no-such-opaque-token-0123456789",
        *(token for token, _ in refused_cases(auth_server).values()),
    ]

    async def main():
        async with http_client() as http:
            verifier, _ = await build_verifier(opaque_connection(auth_server), resource_url=RESOURCE, http=http)
            return [await verifier.verify_token(token) for token in tokens]

    results = run(main)
    assert results[0] is not None and results[1] is not None and not any(results[2:])
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + str(record.exc_text or "")
        for token in tokens:
            assert token not in text
            for part in token.split("."):  # no JWT segment either (the signature, the payload)
                if len(part) > 20:
                    assert part not in text


def test_a_verified_jwt_is_remembered_until_its_cache_time_or_expiry(auth_server):  # noqa: F811
    """Clients send the same token with every request: its signature is checked once per cache period."""
    token = auth_server.mint(claims(auth_server))
    soon = auth_server.mint(claims(auth_server, exp=int(time.time()) + 1))

    async def main():
        async with http_client(Requests()) as http:
            verifier = jwt_verifier(auth_server, http)
            checks = []
            real = verifier._verify

            async def counted(value):
                checks.append(value)
                return await real(value)

            verifier._verify = counted
            for _ in range(50):
                assert (await verifier.verify_token(token)).subject == "user-alice"
            assert len(checks) == 1
            assert await verifier.verify_token("x" + token) is None  # another string: checked (and refused)
            assert await verifier.verify_token(soon) is not None
            await anyio.sleep(1.2)
            await verifier.verify_token(soon)  # past its exp: the remembered answer is dropped, checked again
            assert checks.count(soon) == 2
            short = JwtVerifier(issuer=auth_server.issuer, jwks=verifier.jwks, audiences=(RESOURCE,),
                                cache_seconds=0)
            await short.verify_token(token)
            assert len(short.verified) == 0  # caching off

    run(main)
