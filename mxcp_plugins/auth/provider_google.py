"""Builtin plugin: sign-in with Google accounts (`auth.provider: google`), OpenID Connect."""
from __future__ import annotations

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OidcAppSettings

DISCOVERY = "https://accounts.google.com/.well-known/openid-configuration"


def connect(settings: OidcAppSettings) -> ProviderConnection:
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret,
        scope=settings.scope or "openid email profile", config_url=settings.config_url or DISCOVERY,
        authorization_endpoint=settings.auth_url, token_endpoint=settings.token_url,
        audience=settings.audiences, callback_path=settings.callback_path or "/google/callback",
        claim_mappings=settings.claim_mappings,
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("google", OidcAppSettings, connect, modes=("issuer",), description="Google accounts")]
