"""The test authorization server (tests/authserver) behaves like a real OAuth 2.1 / OIDC authorization server."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx2
import jwt
import pytest
from auth_fixtures import (
    SUBJECTS,
    AuthServer,
    auth_server,
    fresh_auth_server,
    pkce_pair,
)

__all__ = ["auth_server", "fresh_auth_server"]  # the imported fixtures (keeps ruff from calling them unused)

SENSITIVE_JWK_FIELDS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def verify(server: AuthServer, token: str, *, audience: str | list[str] = "mxcp-server", alg: str = "RS256") -> dict:
    """Verify a JWT like a resource server would: key by kid from the published JWKS, pinned alg, aud, iss."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    key = jwt.PyJWKSet.from_dict(server.jwks())[header["kid"]]
    return jwt.decode(token, key.key, algorithms=[alg], audience=audience, issuer=server.issuer)


def b64json(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_discovery_documents(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    oidc = auth_server.discovery()
    with httpx2.Client(timeout=10) as http:
        oauth = http.get(auth_server.metadata_url).json()
    assert oidc == oauth
    base = auth_server.issuer
    assert base.startswith("http://127.0.0.1:") and not base.endswith("/")
    assert oidc["issuer"] == base
    assert oidc["authorization_endpoint"] == f"{base}/authorize"
    assert oidc["token_endpoint"] == f"{base}/token"
    assert oidc["jwks_uri"] == f"{base}/jwks"
    assert oidc["userinfo_endpoint"] == f"{base}/userinfo"
    assert oidc["introspection_endpoint"] == f"{base}/introspect"
    assert oidc["revocation_endpoint"] == f"{base}/revoke"
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert set(oidc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"openid", "profile", "email", "offline_access", "mcp:read", "mcp:write"} <= set(oidc["scopes_supported"])
    assert oidc["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post", "none"]
    assert "RS256" in oidc["id_token_signing_alg_values_supported"]

    # and the documents pass Authlib's own RFC 8414 / OIDC Discovery validation (http allowed on loopback)
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
    from authlib.oidc.discovery import OpenIDProviderMetadata

    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    OpenIDProviderMetadata(oidc).validate()
    AuthorizationServerMetadata(oauth).validate()


def test_jwks_publishes_three_public_keys(auth_server: AuthServer) -> None:
    jwks = auth_server.jwks()
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    assert set(by_kid) >= {"rsa-1", "ec-1", "ed-1"}
    assert (by_kid["rsa-1"]["kty"], by_kid["rsa-1"]["alg"]) == ("RSA", "RS256")
    assert (by_kid["ec-1"]["kty"], by_kid["ec-1"]["crv"], by_kid["ec-1"]["alg"]) == ("EC", "P-256", "ES256")
    assert (by_kid["ed-1"]["kty"], by_kid["ed-1"]["crv"], by_kid["ed-1"]["alg"]) == ("OKP", "Ed25519", "EdDSA")
    for key in jwks["keys"]:
        assert not SENSITIVE_JWK_FIELDS & set(key), key
    # the private halves are in keys.json for the tests
    private = {k["kid"]: k for k in auth_server.keys["keys"]}
    assert "d" in private["rsa-1"] and "d" in private["ec-1"] and "d" in private["ed-1"]


def test_user_token_for_alice_is_an_rfc9068_jwt(auth_server: AuthServer) -> None:
    tokens = auth_server.user_token("alice", nonce="n-123")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 300
    assert tokens["scope"] == "openid profile email mcp:read"
    assert tokens["refresh_token"]
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}

    claims = verify(auth_server, tokens["access_token"])
    assert claims["iss"] == auth_server.issuer
    assert claims["sub"] == "user-alice"
    assert claims["aud"] == "mxcp-server"
    assert claims["client_id"] == "mxcp-server"
    assert claims["scope"] == "openid profile email mcp:read"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] <= time.time() + 1
    assert claims["jti"]
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.com"
    assert claims["name"] == "Alice Example"
    assert claims["realm_access"] == {"roles": ["admin", "analyst"]}
    assert claims["groups"] == ["eng"]

    id_token = jwt.decode(
        tokens["id_token"], jwt.PyJWKSet.from_dict(auth_server.jwks())[jwt.get_unverified_header(tokens["id_token"])
                                                                        ["kid"]].key,
        algorithms=["RS256"], audience="mxcp-server", issuer=auth_server.issuer,
    )
    assert id_token["sub"] == "user-alice"
    assert id_token["nonce"] == "n-123"
    assert id_token["email"] == "alice@example.com"
    assert id_token["at_hash"]


