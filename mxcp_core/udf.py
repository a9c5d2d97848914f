"""The class form of DuckDB UDF plugins kept from the original MXCP: `MXCPBasePlugin` and the `@udf` marker.

A module under plugins/ defines `class MXCPPlugin(MXCPBasePlugin)`; every method marked `@udf` and fully
type-hinted becomes the DuckDB function `<method>_<instance name>`. User code imports these names from
`mxcp.plugins`.
"""
from __future__ import annotations

import datetime as dt
import inspect
import logging
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

UDF_MARK = "__mxcp_udf__"

# Order matters: datetime is a subclass of date.
_SCALAR_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "BOOLEAN"),
    (int, "INTEGER"),
    (float, "DOUBLE"),
    (str, "VARCHAR"),
    (bytes, "BLOB"),
    (dt.datetime, "TIMESTAMP"),
    (dt.date, "DATE"),
    (dt.time, "TIME"),
)


class MXCPBasePlugin:
    """Base of a UDF plugin class; an instance is built with its config dict from the user config."""

    def __init__(self, config: Mapping[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
        # Extra arguments are accepted (and ignored) so subclasses written for richer constructors still load.
        self.config: dict[str, Any] = dict(config or {})

    def udf_methods(self) -> list[tuple[str, Callable[..., Any]]]:
        """The bound methods marked `@udf`, by method name, in name order."""
        return udf_methods(self)

    # The caller of the current call, as the original MXCP's plugin classes offered it. Inside a `@udf` method
    # DuckDB may run the function on its own threads, which belong to no call: there the caller reads as
    # anonymous (never as another caller). To filter rows by user in SQL, pass `get_username()` as an argument.
    @property
    def user_context(self) -> Any:
        from .runtime_api import get_user_context

        return get_user_context()

    def get_username(self) -> str | None:
        return self.user_context.username

    def get_user_email(self) -> str | None:
        return self.user_context.email

    def is_authenticated(self) -> bool:
        return self.user_context.is_authenticated()


def udf(func: F) -> F:
    """Mark a method of an `MXCPBasePlugin` subclass as a DuckDB function."""
    setattr(func, UDF_MARK, True)
    return func


def is_udf(func: Any) -> bool:
    return bool(getattr(func, UDF_MARK, False))


def udf_methods(obj: Any) -> list[tuple[str, Callable[..., Any]]]:
    """The bound `@udf` methods of any plugin object (a subclass of MXCPBasePlugin or not), in name order."""
    cls = type(obj)
    return [
        (name, getattr(obj, name)) for name in sorted(dir(cls))
        if not name.startswith("__") and is_udf(getattr(cls, name, None))
    ]


def duckdb_type(hint: Any, *, where: str) -> str:
    """The DuckDB type name for a Python type hint (`list[int]` → `INTEGER[]`); `Optional[T]` is T."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) == 1:
            return duckdb_type(members[0], where=where)
        raise ConfigError(f"{where}: union type {_name(hint)} has no DuckDB equivalent")
    if origin in (list, tuple) or hint in (list, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        if len(args) != 1:
            raise ConfigError(f"{where}: list type {_name(hint)} needs one item type, e.g. list[str]")
        return duckdb_type(args[0], where=where) + "[]"
    if isinstance(hint, type):
        for python_type, sql_type in _SCALAR_TYPES:
            if hint is python_type:
                return sql_type
        for python_type, sql_type in _SCALAR_TYPES:
            if issubclass(hint, python_type):
                return sql_type
    raise ConfigError(
        f"{where}: type {_name(hint)} has no DuckDB equivalent "
        "(use str, int, float, bool, bytes, date, time, datetime or list[...] of them)"
    )


def function_signature(method: Callable[..., Any], *, where: str | None = None) -> tuple[list[str], str]:
    """DuckDB parameter types and return type of a type-hinted function or bound method."""
    where = where or f"@udf method '{getattr(method, '__name__', method)}'"
    try:
        hints = typing.get_type_hints(method)
    except Exception as exc:  # noqa: BLE001 - a hint naming something undefined
        raise ConfigError(f"{where}: cannot read its type hints: {exc}") from None
    parameters = [
        p for p in inspect.signature(method).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in inspect.signature(method).parameters.values()):
        raise ConfigError(f"{where}: *args and **kwargs cannot become DuckDB function parameters")
    missing = [p.name for p in parameters if p.name not in hints]
    if missing:
        raise ConfigError(f"{where}: parameter(s) {', '.join(missing)} need a type hint")
    if "return" not in hints:
        raise ConfigError(f"{where}: needs a return type hint")
    parameter_types = [duckdb_type(hints[p.name], where=f"{where}, parameter '{p.name}'") for p in parameters]
    return parameter_types, duckdb_type(hints["return"], where=f"{where}, return type")


def create_function(
    conn: Any, name: str, function: Callable[..., Any], parameter_types: list[str], return_type: str,
    *, origin: str, side_effects: bool = False,
) -> bool:
    """Register a Python function in DuckDB; False when another open connection of this database already has it.

    Errors name the function and `origin` (the plugin or file it comes from): defined twice, or named like a
    built-in DuckDB function.
    """
    import duckdb

    from .sql import first_line

    try:
        conn.create_function(name, function, parameter_types, return_type, side_effects=side_effects)
        return True
    except duckdb.NotImplementedException:
        # DuckDB's wording for "this connection registered that name already".
        raise ConfigError(f"DuckDB function '{name}' of {origin} is defined twice") from None
    except duckdb.CatalogException as exc:
        if "already exists" not in str(exc):
            raise ConfigError(f"DuckDB function '{name}' of {origin}: {first_line(exc)}") from None
        if _is_builtin_function(conn, name):
            raise ConfigError(
                f"DuckDB function '{name}' of {origin} has the name of a built-in DuckDB function"
            ) from None
        # The same database file is open twice in this process and DuckDB shares one instance between them:
        # the function registered by the other connection serves both.
        log.warning("DuckDB function '%s' already exists in this database (opened twice in one process)", name)
        return False
    except duckdb.Error as exc:
        raise ConfigError(f"DuckDB function '{name}' of {origin}: {first_line(exc)}") from None


def _is_builtin_function(conn: Any, name: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM duckdb_functions() WHERE function_name = $name AND internal", {"name": name}
    ).fetchall()
    return bool(rows[0][0])


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


__all__ = [
    "MXCPBasePlugin", "udf", "is_udf", "udf_methods", "duckdb_type", "function_signature", "create_function",
    "UDF_MARK",
]
