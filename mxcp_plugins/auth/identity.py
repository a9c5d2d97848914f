"""The caller's `UserContext` from a signed-in token's claims, and `claim_mappings` (the original's format).

`claim_mappings: {claim_path: {claim_value: [capability, ...]}}`: a claim path is an exact key first (URI-style
keys such as `https://example.com/roles`), else dot-separated (`realm_access.roles`). A list claim matches each
element, a string with spaces (`scope`) each word; booleans compare as "true"/"false".
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mxcp_core import ConfigError, UserContext

# Claims the issuer-mode proxy adds for this server's own use: never shown to policies or endpoints as claims.
PROVIDER_CLAIM = "mxcp:provider"
UPSTREAM_TOKEN_CLAIM = "mxcp:upstream_token"
_PRIVATE_CLAIMS = (PROVIDER_CLAIM, UPSTREAM_TOKEN_CLAIM)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at `path`: the exact key first, else the dotted path through nested objects; None when absent."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _claim_values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _claim_values(item)]
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (int, float)):
        return [str(value)]
    return []


def mapped_capabilities(claims: Mapping[str, Any], mappings: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    found: list[str] = []
    for path, by_value in (mappings or {}).items():
        if not isinstance(by_value, Mapping):
            continue
        for value in _claim_values(claim_at(claims, str(path))):
            granted = by_value.get(value)
            for capability in [granted] if isinstance(granted, str) else (granted or ()):
                if str(capability) not in found:
                    found.append(str(capability))
    return tuple(found)


def scopes_in(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """Scopes from `scope` (space-separated) or `scp` (a list or a string)."""
    for key in ("scope", "scp"):
        value = claims.get(key)
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, (list, tuple)):
            return tuple(str(v) for v in value)
    return ()


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (Mapping, list, tuple)) else str(value)


def user_from_token(access: Any, *, provider: str, claim_mappings: Mapping[str, Mapping[str, Any]],
                    external_token: str | None = None) -> UserContext:
    """The caller a verified `AccessToken` (the mcp SDK's) stands for.

    `external_token` is the provider's own token: in verifier mode the bearer token itself; in issuer mode the
    proxy carries the upstream token in a private claim, taken out here.
    """
    raw = dict(access.claims or {})
    upstream = raw.get(UPSTREAM_TOKEN_CLAIM)
    provider = str(raw.get(PROVIDER_CLAIM) or provider)
    claims = {key: value for key, value in raw.items() if key not in _PRIVATE_CLAIMS}
    subject = _text(claims.get("sub")) or access.subject
    if not subject:
        raise ConfigError("the access token names no subject (sub): the caller cannot be identified")
    username = next((_text(claims[k]) for k in ("preferred_username", "login", "email") if _text(claims.get(k))),
                    subject)
    role = claims.get("role")
    permissions = claims.get("permissions")
    return UserContext(
        user_id=subject,
        username=username,
        email=_text(claims.get("email")),
        name=_text(claims.get("name")),
        provider=provider,
        role=role if isinstance(role, str) and role else "user",
        permissions=tuple(str(p) for p in permissions) if isinstance(permissions, (list, tuple)) else (),
        capabilities=mapped_capabilities(claims, claim_mappings),
        scopes=tuple(access.scopes) or scopes_in(claims),
        avatar_url=_text(claims.get("picture") or claims.get("avatar_url")),
        claims=claims,
        external_token=upstream if isinstance(upstream, str) else external_token,
    )
