"""Builtin plugin: sign-in through Keycloak (`auth.provider: keycloak`): a realm's OpenID Connect endpoints.

    auth:
      provider: keycloak
      keycloak: {server_url: https://sso.example.com, realm: staff, client_id: mxcp, client_secret: ...}
"""
from __future__ import annotations

import attrs

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OidcAppSettings, require


@attrs.define
class KeycloakSettings(OidcAppSettings):
    server_url: str | None = None
    realm: str | None = None


def connect(settings: KeycloakSettings) -> ProviderConnection:
    config_url = settings.config_url
    if not config_url:
        base = require(settings.server_url, "server_url").rstrip("/")
        config_url = f"{base}/realms/{require(settings.realm, 'realm')}/.well-known/openid-configuration"
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret,
        scope=settings.scope or "openid profile email", config_url=config_url,
        audience=settings.audiences, callback_path=settings.callback_path or "/keycloak/callback",
        claim_mappings=settings.claim_mappings,
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("keycloak", KeycloakSettings, connect, description="a Keycloak realm")]
