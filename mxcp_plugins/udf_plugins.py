"""Builtin plugin: DuckDB functions from the project's plugins/ folder, in both forms users write them.

- The seed's form: a module in plugins/ defining `register_functions(conn)`; `plugins.get("<module stem>")`
  returns the module.
- The original MXCP's class form: mxcp-site.yml lists instances `{name, module, config}`; `module` defines
  `class MXCPPlugin(MXCPBasePlugin)` whose `@udf` methods become DuckDB functions `<method>_<name>`, built with
  the user config's `plugin.config[<config>]`; `plugins.get("<name>")` returns the instance.

Modules are loaded once per project, under private module names (two projects in one process may both have
plugins/utils.py); the functions are registered on every database open, reloads included.

The plugins folder and every module file loaded from it must lie inside the project folder (or a folder of
`allowed_paths:` in mxcp-site.yml), symlinks resolved: a `paths.plugins: ../elsewhere` or a plugins/x.py linking
out of the project is refused before anything is imported. Installed modules (`module:` naming a package that is
not in plugins/) are the Python environment's, not the project's, and are imported as usual.
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

from mxcp_core import (
    ConfigError,
    ConfigSection,
    MxcpError,
    ProjectContext,
    confined_path,
    create_function,
    first_line,
    folder_on_path,
    function_signature,
    hookimpl,
    lifecycle_role,
    load_private_module,
    run_init_functions,
    run_shutdown_functions,
    udf_methods,
)

log = logging.getLogger(__name__)

PLUGIN_CLASS = "MXCPPlugin"
SEED_ENTRY = "register_functions"
PRIVATE_PREFIX = "mxcp_plugin_"


@attrs.define
class PluginInstance:
    """An entry of `plugin:` in mxcp-site.yml: a UDF plugin class instance."""

    name: str
    module: str
    config: str | None = None


@attrs.define
class PluginUserSettings:
    """`plugin:` of a user-config profile: the named configs instances are built with."""

    config: dict[str, dict[str, str]] = attrs.Factory(dict)


@hookimpl
def config_sections():
    return [
        ConfigSection("plugin", list[PluginInstance], description="DuckDB UDF plugin instances"),
        ConfigSection("plugin", PluginUserSettings, scope="user_profile", description="UDF plugin configs"),
    ]


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
    configs: dict[str, dict[str, Any]] = attrs.Factory(dict)  # the user config's plugin configs they were built with
    modules: dict[str, ModuleType] = attrs.Factory(dict)
    seed_modules: list[tuple[str, ModuleType]] = attrs.Factory(list)
    functions: list[UdfFunction] = attrs.Factory(list)
    private_names: list[str] = attrs.Factory(list)
    exposed: dict[str, str] = attrs.Factory(dict)
    # `@on_init` / `@on_shutdown` functions of plugin modules and methods of instances (`from mxcp.plugins import
    # on_shutdown`, the original's form): (role, function, where it comes from).
    lifecycle: list[tuple[str, Callable[[], Any], str]] = attrs.Factory(list)

    # -- loading -----------------------------------------------------------------------------------
    def load(self, project: ProjectContext) -> None:
        exposed = self.exposed

        def expose(name: str, obj: Any, origin: str) -> None:
            if name in exposed or name in project.plugin_objects:
                first = exposed.get(name, "another plugin")
                raise ConfigError(f"plugin name '{name}' is used twice: by {first} and by {origin}")
            exposed[name] = origin
            project.plugin_objects[name] = obj

        site_file = project.site_file.name
        if self.folder.is_dir():
            confined_path(project, project.site.paths.plugins, what="the plugins folder", file=site_file,
                          key_path="paths.plugins")
            for entry in sorted(self.folder.iterdir()):
                stem = _module_stem(entry)
                if stem is None:
                    continue
                shown = f"{project.site.paths.plugins.rstrip('/')}/{entry.name}"
                confined_path(project, entry, what="plugin module", file=shown)
                module = self.module(stem)
                self._note_lifecycle(vars(module).values(), f"plugins/{entry.name}", module.__name__)
                if callable(getattr(module, SEED_ENTRY, None)):
                    self.seed_modules.append((stem, module))
                    expose(stem, module, f"plugins/{entry.name}")
        for index, instance in enumerate(project.plugin_config("plugin")):
            where = f"plugin[{index}] '{instance.name}'"
            local = _local_file(self.folder, instance.module.partition(".")[0])
            if local is not None:
                confined_path(project, local, what=f"module '{instance.module}'", file=site_file,
                              key_path=f"plugin[{index}].module")
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
            self._note_lifecycle(_lifecycle_methods(obj), f"plugin '{instance.name}'", None)
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

    def _note_lifecycle(self, values: Any, origin: str, module_name: str | None) -> None:
        for value in values:
            role = lifecycle_role(value)
            # Module-level: only functions the module defines (not ones it imported from another plugin module).
            if role and (module_name is None or getattr(value, "__module__", None) == module_name):
                self.lifecycle.append((role, value, origin))

    def module(self, dotted: str, *, where: str | None = None) -> ModuleType:
        """A module of plugins/ (loaded under a private name), else an installed module by its name."""
        if dotted in self.modules:
            return self.modules[dotted]
        top, _, rest = dotted.partition(".")
        local = _local_file(self.folder, top)
        try:
            with folder_on_path(self.folder, keep_prefix=PRIVATE_PREFIX):
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
        name = f"{self.prefix}{stem}"  # the prefix is this project's own
        if name in sys.modules:
            return sys.modules[name]
        module = load_private_module(name, file)
        if name not in self.private_names:
            self.private_names.append(name)
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


def _lifecycle_methods(obj: Any) -> list[Any]:
    """An instance's `@on_init` / `@on_shutdown` methods, bound; found on its classes, so no property is read."""
    found: dict[str, Any] = {}
    for klass in reversed(type(obj).__mro__):
        for name, value in vars(klass).items():
            if lifecycle_role(value):
                found[name] = value
            else:
                found.pop(name, None)  # overridden without the mark
    return [getattr(obj, name) for name in found]


