"""Connecting to PostgreSQL from a user-config secret of `type: postgres` (shared by the postgres plugins).

The secret is in the original's format: `parameters: {host, port, database, user, password}` (`${VAR}` and
`file://` references already resolved by the config loader), plus any other libpq connection keyword
(`sslmode`, `sslrootcert`, `connect_timeout`, `application_name`, ...). psycopg 3 comes with the `postgres` extra;
it is imported only when a postgres feature is configured.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mxcp_core import ConfigError, MxcpError

POSTGRES_EXTRA = "mxcp-pluggy[postgres]"
SECRET_TYPE = "postgres"
# The original's keys, and what libpq calls them.
_RENAMED = {"database": "dbname", "username": "user"}
# libpq connection keywords a secret may carry besides host, port, dbname, user, password. Those that say where to
# connect rather than prove who connects are also in mxcp_core.redaction.LOCATION_KEYS (not masked): keep both.
_PASSED_THROUGH = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "connect_timeout", "application_name",
    "options", "target_session_attrs", "gssencmode", "channel_binding", "hostaddr", "passfile", "service",
})
DEFAULTS = {"application_name": "mxcp", "connect_timeout": 10}


def require_psycopg(feature: str) -> Any:
    """The psycopg module, or an error naming the extra that provides it."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - the engine pools connections
    except ImportError:
        raise MxcpError(f"{feature} needs psycopg 3, which is not installed: pip install '{POSTGRES_EXTRA}'") from None
    return psycopg


def connection_parameters(project: Any, secret_name: str | None, *, key_path: str, file: Any = None) -> dict[str, Any]:
    """libpq connection keywords from the active profile's secret `secret_name` (of `type: postgres`).

    `key_path` names the setting that chose the secret, for the error when it is missing or of another kind.
    """
    where = {"file": file if file is not None else project.site_file, "key_path": key_path}
    if not secret_name:
        raise ConfigError("names no secret: set it to a user-config secret of type postgres", **where)
    found = next((s for s in project.secrets() if s.name == secret_name), None)
    if found is None:
        raise ConfigError(
            f"the secret '{secret_name}' is not in the user config's profile '{project.profile}' of project "
            f"'{project.name}'", **where)
    if found.type != SECRET_TYPE:
        raise ConfigError(f"the secret '{secret_name}' has type '{found.type}'; a postgres connection needs "
                          f"type: {SECRET_TYPE}", **where)
    return parameters_from(found.parameters, secret_name=secret_name, where=where)


def parameters_from(parameters: Mapping[str, Any], *, secret_name: str, where: Mapping[str, Any]) -> dict[str, Any]:
    keywords: dict[str, Any] = dict(DEFAULTS)
    for key, value in parameters.items():
        name = _RENAMED.get(key, key)
        if name in ("host", "port", "dbname", "user", "password") or name in _PASSED_THROUGH:
            if value is not None:
                keywords[name] = str(value) if name == "port" else value
        else:
            # Never the value: it may be as secret as the password.
            raise ConfigError(f"the secret '{secret_name}' has the parameter '{key}', which is not a PostgreSQL "
                              "connection setting", **where)
    if "host" not in keywords and "service" not in keywords:
        raise ConfigError(f"the secret '{secret_name}' has no host", **where)
    return keywords


def describe(keywords: Mapping[str, Any]) -> str:
    """Where a connection goes, for messages: `user@host:port/db`, never the password."""
    return (f"{keywords.get('user', '')}@{keywords.get('host', '')}:{keywords.get('port', 5432)}"
            f"/{keywords.get('dbname', '')}")
