"""Builtin plugin: on every database open, LOAD the site config's extensions and create DuckDB secrets.

Extensions (`extensions: [httpfs, {name: h3, repo: community}]`) are loaded; one that is not installed yet is
installed (from `repo` when given) and loaded again. Secrets of the active profile whose `type` DuckDB knows
(s3, http, ...) become temporary DuckDB secrets, their parameters written as SQL literals (never logged,
never part of an error message).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Union

import attrs

from mxcp_core import (
    ConfigError,
    ConfigSection,
    ProjectContext,
    first_line,
    hookimpl,
    quote_identifier,
    quote_literal,
)

log = logging.getLogger(__name__)


@attrs.define
class ExtensionSpec:
    """An entry of `extensions:` in its long form: `{name: h3, repo: community}`."""

    name: str
    repo: str | None = None


@hookimpl
def config_sections():
    return [ConfigSection("extensions", list[Union[str, ExtensionSpec]], description="DuckDB extensions to load")]

# Secret types of DuckDB's own extensions; `duckdb_secret_types()` only lists those already loaded.
KNOWN_SECRET_TYPES = frozenset(
    {"s3", "r2", "gcs", "azure", "http", "huggingface", "mysql", "postgres", "iceberg", "ducklake"}
)
# The one DuckDB secret type mxcp's own plugins also read (postgres_connect): without DuckDB's extension it is
# still theirs to use.
MXCP_OWN_SECRET_TYPE = "postgres"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXTENSION_NAME = re.compile(r"^[A-Za-z0-9_]+$")


# -- extensions -----------------------------------------------------------------------------------------
def load_extensions(conn: Any, project: ProjectContext) -> None:
    import duckdb

    for index, entry in enumerate(project.plugin_config("extensions")):
        name, repo = (entry.name, entry.repo) if isinstance(entry, ExtensionSpec) else (entry, None)
        key_path = f"extensions[{index}]"
        if not _EXTENSION_NAME.match(name or ""):
            raise ConfigError(f"'{name}' is not a DuckDB extension name", file=project.site_file, key_path=key_path)
        try:
            conn.execute(f"LOAD {name}")
            continue
        except duckdb.Error:
            log.info("DuckDB extension '%s' is not installed; installing it", name)
        try:
            conn.execute(f"INSTALL {name}{_from_repo(repo)}")
            conn.execute(f"LOAD {name}")
        except duckdb.Error as exc:
            source = f" from repository '{repo}'" if repo else ""
            raise ConfigError(
                f"DuckDB extension '{name}' could not be loaded or installed{source}: {first_line(exc)}",
                file=project.site_file, key_path=key_path,
            ) from None


def _from_repo(repo: str | None) -> str:
    if not repo:
        return ""
    if _IDENTIFIER.match(repo):  # an alias: core, community, core_nightly...
        return f" FROM {repo}"
    return f" FROM {quote_literal(repo)}"  # a repository URL


# -- secrets --------------------------------------------------------------------------------------------
def known_secret_types(conn: Any) -> set[str]:
    types = set(KNOWN_SECRET_TYPES)
    try:
        types |= {row[0].lower() for row in conn.execute("SELECT type FROM duckdb_secret_types()").fetchall()}
    except Exception:  # noqa: BLE001 - older DuckDB without the table function: the fixed list will do
        log.debug("duckdb_secret_types() unavailable", exc_info=True)
    return types


def create_secrets(conn: Any, project: ProjectContext) -> None:
    import duckdb

    types = None
    for secret in project.secrets():
        if types is None:
            types = known_secret_types(conn)
        secret_type = str(secret.type).lower()
        if secret_type not in types:
            continue
        statement = secret_statement(secret.name, secret_type, secret.parameters)
        try:
            conn.execute(statement)
        except duckdb.Error as exc:
            # the raw text: only the phrase is looked at
            if secret_type == MXCP_OWN_SECRET_TYPE and "automatically install" in first_line(exc):
                # A postgres secret may be meant for mxcp itself (the postgres engine, audit sink, sign-in store)
                # rather than DuckDB's SQL, so a missing extension is said, not fatal. An extension the project
                # needs is listed under `extensions:`, which fails the start when it cannot be loaded.
                log.warning(
                    "secret '%s' (type %s) is not available to DuckDB's SQL: the DuckDB extension providing it is "
                    "not installed and could not be installed automatically (install it once while online, or "
                    "list it under `extensions:` to require it)", secret.name, secret_type)
                continue
            reason = _reason_without_values(exc, secret.parameters)
            raise ConfigError(
                f"secret '{secret.name}' (type {secret_type}): DuckDB could not create it: {reason}"
            ) from None
        log.debug("created DuckDB secret '%s' of type %s", secret.name, secret_type)


def secret_statement(name: str, secret_type: str, parameters: Mapping[str, Any]) -> str:
    """`CREATE OR REPLACE TEMPORARY SECRET "name" (TYPE t, KEY 'value', ...)` with every value quoted."""
    if not _IDENTIFIER.match(secret_type):
        raise ConfigError(f"secret '{name}': type '{secret_type}' is not a DuckDB secret type")
    options = [f"TYPE {secret_type}"]
    for key, value in parameters.items():
        if not isinstance(key, str) or not _IDENTIFIER.match(key):
            raise ConfigError(f"secret '{name}': parameter name '{key}' is not a valid DuckDB secret option")
        if key.lower() == "type":
            continue
        options.append(f"{key.upper()} {sql_value(value, where=f'secret {name!r}, parameter {key!r}')}")
    return f"CREATE OR REPLACE TEMPORARY SECRET {quote_identifier(name)} ({', '.join(options)})"


def sql_value(value: Any, *, where: str) -> str:
    """A SQL literal for a config value: strings quoted, mappings as MAP {...}, lists as [...]."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return quote_literal(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{quote_literal(str(k))}: {sql_value(v, where=where)}" for k, v in value.items())
        return f"MAP {{{items}}}"
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(sql_value(v, where=where) for v in value)}]"
    if value is None:
        return "NULL"
    # The type name only: the value itself may be secret.
    raise ConfigError(f"{where}: a {type(value).__name__} cannot be given to DuckDB")


def _leaf_values(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [leaf for v in value.values() for leaf in _leaf_values(v)]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaf_values(v)]
    return [] if value is None or isinstance(value, bool) else [str(value)]


def _reason_without_values(exc: BaseException, parameters: Mapping[str, Any]) -> str:
    """DuckDB's reason, unless it quotes any of the values (a conversion error would): then only its kind."""
    reason = first_line(exc)
    if any(leaf and leaf in reason for leaf in _leaf_values(parameters)):
        return f"{type(exc).__name__} (details withheld: they contain a secret value)"
    return reason


@hookimpl
def configure_database(conn, project):
    load_extensions(conn, project)
    create_secrets(conn, project)
