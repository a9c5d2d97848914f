"""Builtin plugin: the `python` executor. Functions from modules under python/, sync in a worker thread, async on the loop."""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mxcp_core import (
    EndpointCall,
    EndpointDefinition,
    ExecutionError,
    MxcpError,
    add_to_import_path,
    forget_modules_under,
    hookimpl,
    lifecycle_role,
    load_private_module,
    missing_secrets,
    remove_from_import_path,
)

log = logging.getLogger(__name__)


class LifecycleHooks:
    """The @on_init / @on_shutdown functions of one user module, as a plugin of the on_init/on_shutdown hooks."""

    def __init__(self, module: ModuleType, runner: Any) -> None:
        self.module = module
        self.runner = runner
        marked = [
            value for value in vars(module).values()
            if getattr(value, "__module__", None) == module.__name__ and lifecycle_role(value)
        ]
        self.init_functions = [f for f in marked if lifecycle_role(f) == "init"]
        self.shutdown_functions = [f for f in marked if lifecycle_role(f) == "shutdown"]

    @hookimpl
    def on_init(self, runtime: Any) -> None:
        for function in self.init_functions:
            self.runner(runtime, function)

    @hookimpl
    def on_shutdown(self, runtime: Any) -> None:
        for function in self.shutdown_functions:
            try:
                self.runner(runtime, function)
            except Exception:  # noqa: BLE001 - one failing cleanup must not stop the others
                log.exception("@on_shutdown function %s.%s failed", self.module.__name__, function.__name__)


class PythonExecutor:
    language = "python"
    file_suffixes = (".py",)

    def __init__(self) -> None:
        self.runtime: Any = None
        self.python_dir: Path | None = None
        self.modules: dict[Path, ModuleType] = {}
        self._loaded_names: list[str] = []
        self._lifecycle_names: list[str] = []
        self._functions: dict[tuple[str, str], Any] = {}
        self._path_added = False

    # -- start and stop --------------------------------------------------------------------------
    def start(self, runtime: Any) -> None:
        """Put python/ on the import path and import every module in it, so lifecycle hooks register."""
        if self.runtime is runtime:
            return
        self.runtime = runtime
        self.python_dir = runtime.context.path("python")
        if not self.python_dir.is_dir():
            return
        self._path_added = add_to_import_path(self.python_dir)
        for file in sorted(self.python_dir.rglob("*.py")):
            relative = file.relative_to(self.python_dir)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            self._import(file)
        for module in list(self.modules.values()):
            hooks = LifecycleHooks(module, _run_lifecycle_function)
            if hooks.init_functions or hooks.shutdown_functions:
                name = f"python:{module.__name__}"
                runtime.register_plugin(hooks, name)
                self._lifecycle_names.append(name)

    def stop(self) -> None:
        """Unregister lifecycle hooks and forget the user's modules, so another project can load its own."""
        if self.runtime is not None:
            for name in self._lifecycle_names:
                self.runtime.unregister_plugin(name)
        for name in self._loaded_names:
            sys.modules.pop(name, None)
        if self.python_dir is not None:
            forget_modules_under(self.python_dir)
            if self._path_added:
                remove_from_import_path(self.python_dir)
        self.__init__()

    def _import(self, file: Path) -> ModuleType:
        file = file.resolve()
        if file in self.modules:
            return self.modules[file]
        assert self.python_dir is not None
        try:
            relative = file.relative_to(self.python_dir.resolve())
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
        except ValueError:
            name = file.stem
        top = name.split(".")[0] if name else file.stem
        existing = sys.modules.get(name)
        clashes = top in sys.stdlib_module_names or (
            existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != file
        )
        try:
            if not name or clashes or "-" in name or " " in name:
                # A file named like a stdlib or installed module is loaded under a private name.
                module = self._load_private(file)
            else:
                module = importlib.import_module(name)
                if name not in self._loaded_names:
                    self._loaded_names.append(name)
        except Exception as exc:  # noqa: BLE001 - report which file failed and why
            log.error("importing %s failed", file, exc_info=True)
            raise MxcpError(f"python/{_relative(file, self.python_dir)}: import failed: {type(exc).__name__}: {exc}") from None
        self.modules[file] = module
        return module

    def _load_private(self, file: Path) -> ModuleType:
        name = "mxcp_user_" + "_".join(file.relative_to(self.python_dir).with_suffix("").parts).replace("-", "_")
        self._loaded_names.append(name)
        return load_private_module(name, file)

    # -- calls ---------------------------------------------------------------------------------
    def function_for(self, endpoint: EndpointDefinition) -> Any:
        key = (endpoint.kind, endpoint.key)
        found = self._functions.get(key)
        if found is not None:
            return found
        if endpoint.source is None or endpoint.source.file is None:
            raise MxcpError("python endpoints need source.file pointing at a module under python/")
        module = self._import(endpoint.source.file)
        names = [endpoint.name] if endpoint.kind == "tool" else ["main", endpoint.source.file.stem, endpoint.name]
        for name in names:
            candidate = getattr(module, name, None)
            if callable(candidate):
                self._functions[key] = candidate
                return candidate
        raise MxcpError(
            f"function {' or '.join(repr(n) for n in names)} not found in {endpoint.source.file.name}"
        )

    def validate(self, endpoint: EndpointDefinition, runtime: Any) -> list[str]:
        try:
            function = self.function_for(endpoint)
        except MxcpError as exc:
            return [str(exc)]
        return _signature_problems(function, endpoint)

    def execute(self, call: EndpointCall) -> Any:
        function = self.function_for(call.endpoint)
        try:
            if inspect.iscoroutinefunction(function):
                return call.runtime.run_async(functools.partial(function, **call.arguments))
            result = function(**call.arguments)
            if inspect.isawaitable(result):
                return call.runtime.run_async(_await, result)
            return result
        except MxcpError:
            raise
        except Exception as exc:
            # The client gets the message; the server log gets the whole story.
            log.error("%s '%s' raised", call.endpoint.kind, call.endpoint.key, exc_info=True)
            message = str(exc) or type(exc).__name__
            missing = missing_secrets(call)
            if missing:
                profile = call.runtime.context.profile
                names = ", ".join(f"'{name}'" for name in missing)
                message += f" (secret {names} {'is' if len(missing) == 1 else 'are'} not configured for profile '{profile}')"
            raise ExecutionError(message) from exc


def _signature_problems(function: Any, endpoint: EndpointDefinition) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    function_params = {
        name: p for name, p in signature.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    declared = {p.name for p in endpoint.parameters}
    problems = []
    extra = sorted(declared - function_params.keys())
    if extra and not accepts_any:
        problems.append(f"function {function.__name__}() has no parameter(s) {', '.join(extra)} declared in the YAML")
    missing = sorted(
        name for name, p in function_params.items() if name not in declared and p.default is p.empty
    )
    if missing:
        problems.append(f"function {function.__name__}() requires {', '.join(missing)}, not declared in the YAML")
    return problems


def _run_lifecycle_function(runtime: Any, function: Any) -> None:
    result = function()
    if inspect.isawaitable(result):
        runtime.run_async(_await, result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _relative(file: Path, folder: Path | None) -> str:
    try:
        return str(file.relative_to(folder)) if folder else file.name
    except ValueError:
        return file.name


@hookimpl
def provide_executor(project):
    return [PythonExecutor()]