def test_bob_and_userinfo(auth_server: AuthServer) -> None:
    tokens = auth_server.user_token("bob")
    claims = verify(auth_server, tokens["access_token"])
    assert (claims["sub"], claims["realm_access"], claims["groups"]) == ("user-bob", {"roles": ["analyst"]}, ["sales"])
    info = auth_server.userinfo(tokens["access_token"])
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": "user-bob", "preferred_username": "bob", "name": "Bob Example", "email": "bob@example.com",
        "email_verified": True, "realm_access": {"roles": ["analyst"]}, "groups": ["sales"],
    }
    assert auth_server.userinfo("not-a-token").status_code == 401


@pytest.mark.parametrize(("client_id", "alg", "kid"), [("mxcp-es256", "ES256", "ec-1"), ("mxcp-eddsa", "EdDSA", "ed-1")])
def test_es256_and_eddsa_clients(auth_server: AuthServer, client_id: str, alg: str, kid: str) -> None:
    tokens = auth_server.user_token("alice", client_id=client_id)
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] == kid
    claims = verify(auth_server, tokens["access_token"], alg=alg)
    assert (claims["client_id"], claims["sub"], claims["aud"]) == (client_id, "user-alice", "mxcp-server")


def test_resource_indicators_set_the_audience(auth_server: AuthServer) -> None:
    from_authorize = auth_server.user_token(resource="http://127.0.0.1:9999/mcp")
    assert verify(auth_server, from_authorize["access_token"], audience="http://127.0.0.1:9999/mcp")["aud"] == (
        "http://127.0.0.1:9999/mcp"
    )
    token_wins = auth_server.user_token(resource="http://127.0.0.1:9999/mcp", token_resource="https://api.example/")
    assert jwt.decode(token_wins["access_token"], options={"verify_signature": False})["aud"] == "https://api.example/"
    # a refresh keeps the audience
    refreshed = auth_server.refresh(from_authorize["refresh_token"]).json()
    assert jwt.decode(refreshed["access_token"], options={"verify_signature": False})["aud"] == (
        "http://127.0.0.1:9999/mcp"
    )
    # RFC 8707: a resource must be an absolute URI
    bad = auth_server.client_credentials(resource="not a uri")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_target")


def test_opaque_tokens_and_introspection(auth_server: AuthServer) -> None:
    tokens = auth_server.user_token("alice", client_id="mxcp-opaque")
    access = tokens["access_token"]
    assert access.count(".") == 0
    for client_id in ("mxcp-opaque", "mxcp-server"):  # any confidential client may introspect
        info = auth_server.introspect(access, client_id=client_id)
        assert info["active"] is True
        assert info["client_id"] == "mxcp-opaque"
        assert (info["sub"], info["username"], info["aud"], info["iss"]) == (
            "user-alice", "alice", "mxcp-server", auth_server.issuer)
        assert info["scope"] == "openid profile email mcp:read"
        assert info["token_type"] == "Bearer"
        assert info["exp"] - info["iat"] == 300
        assert info["realm_access"] == {"roles": ["admin", "analyst"]} and info["groups"] == ["eng"]
        assert info["email"] == "alice@example.com" and info["name"] == "Alice Example"
    # JWT access tokens are known too, and post authentication works
    jwt_info = auth_server.introspect(auth_server.user_token("bob")["access_token"], client_id="mxcp-server")
    assert jwt_info["active"] is True and jwt_info["sub"] == "user-bob"
    refresh_info = auth_server.introspect(tokens["refresh_token"], hint="refresh_token")
    assert refresh_info["active"] is True and refresh_info["token_type"] == "refresh_token"
    assert auth_server.introspect("no-such-token") == {"active": False}
    # a minted token (valid signature, never issued) is unknown to the AS
    assert auth_server.introspect(auth_server.mint(auth_server.claims())) == {"active": False}
    # client authentication is required
    with httpx2.Client(timeout=10) as http:
        anonymous = http.post(f"{auth_server.issuer}/introspect", data={"token": access})
        wrong = http.post(f"{auth_server.issuer}/introspect", data={"token": access}, auth=("mxcp-server", "nope"))
        post = http.post(
            f"{auth_server.issuer}/introspect",
            data={"token": access, "client_id": "mxcp-server", "client_secret": "mxcp-server-secret"},
        )
    assert anonymous.status_code in (400, 401) and anonymous.json()["error"] == "invalid_client"
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert post.json()["active"] is True


def test_short_lived_client_tokens_expire(auth_server: AuthServer) -> None:
    tokens = auth_server.user_token(client_id="mxcp-short")
    claims = verify(auth_server, tokens["access_token"])
    assert claims["exp"] - claims["iat"] == 5 and tokens["expires_in"] == 5


