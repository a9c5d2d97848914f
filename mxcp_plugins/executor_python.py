"""Builtin plugin: the `python` executor. Functions from modules under python/, sync in a worker thread, async on the loop."""
from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import traceback
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
    run_init_functions,
    run_shutdown_functions,
    tracing,
)

log = logging.getLogger(__name__)


class LifecycleHooks:
    """The @on_init / @on_shutdown functions of one user module, as a plugin of the on_init/on_shutdown hooks."""

    def __init__(self, module: ModuleType, origin: str = "") -> None:
        self.module = module
        self.origin = origin or module.__name__  # `python/setup.py`, for messages
        marked = [
            value for value in vars(module).values()
            if getattr(value, "__module__", None) == module.__name__ and lifecycle_role(value)
        ]
        self.init_functions = [f for f in marked if lifecycle_role(f) == "init"]
        self.shutdown_functions = [f for f in marked if lifecycle_role(f) == "shutdown"]

    @hookimpl
    def on_init(self, runtime: Any) -> None:
        run_init_functions(runtime, self.init_functions, self.origin)

    @hookimpl
    def on_shutdown(self, runtime: Any) -> None:
        run_shutdown_functions(runtime, self.shutdown_functions, self.origin)


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
        # Modules that failed to import: file -> (one-line reason, the python/ file where it went wrong).
        self.failed: dict[Path, tuple[str, Path]] = {}
        # What a stopped executor had imported: started again, it serves that code (see `start`).
        self._kept: tuple[dict[Path, ModuleType], dict[Path, tuple[str, Path]]] | None = None

    # -- start and stop --------------------------------------------------------------------------
    def start(self, runtime: Any) -> None:
        """Put python/ on the import path and import every module in it, so lifecycle hooks register."""
        if self.runtime is runtime:
            return
        self.runtime = runtime
        self.python_dir = runtime.context.path("python")
        kept, self._kept = self._kept, None
        if kept is None and not self.python_dir.is_dir():
            return
        self._path_added = add_to_import_path(self.python_dir)
        if kept is not None:
            # Started again after a stop: a reload whose new set was refused goes back to this project, and it must
            # serve the code it served, not the files now on disk (a module added or broken since is not imported).
            self.modules, self.failed = kept
            for module in self.modules.values():
                sys.modules[module.__name__] = module
                self._loaded_names.append(module.__name__)
            self._register_lifecycle(runtime)
            return
        for file in sorted(self.python_dir.rglob("*.py")):
            relative = file.relative_to(self.python_dir)
            if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
                continue
            try:
                self._import(file)
            except MxcpError:
                # Only the endpoints of this module are invalid (they report it); the others still serve.
                continue
        self._warn_unexplained_failures(runtime)
        self._register_lifecycle(runtime)

    def _register_lifecycle(self, runtime: Any) -> None:
        assert self.python_dir is not None
        for file, module in list(self.modules.items()):
            origin = f"python/{_relative(file, self.python_dir.resolve())}"
            hooks = LifecycleHooks(module, origin)
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
        kept = (self.modules, self.failed) if self.runtime is not None else self._kept
        self.__init__()
        self._kept = kept

    def _import(self, file: Path) -> ModuleType:
        file = file.resolve()
        if file in self.modules:
            return self.modules[file]
        if file in self.failed:
            # Importing again would run its top-level code again, and fail the same way.
            raise MxcpError(self.failed[file][0])
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
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - sys.exit() at import too: report which file failed and why
            # The traceback only with --debug: the one-line reason names the file (and line) that failed.
            log.debug("importing %s failed", file, exc_info=True)
            message, origin = _import_failure(exc, file, self.python_dir)
            self.failed[file] = (message, origin)
            raise MxcpError(message) from None
        self.modules[file] = module
        return module

    def _warn_unexplained_failures(self, runtime: Any) -> None:
        """A failed module no endpoint reports (a helper nothing imports, one holding only @on_init) is logged."""
        if not self.failed:
            return
        sources = {
            compiled.definition.source.file.resolve()
            for compiled in runtime.endpoints()
            if compiled.definition.language == self.language
            and compiled.definition.source is not None and compiled.definition.source.file is not None
        }
        explained = {self.failed[f][1] for f in sources if f in self.failed}
        for file, (message, _) in self.failed.items():
            if file not in sources and file not in explained:
                log.warning("%s (no endpoint uses it; its @on_init/@on_shutdown functions, if any, do not run)",
                            message)

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
        if not tracing.active():
            return self._execute(call)
        with tracing.span("mxcp.python", {"mxcp.execution.language": "python"}) as span:
            span.set_attribute("code.function.name", getattr(self.function_for(call.endpoint), "__name__", ""))
            return self._execute(call)

    def _execute(self, call: EndpointCall) -> Any:
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


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _import_failure(exc: BaseException, file: Path, python_dir: Path | None) -> tuple[str, Path]:
    """`python/a.py: import failed: ...` on one line, naming the python/ file and line where it went wrong
    (another module `a` imports, for a shared helper that fails); with that file."""
    origin, line = file, None
    folder = python_dir.resolve() if python_dir is not None else None
    if isinstance(exc, SyntaxError) and exc.filename and folder is not None \
            and Path(exc.filename).resolve().is_relative_to(folder):
        origin, line = Path(exc.filename).resolve(), exc.lineno
    else:
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            candidate = Path(frame.f_code.co_filename).resolve()
            if folder is not None and candidate.is_relative_to(folder):
                origin, line = candidate, lineno  # the innermost frame in the project's own code wins
    where = ""
    if origin != file:
        where = f"in python/{_relative(origin, folder)}" + (f" line {line}" if line else "") + ": "
    elif line and not isinstance(exc, SyntaxError):  # a SyntaxError's text already gives the line
        where = f"line {line}: "
    reason = " ".join(str(exc).split()) or "(no message)"
    return f"python/{_relative(file, folder)}: import failed: {where}{type(exc).__name__}: {reason}", origin


def _relative(file: Path, folder: Path | None) -> str:
    try:
        return str(file.relative_to(folder)) if folder else file.name
    except ValueError:
        return file.name


@hookimpl
def provide_executor(project):
    return [PythonExecutor()]
