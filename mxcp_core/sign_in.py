"""Sign-in records: what a sign-in plugin gives the HTTP server, and the identity providers and stores it builds on.

The core knows only `HttpSignIn` (a token verifier for the MCP paths, the authorization servers to name in the
protected-resource metadata, extra routes); everything about OAuth lives in plugins. Nothing here imports the
mcp SDK: a verifier is any object with `async verify_token(token) -> mcp.server.auth.provider.AccessToken | None`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import attrs

MODES = ("verifier", "issuer")


@attrs.frozen
class HttpSignIn:
    """How requests to the MCP paths sign in, returned by the `http_sign_in` hook.

    `verifier.verify_token(token)` answers an `AccessToken` for a token that is valid *for this server* (signature,
    issuer, expiry and audience checked) and None otherwise. The core answers 401 without a valid token, 403
    `insufficient_scope` when one of `required_scopes` is missing, and serves RFC 9728 metadata naming
    `authorization_servers`. `routes` (Starlette routes) are added at the app's root: an authorization server's
    endpoints, a login callback. `close` runs when the server stops.
    """

    verifier: Any
    authorization_servers: tuple[str, ...]
    required_scopes: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()
    routes: tuple[Any, ...] = ()
    description: str = ""
    close: Callable[[], Awaitable[None]] | None = None


@attrs.frozen
class ProviderConnection:
    """Where an identity provider lives and how to talk to it: what `IdentityProvider.connect` returns.

    Endpoints not given explicitly come from the discovery document at `config_url` (OpenID Connect discovery or
    RFC 8414 metadata). `profile` turns the provider's user profile (userinfo response, or token claims) into
    standard claims (`sub`, `preferred_username`, `email`, `name`, ...); None keeps it as it is.
    """

    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    scope: str = ""
    config_url: str | None = None
    issuer: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    jwks_uri: str | None = None
    introspection_endpoint: str | None = None
    audience: tuple[str, ...] = ()
    callback_path: str = "/oauth/callback"
    claim_mappings: Mapping[str, Mapping[str, Any]] = attrs.Factory(dict)
    profile: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    # Extra headers for userinfo/API calls (GitHub wants an Accept header).
    api_headers: Mapping[str, str] = attrs.Factory(dict)
    # Extra parameters of the provider's authorization URL (Atlassian requires `audience`).
    authorize_params: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen
class IdentityProvider:
    """An identity provider for `auth.provider`, returned by the `sign_in_providers` hook.

    `settings` is the attrs class the `auth.<name>` section is structured into (errors name the key path);
    `connect(settings)` turns it into a `ProviderConnection`, raising ValueError for settings that cannot work.
    `modes` says which of `verifier` (tokens the provider issues are verified here) and `issuer` (this server
    signs clients in through the provider and issues its own tokens) it supports.
    """

    name: str
    settings: Any
    connect: Callable[[Any], ProviderConnection]
    modes: tuple[str, ...] = MODES
    description: str = ""


class SignInStore(Protocol):
    """State of the sign-in proxy (clients, pending logins, codes, tokens), returned by `open_sign_in_store`.

    Records are JSON-compatible mappings. Keys of tokens and codes arrive already hashed. `take` is atomic (a
    code or refresh token is used once even across replicas). Expired records are never returned.
    """

    def put(self, kind: str, key: str, record: Mapping[str, Any], *, expires_at: float | None = None,
            grant: str | None = None) -> None: ...

    def get(self, kind: str, key: str) -> dict[str, Any] | None: ...

    def take(self, kind: str, key: str) -> dict[str, Any] | None: ...

    # Optional, so not a member here (the proxy falls back to put-then-get without it):
    #   put_if_absent(kind, key, record, *, expires_at=None, grant=None) -> dict
    # stores unless a live record exists and answers the record kept, so replicas racing to create the encryption
    # key all end up with the first one. Both builtin stores offer it; a store shared by replicas should.

    def delete(self, kind: str, key: str) -> None: ...

    def delete_grant(self, grant: str) -> int: ...

    def close(self) -> None: ...