def test_refresh_rotates(auth_server: AuthServer) -> None:
    first = auth_server.user_token("alice")
    second = auth_server.refresh(first["refresh_token"])
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["refresh_token"] and body["refresh_token"] != first["refresh_token"]
    assert body["access_token"] != first["access_token"]
    assert verify(auth_server, body["access_token"])["sub"] == "user-alice"
    replay = auth_server.refresh(first["refresh_token"])
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    # the new one works once more, and the scope may be narrowed, not widened
    narrowed = auth_server.refresh(body["refresh_token"], scope="mcp:read")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "mcp:read"
    widened = auth_server.refresh(narrowed.json()["refresh_token"], scope="mcp:read mcp:write")
    assert widened.json()["error"] == "invalid_scope"
    # a refresh token belongs to its client
    other = auth_server.refresh(narrowed.json()["refresh_token"], client_id="mxcp-es256")
    assert other.json()["error"] == "invalid_grant"


def test_replayed_code_is_refused_and_revokes(auth_server: AuthServer) -> None:
    result = auth_server.authorize("alice")
    ok = auth_server.exchange(result.code, code_verifier=result.code_verifier)
    assert ok.status_code == 200
    replay = auth_server.exchange(result.code, code_verifier=result.code_verifier)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    assert auth_server.introspect(ok.json()["access_token"]) == {"active": False}


def test_code_bindings(auth_server: AuthServer) -> None:
    wrong_verifier = auth_server.authorize("alice")
    response = auth_server.exchange(wrong_verifier.code, code_verifier=pkce_pair()[0])
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    no_verifier = auth_server.authorize("alice")
    assert auth_server.exchange(no_verifier.code, code_verifier=None).json()["error"] == "invalid_request"
    other_client = auth_server.authorize("alice")
    stolen = auth_server.exchange(other_client.code, code_verifier=other_client.code_verifier, client_id="mxcp-es256")
    assert stolen.json()["error"] == "invalid_grant"
    other_redirect = auth_server.authorize("alice")
    moved = auth_server.exchange(
        other_redirect.code, code_verifier=other_redirect.code_verifier, redirect_uri="http://127.0.0.1:1/elsewhere"
    )
    assert moved.json()["error"] == "invalid_grant"
    bad_secret = auth_server.authorize("alice")
    refused = auth_server.exchange(bad_secret.code, code_verifier=bad_secret.code_verifier, client_secret="wrong")
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


def test_pkce_is_required_and_s256_only(auth_server: AuthServer) -> None:
    plain = auth_server.authorize("alice", code_challenge_method="plain")
    assert plain.code is None and plain.error == "invalid_request"
    assert plain.location.startswith("http://127.0.0.1:8976/oauth/callback?")  # errors go back to the client
    missing = auth_server.authorize("alice", code_challenge_method=None)
    assert missing.code is None and missing.error == "invalid_request"


def test_redirect_uri_must_be_loopback(auth_server: AuthServer) -> None:
    for uri in ("https://evil.example/cb", "http://evil.example:8976/cb", "http://127.0.0.1:8976/cb#frag"):
        result = auth_server.authorize("alice", redirect_uri=uri)
        assert result.location is None  # never redirected to an unregistered URI
        assert result.response.status_code == 400 and result.error == "invalid_request"
    for uri in ("http://localhost:41234/callback", "http://127.0.0.1:5/x/y?z=1"):
        assert auth_server.authorize("alice", redirect_uri=uri).code


def test_login_is_cookie_based(auth_server: AuthServer) -> None:
    _verifier, challenge = pkce_pair()
    query = (f"response_type=code&client_id=mxcp-server&redirect_uri=http://127.0.0.1:8976/cb&scope=openid"
             f"&state=s1&code_challenge={challenge}&code_challenge_method=S256")
    with auth_server.http() as http:
        first = http.get(f"{auth_server.authorize_url}?{query}")
        assert first.status_code == 302 and first.headers["location"].startswith("/login?next=")
        assert http.get(f"{auth_server.issuer}{first.headers['location']}").status_code == 200
        assert auth_server.login(http, "alice", "wrong").status_code == 401
        assert auth_server.login(http, "alice").status_code == 302
        second = http.get(f"{auth_server.authorize_url}?{query}")
        assert second.status_code == 302
        location = second.headers["location"]
        assert location.startswith("http://127.0.0.1:8976/cb?code=") and "state=s1" in location


