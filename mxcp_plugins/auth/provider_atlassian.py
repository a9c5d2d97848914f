"""Builtin plugin: sign-in with Atlassian accounts (`auth.provider: atlassian`, issuer mode)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OAuthAppSettings


def profile(me: Mapping[str, Any]) -> dict[str, Any]:
    """Atlassian's `GET /me`: `account_id` is the subject, `nickname` the username."""
    claims = dict(me)
    if me.get("account_id"):
        claims["sub"] = str(me["account_id"])
    if me.get("nickname") and not me.get("preferred_username"):
        claims["preferred_username"] = me["nickname"]
    return claims


def connect(settings: OAuthAppSettings) -> ProviderConnection:
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret,
        scope=settings.scope or "read:me offline_access",
        authorization_endpoint=settings.auth_url or "https://auth.atlassian.com/authorize",
        token_endpoint=settings.token_url or "https://auth.atlassian.com/oauth/token",
        userinfo_endpoint="https://api.atlassian.com/me",
        callback_path=settings.callback_path or "/atlassian/callback", claim_mappings=settings.claim_mappings,
        profile=profile,
        # Atlassian's 3LO authorization URL requires both.
        authorize_params={"audience": "api.atlassian.com", "prompt": "consent"},
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("atlassian", OAuthAppSettings, connect, modes=("issuer",),
                             description="Atlassian accounts (Jira, Confluence)")]
