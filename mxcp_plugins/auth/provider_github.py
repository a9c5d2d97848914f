"""Builtin plugin: sign-in with GitHub (`auth.provider: github`), issuer mode: GitHub has no dynamic client
registration and its tokens name no audience, so this server signs clients in and issues its own tokens.

    auth:
      provider: github
      github: {client_id: ..., client_secret: ..., callback_path: /github/callback, scope: "user:email"}
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from mxcp_core import IdentityProvider, ProviderConnection, hookimpl

from .oauth_settings import OAuthAppSettings


@attrs.define
class GitHubSettings(OAuthAppSettings):
    api_url: str = "https://api.github.com"  # GitHub Enterprise: https://github.example.com/api/v3


def profile(user: Mapping[str, Any]) -> dict[str, Any]:
    """GitHub's `GET /user` as standard claims: the numeric id is the stable subject, the login the username."""
    claims = dict(user)
    if user.get("id") is not None:
        claims["sub"] = str(user["id"])
    if user.get("login"):
        claims["preferred_username"] = user["login"]
    if user.get("avatar_url"):
        claims["picture"] = user["avatar_url"]
    return claims


def connect(settings: GitHubSettings) -> ProviderConnection:
    return ProviderConnection(
        client_id=settings.client_id, client_secret=settings.client_secret, scope=settings.scope or "user:email",
        authorization_endpoint=settings.auth_url or "https://github.com/login/oauth/authorize",
        token_endpoint=settings.token_url or "https://github.com/login/oauth/access_token",
        userinfo_endpoint=settings.api_url.rstrip("/") + "/user",
        callback_path=settings.callback_path or "/github/callback", claim_mappings=settings.claim_mappings,
        profile=profile, api_headers={"Accept": "application/vnd.github+json"},
    )


@hookimpl
def sign_in_providers(project):
    return [IdentityProvider("github", GitHubSettings, connect, modes=("issuer",), description="GitHub accounts")]