def test_public_client_and_client_credentials(auth_server: AuthServer) -> None:
    public = auth_server.user_token("bob", client_id="test-public")
    assert verify(auth_server, public["access_token"])["client_id"] == "test-public"
    assert public["refresh_token"]
    assert auth_server.refresh(public["refresh_token"], client_id="test-public").status_code == 200
    refused = auth_server.client_credentials(client_id="test-public")
    assert refused.json()["error"] in ("invalid_client", "unauthorized_client")

    machine = auth_server.client_credentials(scope="mcp:read mcp:write", resource="http://127.0.0.1:9999/mcp")
    assert machine.status_code == 200, machine.text
    body = machine.json()
    assert "refresh_token" not in body
    claims = verify(auth_server, body["access_token"], audience="http://127.0.0.1:9999/mcp")
    assert (claims["sub"], claims["client_id"], claims["scope"]) == ("mxcp-server", "mxcp-server", "mcp:read mcp:write")
    assert "preferred_username" not in claims


def test_revocation(auth_server: AuthServer) -> None:
    tokens = auth_server.user_token("alice", client_id="mxcp-opaque")
    assert auth_server.revoke(tokens["access_token"], client_id="mxcp-opaque").status_code == 200
    assert auth_server.introspect(tokens["access_token"]) == {"active": False}
    assert auth_server.userinfo(tokens["access_token"]).status_code == 401
    # the refresh token survives an access token revocation, but not its own
    assert auth_server.introspect(tokens["refresh_token"])["active"] is True
    assert auth_server.revoke(tokens["refresh_token"], client_id="mxcp-opaque", hint="refresh_token").status_code == 200
    assert auth_server.refresh(tokens["refresh_token"], client_id="mxcp-opaque").json()["error"] == "invalid_grant"
    # JWT access tokens can be revoked too (introspection says so; the signature stays valid, of course)
    jwt_tokens = auth_server.user_token("bob")
    assert auth_server.revoke(jwt_tokens["access_token"]).status_code == 200
    assert auth_server.introspect(jwt_tokens["access_token"]) == {"active": False}
    # unknown tokens: 200 per RFC 7009
    assert auth_server.revoke("no-such-token").status_code == 200


def test_special_tokens(auth_server: AuthServer) -> None:
    claims = auth_server.claims("alice", expires_in=-60)
    expired = auth_server.mint(claims)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(auth_server, expired)
    assert verify(auth_server, auth_server.mint(auth_server.claims("bob")))["sub"] == "user-bob"
    assert verify(auth_server, auth_server.mint(auth_server.claims(), kid="ed-1"), alg="EdDSA")["sub"] == "user-alice"
    with pytest.raises(jwt.InvalidAudienceError):
        verify(auth_server, auth_server.mint(auth_server.claims(aud="someone-else")))
    with pytest.raises(jwt.InvalidSignatureError):
        verify(auth_server, auth_server.mint_with_foreign_key(auth_server.claims()))
    assert jwt.get_unverified_header(auth_server.mint(auth_server.claims(), headers={"typ": None})) == {
        "alg": "RS256", "kid": "rsa-1"}

    unsigned = auth_server.unsigned(auth_server.claims())
    head, body, signature = unsigned.split(".")
    assert b64json(head)["alg"] == "none" and signature == "" and b64json(body)["sub"] == "user-alice"

    confused = auth_server.hs256_with_public_key(auth_server.claims())
    head, body, signature = confused.split(".")
    assert b64json(head) == {"alg": "HS256", "kid": "rsa-1", "typ": "at+jwt"}
    public = jwt.PyJWKSet.from_dict(auth_server.jwks())["rsa-1"].key
    from cryptography.hazmat.primitives import serialization

    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    with pytest.raises(jwt.InvalidAlgorithmError):  # a verifier that pins the algorithm refuses it
        jwt.decode(confused, public, algorithms=["RS256"], audience="mxcp-server")


def test_rotate_and_restart(fresh_auth_server: AuthServer) -> None:
    server = fresh_auth_server
    before = jwt.get_unverified_header(server.user_token()["access_token"])["kid"]
    assert before == "rsa-1"
    assert server.rotate() == "rsa-2"
    kids = [k["kid"] for k in server.jwks()["keys"]]
    assert kids == ["rsa-1", "ec-1", "ed-1", "rsa-2"]
    assert [k["kid"] for k in server.keys["keys"]] == kids  # keys.json re-written
    tokens = server.user_token()
    assert jwt.get_unverified_header(tokens["access_token"])["kid"] == "rsa-2"
    assert verify(server, tokens["access_token"])["sub"] == SUBJECTS["alice"]
    old = server.mint(server.claims())  # the old key still verifies
    assert verify(server, old)["sub"] == "user-alice"

    issuer, public = server.issuer, server.jwks()
    server.restart()
    assert server.issuer == issuer and server.jwks() == public  # same port, same keys
    assert server.introspect(tokens["access_token"]) == {"active": False}  # in-memory state is gone
    assert verify(server, server.user_token()["access_token"])["sub"] == "user-alice"
