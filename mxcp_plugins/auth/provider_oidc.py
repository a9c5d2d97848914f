"""Builtin plugin: sign-in through any OpenID Connect or RFC 8414 provider (`auth.provider: oidc`).

    auth:
      provider: oidc
      oidc: {config_url: https://idp.example.com/.well-known/openid-configuration, client_id: ..., client_secret: ...,
             scope: "openid profile email", audience: https://mcp.example.com/mcp, callback_path: /oidc/callback}
"""
from __future__ import annotations

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OidcAppSettings, require


def connect(settings: OidcAppSettings) -> ProviderConnection:
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret,
        scope=settings.scope or "openid profile email",
        config_url=require(settings.config_url, "config_url"),
        authorization_endpoint=settings.auth_url, token_endpoint=settings.token_url,
        audience=settings.audiences, callback_path=settings.callback_path or "/oidc/callback",
        claim_mappings=settings.claim_mappings,
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("oidc", OidcAppSettings, connect, description="any OpenID Connect provider")]
