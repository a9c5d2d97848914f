"""Settings shared by the builtin identity providers: the keys of the original's `auth.<provider>` sections."""
from __future__ import annotations

from typing import Any

import attrs


def _audiences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError("audience must be a string or a list of strings")


@attrs.define
class OAuthAppSettings:
    """An OAuth application registered with the provider, and where it sends users back (issuer mode)."""

    client_id: str
    client_secret: str | None = attrs.field(default=None, repr=False)
    scope: str | None = None
    callback_path: str | None = None
    auth_url: str | None = None
    token_url: str | None = None
    claim_mappings: dict[str, dict[str, Any]] = attrs.Factory(dict)


@attrs.define
class OidcAppSettings(OAuthAppSettings):
    """An OpenID Connect provider: endpoints from discovery; `audience` accepted in tokens (verifier mode)."""

    config_url: str | None = None
    # One audience or a list of them (a string or a list of strings).
    audience: Any = attrs.field(default=None, validator=lambda _, __, value: _audiences(value))

    @property
    def audiences(self) -> tuple[str, ...]:
        return _audiences(self.audience)


def require(value: str | None, key: str) -> str:
    if not value:
        raise ValueError(f"'{key}' is required")
    return value
