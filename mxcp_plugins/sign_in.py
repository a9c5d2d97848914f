"""Builtin plugin: sign-in for HTTP serving, from the user config's `auth:` block (the original's format).

    projects:
      demo:
        profiles:
          default:
            auth:
              mode: verifier            # or issuer (the default)
              provider: oidc            # none, github, google, keycloak, atlassian, salesforce, oidc, or a plugin's
              oidc: {config_url: ..., client_id: ..., client_secret: ..., audience: ...}
              authorization: {required_scopes: [mcp:read]}
              persistence: {type: sqlite, path: ~/.mxcp/oauth.db}   # issuer mode's store

- `verifier`: the provider issues the tokens; each request's token is verified here (a JWT against the provider's
  keys, or an opaque token through introspection) and must be meant for this server (its audience).
- `issuer`: this server is the authorization server MCP clients see (metadata, registration, /authorize, /token,
  revocation); the login itself happens at the provider, and the tokens this server issues carry that identity.

Identity providers are plugins (`sign_in_providers`); this one assembles the OAuth machinery around them. Heavy
imports (the mcp SDK, httpx2) happen only when a server with sign-in starts.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs

from mxcp_core import ConfigError, ConfigSection, hookimpl

log = logging.getLogger(__name__)

SECTION = "auth"
STATE_KEY = "sign_in"
STARTED_KEY = "sign_in_started"  # the auth block an HTTP server started with (None: none)
# Keys of `auth:` only the issuer mode reads (verifier mode has no clients, store or tokens of its own).
ISSUER_KEYS = ("clients", "persistence", "access_token_ttl", "refresh_token_ttl", "dynamic_registration",
               "client_metadata_documents", "allow_private_metadata_hosts")


@attrs.define
class ClientSettings:
    """A client known in advance (the original's `auth.clients`); others register themselves or use CIMD."""

    client_id: str
    name: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    redirect_uris: list[str] = attrs.Factory(list)
    grant_types: list[str] = attrs.Factory(lambda: ["authorization_code", "refresh_token"])
    scopes: list[str] = attrs.Factory(list)


@attrs.define
class AuthorizationSettings:
    required_scopes: list[str] = attrs.Factory(list)


@attrs.define
class AuthSettings:
    """`auth:` without the provider sections (`auth.<provider>`, structured by each provider's own class)."""

    provider: str = "none"
    mode: str = "issuer"
    clients: list[ClientSettings] = attrs.Factory(list)
    authorization: AuthorizationSettings = attrs.Factory(AuthorizationSettings)
    persistence: dict[str, Any] | None = None
    # Issuer mode: scopes clients may ask for besides the required ones, token lifetimes (seconds), registration.
    scopes: list[str] = attrs.Factory(list)
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 86400
    dynamic_registration: bool = True
    client_metadata_documents: bool = True
    # Client ID Metadata Documents on private addresses (development only: an SSRF guard otherwise).
    allow_private_metadata_hosts: bool = False


@attrs.frozen
class SignInPlan:
    """The active profile's sign-in, checked: what identify_caller and the server need."""

    settings: AuthSettings
    provider: Any  # IdentityProvider
    app: Any  # the provider's structured settings
    key_path: str


@hookimpl
def config_sections():
    return [ConfigSection(SECTION, dict[str, Any], scope="user_profile",
                          description="sign-in for HTTP serving (mode, provider and its settings, authorization)")]


def plan(project: Any, providers: Mapping[str, Any]) -> SignInPlan | None:
    """The checked sign-in of the active profile; None for `provider: none` (or no block)."""
    from mxcp_core import SIGN_IN_MODES as MODES
    from mxcp_core import SIGN_IN_PROVIDER_PLUGINS, structure_config, user_config_path

    raw = project.plugin_config(SECTION, scope="user_profile") or {}
    where = f"projects.{project.site.project}.profiles.{project.profile}.{SECTION}"
    file = user_config_path()
    name = str(raw.get("provider", "none"))
    if name.lower() == "none":
        extra = sorted(set(map(str, raw)) - {"provider"})
        if extra:
            # Settings without a provider: a typo or a half-finished edit, never a reason to serve open silently.
            raise ConfigError(f"provider is 'none' but the block configures {', '.join(extra)}: name the provider "
                              "or remove the rest", file=file, key_path=f"{where}.provider")
        return None
    known = set(providers) | set(SIGN_IN_PROVIDER_PLUGINS)
    base = {key: value for key, value in raw.items() if key not in known}
    settings = structure_config(base, AuthSettings, file=file, root_path=where)
    provider = providers.get(name)
    if provider is None:
        owner = SIGN_IN_PROVIDER_PLUGINS.get(name)
        if owner is not None:
            why = f"it is provided by plugin '{owner}', which is disabled or not installed (see `mxcp plugins`)"
        else:
            offered = ", ".join(sorted(providers)) or "none"
            why = (f"no loaded plugin provides it (loaded providers: {offered}); install the plugin that does "
                   "(see docs/sign-in.md)")
        raise ConfigError(f"sign-in provider '{name}' is not available: {why}. The server is not started without "
                          "the sign-in it is configured with", file=file, key_path=f"{where}.provider")
    if settings.mode not in MODES:
        raise ConfigError(f"unknown mode '{settings.mode}' (expected {' or '.join(MODES)})", file=file,
                          key_path=f"{where}.mode")
    if settings.mode not in provider.modes:
        raise ConfigError(f"provider '{name}' supports mode {' and '.join(provider.modes)} only, not "
                          f"'{settings.mode}'", file=file, key_path=f"{where}.mode")
    if name not in raw:
        raise ConfigError(f"provider '{name}' needs its settings in '{SECTION}.{name}'", file=file,
                          key_path=f"{where}.{name}")
    unused = [key for key in ISSUER_KEYS if key in base] if settings.mode == "verifier" else []
    if unused:
        # Said, not refused: the original's configs may carry them, and verifier mode enforces sign-in without.
        log.warning("%s: %s: %s only apply to mode issuer; this server runs in mode verifier and does not use them",
                    file, where, ", ".join(unused))
    app = structure_config(raw[name], provider.settings, file=file, root_path=f"{where}.{name}")
    return SignInPlan(settings, provider, app, where)


def _connect(active: SignInPlan) -> Any:
    from mxcp_core import user_config_path

    try:
        return active.provider.connect(active.app)
    except ValueError as exc:
        raise ConfigError(str(exc), file=user_config_path(), key_path=f"{active.key_path}.{active.provider.name}")


@hookimpl
def http_sign_in(project, base_url, resource_url, providers, open_store):
    # What the HTTP server started with (sign-in or none): a reload may not change it (see check_reload).
    project.state[STARTED_KEY] = _in_force(project.plugin_config(SECTION, scope="user_profile"))
    active = plan(project, providers)
    if active is None:
        return None
    connection = _connect(active)
    project.state[STATE_KEY] = (active, connection)
    if active.settings.mode == "verifier":
        from .auth.assemble import verifier_sign_in

        return verifier_sign_in(active, connection, resource_url=resource_url)
    from .auth.assemble import issuer_sign_in

    return issuer_sign_in(active, connection, base_url=base_url, resource_url=resource_url, open_store=open_store)


@hookimpl
def check_reload(project, fresh):
    """Sign-in is built when an HTTP server starts: a reload that would change it is refused, never left unapplied
    (an `auth:` block added on SIGHUP would otherwise be taken and the server stay open). stdio and `mxcp run`
    have no sign-in: any change is fine there."""
    if STARTED_KEY not in project.state:
        return None
    if _in_force(fresh.plugin_config(SECTION, scope="user_profile")) == project.state[STARTED_KEY]:
        # Taken: the sign-in built at start stays in force for the reloaded project (its callers' identity
        # comes from it), and so does what a later reload is compared with.
        for key in (STARTED_KEY, STATE_KEY):
            if key in project.state:
                fresh.state[key] = project.state[key]
        return None
    return ("the sign-in settings (auth:, or a secret they reference) changed; sign-in is set up when the "
            "server starts: restart the server to apply them")


def _in_force(section: Any) -> Any:
    """The `auth:` block as it matters: None for no block, an empty one, or `provider: none` alone."""
    if not section or (str(section.get("provider", "none")).lower() == "none" and set(section) <= {"provider"}):
        return None
    return _plain(section)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@hookimpl(tryfirst=True)  # a token's identity outranks any configured one
def identify_caller(transport, request, project):
    if transport != "http":
        return None
    signed_in = project.state.get(STATE_KEY)
    if signed_in is None:
        return None
    active, connection = signed_in
    user = request.scope.get("user") if request is not None else None
    access = getattr(user, "access_token", None)
    if access is None:
        # The server refuses unsigned requests before they get here; never let one through as anonymous.
        raise ConfigError("this server requires sign-in and the request carries no verified token")
    from .auth.identity import user_from_token

    external = access.token if active.settings.mode == "verifier" else None
    return user_from_token(access, provider=active.provider.name, claim_mappings=connection.claim_mappings,
                           external_token=external)
