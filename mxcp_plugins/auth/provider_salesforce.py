"""Builtin plugin: sign-in with Salesforce (`auth.provider: salesforce`, issuer mode)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OAuthAppSettings

LOGIN = "https://login.salesforce.com"


def profile(info: Mapping[str, Any]) -> dict[str, Any]:
    """Salesforce's userinfo: `user_id` is the subject when `sub` is a URL."""
    claims = dict(info)
    if info.get("user_id"):
        claims["sub"] = str(info["user_id"])
    return claims


def connect(settings: OAuthAppSettings) -> ProviderConnection:
    token_url = settings.token_url or f"{LOGIN}/services/oauth2/token"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(token_url))  # a sandbox or My Domain login host
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret,
        scope=settings.scope or "api refresh_token openid profile email",
        authorization_endpoint=settings.auth_url or f"{LOGIN}/services/oauth2/authorize",
        token_endpoint=token_url, userinfo_endpoint=f"{origin}/services/oauth2/userinfo",
        callback_path=settings.callback_path or "/salesforce/callback", claim_mappings=settings.claim_mappings,
        profile=profile,
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("salesforce", OAuthAppSettings, connect, modes=("issuer",),
                             description="Salesforce users")]
