"""The API endpoint code uses (`from mxcp.runtime import db, config, ...`); valid inside calls and hooks."""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import context
from .config import as_plain_dict
from .errors import MxcpError
from .records import UserContext
from .sql import Rows, run_sql

F = TypeVar("F", bound=Callable[..., Any])

LIFECYCLE_MARK = "__mxcp_lifecycle__"
# Key of `EndpointCall.notes`: secrets the call asked for that the active profile does not have.
MISSING_SECRETS = "missing_secrets"


class DatabaseAccess:
    """`db.execute(sql, params)`: rows as a list of dicts with `.fetchone()`, `.fetchall()`, `.df()`."""

    def execute(self, sql: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Rows:
        return run_sql(context.cursor(), sql, params)

    @property
    def connection(self) -> Any:
        """The current call's cursor. Prefer `execute`: never keep this beyond the call.

        Its SQL cannot be inspected, so the caller's identity (`get_username()` & co.) is bound on it right away.
        """
        return context.cursor(bind_identity=True)


class ConfigAccess:
    """Secrets and settings of the active project and profile."""

    def get_secret(self, name: str) -> dict[str, Any] | None:
        """The secret's `parameters` (a copy), or None when the active profile has no such secret."""
        runtime = context.require_runtime("config.get_secret")
        found = runtime.context.secret(name)
        if found is None:
            # Code often indexes the result straight away; the executor then names the missing secret.
            call = context.current_call.get()
            if call is not None:
                missing = call.notes.setdefault(MISSING_SECRETS, [])
                if name not in missing:
                    missing.append(name)
            return None
        return copy.deepcopy(dict(found))

    def get_setting(self, key: str, default: Any = None) -> Any:
        """A value of mxcp-site.yml by key (dots for nesting: `profiles.default.duckdb.path`)."""
        node: Any = self.site_config
        for part in key.split("."):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                return default
        return node

    @property
    def site_config(self) -> dict[str, Any]:
        """mxcp-site.yml as data: the core's keys and every plugin's section of the active profile."""
        project = context.require_runtime("config.site_config").context
        return as_plain_dict(project.site, project, scope="site", profile_path=["profiles", project.profile])

    @property
    def user_config(self) -> dict[str, Any]:
        """The user config as data (secrets resolved for the active profile only)."""
        project = context.require_runtime("config.user_config").context
        path = ["projects", project.name, "profiles", project.profile]
        return as_plain_dict(project.user, project, scope="user", profile_path=path)


class PluginAccess:
    """Objects plugins expose by name, such as UDF plugin instances."""

    def get(self, name: str) -> Any:
        return context.require_runtime("plugins.get").context.plugin_objects.get(name)

    def list(self) -> list[str]:
        return sorted(context.require_runtime("plugins.list").context.plugin_objects)


def get_user_context() -> UserContext:
    """The caller of the current call (`UserContext.anonymous()` without sign-in, or outside a call)."""
    call = context.current_call.get()
    return call.user if call is not None else UserContext.anonymous()


class UserAccess:
    """`user`: the current call's caller. Reads like the record (`user.username`, `user.role`, ...)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return getattr(get_user_context(), name)

    def __bool__(self) -> bool:
        return bool(get_user_context())

    def __repr__(self) -> str:
        return f"<current user {get_user_context()!r}>"

    def current(self) -> UserContext:
        """The record itself, to keep or pass on (it is immutable)."""
        return get_user_context()


def on_init(func: F) -> F:
    """Run `func` when the runtime starts (and again after a reload), before the first call."""
    setattr(func, LIFECYCLE_MARK, "init")
    return func


def on_shutdown(func: F) -> F:
    """Run `func` when the runtime stops (and before a reload)."""
    setattr(func, LIFECYCLE_MARK, "shutdown")
    return func


def run_init_functions(runtime: Any, functions: Iterable[Callable[[], Any]], origin: str) -> None:
    """Run `@on_init` functions of user code (`origin`: `python/setup.py`, `plugins/x.py`): one that fails is the
    project's own error, stopping the start with its name and reason (the traceback only with --debug)."""
    for function in functions:
        try:
            _run_lifecycle_function(runtime, function)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() too: named, never a crash of the server
            logging.getLogger(__name__).debug("%s: @on_init function %s failed", origin, function.__name__,
                                              exc_info=True)
            reason = " ".join(str(exc).split()) or "(no message)"
            raise MxcpError(f"{origin}: @on_init function {function.__name__}() failed: "
                            f"{type(exc).__name__}: {reason}") from None


def run_shutdown_functions(runtime: Any, functions: Iterable[Callable[[], Any]], origin: str) -> None:
    """Run `@on_shutdown` functions of user code: each one, even when another fails (the failure is logged)."""
    for function in functions:
        try:
            _run_lifecycle_function(runtime, function)
        except Exception:  # noqa: BLE001 - one failing cleanup must not stop the others
            logging.getLogger(__name__).exception("%s: @on_shutdown function %s() failed", origin,
                                                  function.__name__)


def _run_lifecycle_function(runtime: Any, function: Callable[[], Any]) -> None:
    import inspect

    result = function()
    if inspect.isawaitable(result):
        runtime.run_async(_awaited, result)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def lifecycle_role(func: Any) -> str | None:
    """"init" for an @on_init function, "shutdown" for an @on_shutdown one, else None."""
    return getattr(func, LIFECYCLE_MARK, None) if callable(func) else None


def missing_secrets(call: Any) -> list[str]:
    """Secrets the call asked `config.get_secret` for that the active profile does not have."""
    return list(call.notes.get(MISSING_SECRETS, ()))


def reload_duckdb(payload_func: Callable[[], Any] | None = None, description: str = "") -> None:
    """Schedule a reload: drain calls, close the database, run `payload_func` with exclusive access, reopen."""
    context.require_runtime("reload_duckdb").reload(payload_func, description)


db = DatabaseAccess()
config = ConfigAccess()
plugins = PluginAccess()
user = UserAccess()


def get_secret(name: str) -> dict[str, Any] | None:
    return config.get_secret(name)
