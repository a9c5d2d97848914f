"""Features of the original MXCP format and the builtin plugin that provides each.

When a project uses a feature whose plugin is disabled or not installed, the error names that plugin instead
of failing obscurely (an unknown key, a missing SQL function) or, worse, ignoring the configuration. The core
never imports the plugins: these are facts about them, checked against the real plugins by the test suite.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (Mapping, list)) and not value)


def _disabled(value: Any) -> bool:
    """Configures nothing: empty, or a mapping whose `enabled` is false and that says nothing else that matters."""
    return _empty(value) or (isinstance(value, Mapping) and value.get("enabled") is False)


def _all_null(value: Any) -> bool:
    return _empty(value) or (isinstance(value, Mapping) and all(v is None for v in value.values()))


def _no_sign_in(value: Any) -> bool:
    return _empty(value) or (isinstance(value, Mapping) and str(value.get("provider", "none")).lower() == "none"
                             and set(value) <= {"provider"})


def _no_udf_config(value: Any) -> bool:
    return _empty(value) or (isinstance(value, Mapping) and set(value) <= {"config"} and _empty(value.get("config")))


@attrs.frozen
class OriginalSection:
    """A section of the original's config files: who reads it here, and whether it guards anything."""

    scope: str
    name: str
    plugin: str | None  # the builtin that reads it; None when nothing in this version implements it
    inert: Callable[[Any], bool] = _empty  # true when the value configures nothing (e.g. `enabled: false`)
    security: bool = False  # never merely warned about: refused unless inert
    purpose: str = ""


ORIGINAL_SECTIONS: tuple[OriginalSection, ...] = (
    OriginalSection("site", "extensions", "duckdb_setup", purpose="DuckDB extensions to load"),
    OriginalSection("site", "plugin", "udf_plugins", purpose="DuckDB UDF plugin instances"),
    OriginalSection("site", "sql_tools", "sql_tools", _disabled, purpose="the built-in SQL tools"),
    OriginalSection("site", "dbt", None, _disabled, purpose="dbt integration"),
    OriginalSection("site_profile", "audit", "audit", _disabled, security=True, purpose="the audit log"),
    OriginalSection("site_profile", "drift", "drift", _all_null, purpose="drift snapshots"),
    OriginalSection("user", "vault", "secrets_vault", _disabled, security=True, purpose="vault:// secret references"),
    OriginalSection("user", "onepassword", "secrets_onepassword", _disabled, security=True,
                    purpose="op:// secret references"),
    OriginalSection("user", "logging", None, purpose="log files"),
    OriginalSection("user", "models", None, purpose="LLM models for evals"),
    OriginalSection("user_profile", "plugin", "udf_plugins", _no_udf_config, purpose="UDF plugin configs"),
    OriginalSection("user_profile", "auth", "sign_in", _no_sign_in, security=True, purpose="sign-in for HTTP serving"),
    OriginalSection("user_profile", "telemetry", "telemetry", _disabled, purpose="OpenTelemetry traces and metrics"),
    # Not the original's, but read by a builtin: with it disabled, the error names it.
    OriginalSection("user_profile", "user_context", "configured_identity", security=True,
                    purpose="the caller of stdio serving and `mxcp run`"),
)

# Languages of the original's endpoints and the executors that run them.
LANGUAGE_PLUGINS: Mapping[str, str] = {"sql": "executor_sql", "python": "executor_python"}
# Reference schemes of the user config and their resolvers.
SCHEME_PLUGINS: Mapping[str, str] = {
    "env": "secrets_env", "file": "secrets_file", "keyring": "secrets_keyring", "vault": "secrets_vault",
    "op": "secrets_onepassword",
}
# Sign-in providers (`auth.provider`) and the builtin offering each.
SIGN_IN_PROVIDER_PLUGINS: Mapping[str, str] = {
    name: f"auth_{name}" for name in ("oidc", "keycloak", "google", "github", "atlassian", "salesforce")
}
# Commands that builtin plugins add.
COMMAND_PLUGINS: Mapping[str, str] = {
    "lint": "lint", "drift-snapshot": "drift", "drift-check": "drift", "log": "audit", "log-cleanup": "audit",
}
# SQL functions builtin plugins register.
FUNCTION_PLUGINS: Mapping[str, str] = {"datetime": "seed_compat"}
# Endpoint keys whose meaning a plugin provides: an endpoint using one is refused when the plugin is missing.
ENDPOINT_KEY_PLUGINS: Mapping[str, str] = {"policies": "policies"}
# Environment variables of the original that switch on a feature: the section whose owner reads them, and the
# builtin owning it (any plugin declaring the section will do).
ENV_PLUGINS: Mapping[str, tuple[str, str, str]] = {
    "MXCP_AUDIT_ENABLED": ("site_profile", "audit", "audit"),
    "MXCP_TELEMETRY_ENABLED": ("user_profile", "telemetry", "telemetry"),
}
# Project folders a plugin reads (by their `paths:` name).
FOLDER_PLUGINS: Mapping[str, str] = {
    "tools": "endpoint_discovery", "resources": "endpoint_discovery", "prompts": "endpoint_discovery",
    "plugins": "udf_plugins",
}


def original_section(scope: str, name: str) -> OriginalSection | None:
    for section in ORIGINAL_SECTIONS:
        if section.scope == scope and section.name == name:
            return section
    return None


def plugin_state(name: str, disabled: set[str] | frozenset[str]) -> str:
    """`plugin 'x', which is disabled` / `... which is not installed or failed to load`."""
    why = "disabled" if name in disabled else "not installed or failed to load (see `mxcp plugins`)"
    return f"plugin '{name}', which is {why}"


_MISSING_FUNCTION = re.compile(r"function with name (\w+) does not exist", re.IGNORECASE)


def missing_function_hint(message: str, loaded: Callable[[str], bool], disabled: frozenset[str]) -> str:
    """For a DuckDB "function ... does not exist" error, which builtin plugin provides it ('' when none)."""
    found = _MISSING_FUNCTION.search(message)
    plugin = FUNCTION_PLUGINS.get(found.group(1).lower()) if found else None
    if plugin is None or loaded(plugin):
        return ""
    return f" ({found.group(1)}() is provided by {plugin_state(plugin, disabled)})"