def _instance_config(project: ProjectContext, config_name: str | None, instance: str) -> dict[str, Any]:
    if config_name is None:
        return {}
    configs = project.plugin_config("plugin", scope="user_profile").config
    if config_name not in configs:
        log.warning(
            "plugin '%s': config '%s' is not in the user config (projects.%s.profiles.%s.plugin.config); "
            "using an empty config", instance, config_name, project.name, project.profile,
        )
    return dict(configs.get(config_name, {}))


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


# -- per-project state -------------------------------------------------------------------------------
STATE_KEY = "udf_plugins"
_lock = threading.Lock()
_load_numbers = itertools.count(1)
# The loads whose modules are in sys.modules, by plugins folder: a new load of the folder unloads them.
_loads: dict[Path, list[ProjectPlugins]] = {}


def _forget(project: ProjectContext, found: ProjectPlugins) -> None:
    for name in found.exposed:
        project.plugin_objects.pop(name, None)


def plugins_for(project: ProjectContext) -> ProjectPlugins:
    """The project's plugins, loaded on first use and kept in the project's own state.

    A reload that brings other plugin configs (a rotated API key in the user config) builds them again with those:
    the database is reopened then, and the instances' functions are registered anew.
    """
    configs = project.plugin_config("plugin", scope="user_profile").config
    with _lock:
        found = project.state.get(STATE_KEY)
        if found is not None:
            if found.configs == configs:
                return found
            _forget(project, found)  # its modules leave sys.modules below, with every earlier load of the folder
            del project.state[STATE_KEY]
        folder = project.path("plugins")
        # A name of its own per load (never reused, unlike an object's id): another load of the same folder (a
        # reload) imports the files as they are now, and the modules of earlier loads leave sys.modules. Those loads
        # keep their module objects and functions, so one that is put back (a refused reload) still works.
        for earlier in _loads.pop(folder, []):
            earlier.unload()
        digest = hashlib.sha1(f"{folder}:{next(_load_numbers)}".encode()).hexdigest()[:10]
        found = ProjectPlugins(folder=folder, prefix=f"{PRIVATE_PREFIX}{digest}_", configs=copy.deepcopy(configs))
        try:
            found.load(project)
        except BaseException:
            _forget(project, found)
            found.unload()
            raise
        project.state[STATE_KEY] = found
        _loads.setdefault(folder, []).append(found)
        return found


@hookimpl
def register_functions(conn, project):
    plugins_for(project).register(conn)


@hookimpl
def on_init(runtime):
    """The plugins' `@on_init` functions: one that fails stops the start, naming it (as a python/ module's does)."""
    loaded = runtime.context.state.get(STATE_KEY)
    for role, function, origin in loaded.lifecycle if loaded is not None else ():
        if role == "init":
            run_init_functions(runtime, [function], origin)


@hookimpl
def on_shutdown(runtime):
    loaded = runtime.context.state.get(STATE_KEY)
    for role, function, origin in loaded.lifecycle if loaded is not None else ():
        if role == "shutdown":
            run_shutdown_functions(runtime, [function], origin)
