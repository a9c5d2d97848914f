"""Builtin plugin: DuckDB functions from the project's plugins/ folder, in both forms users write them.

- The seed's form: a module in plugins/ defining `register_functions(conn)`; `plugins.get("<module stem>")`
  returns the module.
- The original MXCP's class form: mxcp-site.yml lists instances `{name, module, config}`; `module` defines
  `class MXCPPlugin(MXCPBasePlugin)` whose `@udf` methods become DuckDB functions `<method>_<name>`, built with
  the user config's `plugin.config[<config>]`; `plugins.get("<name>")` returns the instance.

Modules are loaded once per project, under private module names (two projects in one process may both have
plugins/utils.py); the functions are registered on every database open, reloads included.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

from mxcp_core import hookimpl
from mxcp_core.errors import ConfigError, MxcpError
from mxcp_core.records import ProjectContext
from mxcp_core.sql import first_line
from mxcp_core.udf import function_signature, udf_methods

log = logging.getLogger(__name__)

PLUGIN_CLASS = "MXCPPlugin"
SEED_ENTRY = "register_functions"


@attrs.define
class UdfFunction:
    """One DuckDB function a plugin instance contributes."""

    sql_name: str
    function: Callable[..., Any]
    parameter_types: list[str]
    return_type: str
    origin: str


@attrs.define(eq=False)
class ProjectPlugins:
    """The plugin modules and instances of one project, loaded once and registered on every open."""

    folder: Path
    prefix: str
    modules: dict[str, ModuleType] = attrs.Factory(dict)
    seed_modules: list[tuple[str, ModuleType]] = attrs.Factory(list)
    functions: list[UdfFunction] = attrs.Factory(list)
    private_names: list[str] = attrs.Factory(list)
    exposed: dict[str, str] = attrs.Factory(dict)

    # -- loading -----------------------------------------------------------------------------------
    def load(self, project: ProjectContext) -> None:
        exposed = self.exposed

        def expose(name: str, obj: Any, origin: str) -> None:
            if name in exposed or name in project.plugin_objects:
                first = exposed.get(name, "another plugin")
                raise ConfigError(f"plugin name '{name}' is used twice: by {first} and by {origin}")
            exposed[name] = origin
            project.plugin_objects[name] = obj

        if self.folder.is_dir():
            for entry in sorted(self.folder.iterdir()):
                stem = _module_stem(entry)
                if stem is None:
                    continue
                module = self.module(stem)
                if callable(getattr(module, SEED_ENTRY, None)):
                    self.seed_modules.append((stem, module))
                    expose(stem, module, f"plugins/{entry.name}")
        for index, instance in enumerate(project.site.plugin):
            where = f"plugin[{index}] '{instance.name}'"
            module = self.module(instance.module, where=where)
            plugin_class = getattr(module, PLUGIN_CLASS, None)
            if not isinstance(plugin_class, type):
                raise ConfigError(
                    f"module '{instance.module}' has no class {PLUGIN_CLASS}",
                    file=project.site_file, key_path=f"plugin[{index}].module",
                )
            config = _instance_config(project, instance.config, instance.name)
            try:
                obj = plugin_class(config)
            except MxcpError:
                raise
            except Exception as exc:  # noqa: BLE001 - report which plugin failed and why
                log.error("creating plugin instance '%s' failed", instance.name, exc_info=True)
                raise ConfigError(
                    f"creating plugin '{instance.name}' failed: {type(exc).__name__}: {exc}",
                    file=project.site_file, key_path=f"plugin[{index}]",
                ) from None
            for method_name, method in udf_methods(obj):
                parameter_types, return_type = function_signature(
                    method, where=f"plugin '{instance.name}', @udf method '{method_name}'"
                )
                self.functions.append(
                    UdfFunction(
                        sql_name=f"{method_name}_{instance.name}",
                        function=method,
                        parameter_types=parameter_types,
                        return_type=return_type,
                        origin=f"plugin '{instance.name}' ({instance.module}.{method_name})",
                    )
                )
            expose(instance.name, obj, f"plugin instance '{instance.name}' in mxcp-site.yml")

    def module(self, dotted: str, *, where: str | None = None) -> ModuleType:
        """A module of plugins/ (loaded under a private name), else an installed module by its name."""
        if dotted in self.modules:
            return self.modules[dotted]
        top, _, rest = dotted.partition(".")
        local = _local_file(self.folder, top)
        try:
            with _folder_on_path(self.folder):
                if local is None:
                    module = importlib.import_module(dotted)
                else:
                    module = self._load_private(top, local)
                    if rest:
                        module = importlib.import_module(f"{module.__name__}.{rest}")
        except MxcpError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plugin module: say which and why
            log.error("importing plugin module '%s' failed", dotted, exc_info=True)
            subject = where or (f"plugins/{local.relative_to(self.folder)}" if local else f"module '{dotted}'")
            raise ConfigError(f"{subject}: importing '{dotted}' failed: {type(exc).__name__}: {exc}") from None
        self.modules[dotted] = module
        return module

    def _load_private(self, stem: str, file: Path) -> ModuleType:
        name = f"{self.prefix}{stem}"
        if name in sys.modules:
            return sys.modules[name]
        package = file.name == "__init__.py"
        spec = importlib.util.spec_from_file_location(
            name, file, submodule_search_locations=[str(file.parent)] if package else None
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        self.private_names.append(name)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    # -- registering -------------------------------------------------------------------------------
    def register(self, conn: Any) -> None:
        for stem, module in self.seed_modules:
            try:
                getattr(module, SEED_ENTRY)(conn)
            except MxcpError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("plugins/%s: register_functions failed", stem, exc_info=True)
                raise ConfigError(
                    f"plugins/{stem}: register_functions(conn) failed: {type(exc).__name__}: {first_line(exc)}"
                ) from None
        for function in self.functions:
            create_function(
                conn, function.sql_name, function.function, function.parameter_types, function.return_type,
                origin=function.origin,
            )

    def unload(self) -> None:
        for name in [n for n in sys.modules if n in self.private_names or n.startswith(f"{self.prefix}")]:
            sys.modules.pop(name, None)


def create_function(
    conn: Any, name: str, function: Callable[..., Any], parameter_types: list[str], return_type: str,
    *, origin: str, side_effects: bool = False,
) -> bool:
    """Register a Python function; False when another open connection of this database already has it."""
    import duckdb

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


def _instance_config(project: ProjectContext, config_name: str | None, instance: str) -> dict[str, Any]:
    if config_name is None:
        return {}
    profile = project.project_user_config.profiles.get(project.profile) if project.project_user_config else None
    if profile is None or config_name not in profile.plugin.config:
        log.warning(
            "plugin '%s': config '%s' is not in the user config (projects.%s.profiles.%s.plugin.config); "
            "using an empty config", instance, config_name, project.name, project.profile,
        )
    return dict(project.plugin_config(config_name))


def _module_stem(entry: Path) -> str | None:
    """The module name of a plugins/ entry, or None for what is not a plugin module."""
    if entry.name.startswith((".", "_")):
        return None
    if entry.is_file() and entry.suffix == ".py":
        return entry.stem if entry.stem.isidentifier() else None
    if entry.is_dir() and (entry / "__init__.py").is_file():
        return entry.name if entry.name.isidentifier() else None
    return None


def _local_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.py", folder / stem / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@contextmanager
def _folder_on_path(folder: Path) -> Iterator[None]:
    """plugins/ on the import path while its modules import (for their sibling helpers), then off again.

    It goes after the standard library, so a helper named `json.py` never shadows `json`; helpers imported
    from it are dropped from sys.modules afterwards (the plugin modules keep their references), so another
    project's helper of the same name is imported afresh.
    """
    entry = str(folder)
    if not folder.is_dir() or entry in sys.path:
        yield
        return
    position = next(
        (i for i, path in enumerate(sys.path) if "site-packages" in path or "dist-packages" in path), len(sys.path)
    )
    sys.path.insert(position, entry)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and _is_within(Path(file), folder) and not name.startswith("mxcp_plugin_"):
                sys.modules.pop(name, None)
        importlib.invalidate_caches()


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


# -- per-project state -------------------------------------------------------------------------------
STATE_KEY = "udf_plugins"
_lock = threading.Lock()


def plugins_for(project: ProjectContext) -> ProjectPlugins:
    """The project's plugins, loaded on first use and kept in the project's own state."""
    with _lock:
        found = project.state.get(STATE_KEY)
        if found is not None:
            return found
        folder = project.path("plugins")
        digest = hashlib.sha1(f"{folder}:{id(project.state)}".encode()).hexdigest()[:10]
        found = ProjectPlugins(folder=folder, prefix=f"mxcp_plugin_{digest}_")
        try:
            found.load(project)
        except BaseException:
            for name in found.exposed:
                project.plugin_objects.pop(name, None)
            found.unload()
            raise
        project.state[STATE_KEY] = found
        return found


@hookimpl
def register_functions(conn, project):
    plugins_for(project).register(conn)
