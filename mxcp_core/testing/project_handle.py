"""Temporary projects, plugins registered for one test, and in-process MCP clients.

Nothing heavy is imported at module level: the pytest plugin imports this module in every test session, and
`mcp` alone costs more than half a second to import.
"""
from __future__ import annotations

import inspect
import os
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from ..execution import Runtime
    from ..project import Project

DEFAULT_SITE: dict[str, Any] = {"mxcp": 1, "project": "test", "profile": "default"}
SITE_FILE = "mxcp-site.yml"

FileContent = Union[str, bytes, Mapping[str, Any], list]


def _dump_yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_files(root: Path, files: Mapping[str, FileContent]) -> None:
    """Write `{relative path: content}` under root. Text is dedented; mappings and lists are written as YAML."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(textwrap.dedent(content), encoding="utf-8")
        else:
            path.write_text(_dump_yaml(content), encoding="utf-8")


def build_project(
    root: Path,
    source: Mapping[str, FileContent] | str | os.PathLike[str] | None = None,
    *,
    site: Mapping[str, Any] | None = None,
) -> Path:
    """Fill `root` with a project: a copy of a folder, or files from a dict. Adds mxcp-site.yml when missing.

    `site` (a mapping) replaces the default mxcp-site.yml (project `test`, profile `default`).
    """
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(source, Mapping):
        write_files(root, source)
    elif source is not None:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"project folder {folder} does not exist")
        # Local databases, caches and virtual environments of the original are not part of the project.
        shutil.copytree(
            folder, root, dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("*.duckdb", "*.duckdb.wal", "__pycache__", ".venv", ".pytest_cache"),
        )
    if site is not None:
        write_files(root, {SITE_FILE: dict(site)})
    elif not (root / SITE_FILE).exists():
        write_files(root, {SITE_FILE: DEFAULT_SITE})
    return root


class PluginRegistry:
    """Plugin objects registered for the current test; every project a ProjectHandle opens includes them."""

    def __init__(self) -> None:
        self._plugins: list[tuple[str, Any]] = []

    def register(self, plugin: Any, name: str | None = None) -> Any:
        name = name or _plugin_name(plugin)
        if any(existing == name for existing, _ in self._plugins):
            raise ValueError(f"a test plugin named '{name}' is already registered")
        self._plugins.append((name, plugin))
        return plugin

    def unregister(self, name: str) -> None:
        self._plugins = [(n, p) for n, p in self._plugins if n != name]

    def clear(self) -> None:
        self._plugins.clear()

    @property
    def plugins(self) -> list[tuple[str, Any]]:
        return list(self._plugins)


def _plugin_name(plugin: Any) -> str:
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return f"test:{name}"


class ProjectHandle:
    """A project in a temporary folder: open it, start a runtime on it, or call one endpoint."""

    def __init__(self, root: Path, registry: PluginRegistry | None = None) -> None:
        self.root = root
        self.registry = registry or PluginRegistry()

    def __repr__(self) -> str:
        return f"ProjectHandle({str(self.root)!r})"

    def write(self, files: Mapping[str, FileContent]) -> ProjectHandle:
        """Add or replace files (projects opened afterwards see them)."""
        write_files(self.root, files)
        return self

    def open(self, **options: Any) -> Project:
        """`open_project` on this folder with the test's plugins; options go to `open_project` (profile=...)."""
        from ..project import open_project

        extra = [*self.registry.plugins, *options.pop("extra_plugins", ())]
        if extra and "host" not in options:
            options["host"] = _host_without_shadowed(self.root, extra, options)
        return open_project(self.root, extra_plugins=extra, **options)

    @contextmanager
    def runtime(self, *, skip_invalid: bool = False, **options: Any) -> Iterator[Runtime]:
        """A started Runtime (on_init run, database open); stopped when the block ends."""
        from ..execution import Runtime

        runtime = Runtime(self.open(**options), skip_invalid=skip_invalid)
        runtime.start()
        try:
            yield runtime
        finally:
            runtime.stop()

    def call(self, kind: str, name: str, arguments: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run one call in a fresh runtime, as `mxcp run` does; options go to `Runtime.call` (user=, caller=)."""
        with self.runtime() as runtime:
            return runtime.call(kind, name, dict(arguments or {}), **options)

    def tool(self, tool_name: str, /, **arguments: Any) -> Any:
        """Shorthand: `project.tool("add", a=1, b=2)`."""
        return self.call("tool", tool_name, arguments)


def _host_without_shadowed(root: Path, extra: list[tuple[str, Any]], options: Mapping[str, Any]) -> Any:
    """A plugin host like `open_project` builds, minus installed plugins that a test plugin replaces.

    A plugin package's own tests register its module while the package may also be installed: the installed
    copy (same entry point name, or same module) gives way to the test's, instead of being registered twice.
    Returns None when nothing is shadowed, so `open_project` builds its host as usual.
    """
    from importlib import metadata

    from ..config import find_site_file, load_site_config
    from ..plugin_manager import ENTRY_POINT_GROUP, load_plugins

    names = {name for name, _ in extra}
    modules = {getattr(plugin, "__name__", None) for _, plugin in extra if inspect.ismodule(plugin)}
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    kept = [ep for ep in entry_points if ep.name not in names and ep.value not in modules]
    if len(kept) == len(entry_points):
        return None
    site, _, _ = load_site_config(find_site_file(root), options.get("profile"))
    return load_plugins(
        disabled=[*options.get("disabled_plugins", ()), *site.disable_plugins],
        strict=options.get("strict_plugins"),
        entry_points=kept,
    )


RuntimeSource = Union[ProjectHandle, "Project", "Runtime", str, os.PathLike]


class ClientFactory:
    """`async with factory(project) as client:` an in-process `mcp.Client` on `create_server(runtime)`.

    `project` is a ProjectHandle, a Project, a started Runtime (left running), or a project folder.
    `factory.run(project, lambda client: client.call_tool(...))` does the same from synchronous code.
    """

    def __init__(self, registry: PluginRegistry | None = None) -> None:
        self.registry = registry or PluginRegistry()

    @asynccontextmanager
    async def __call__(self, source: RuntimeSource, **client_options: Any) -> AsyncIterator[Any]:
        import mcp

        from ..server import create_server

        with self._runtime(source) as runtime:
            async with mcp.Client(create_server(runtime), **client_options) as client:
                yield client

    @contextmanager
    def _runtime(self, source: RuntimeSource) -> Iterator[Runtime]:
        from ..execution import Runtime
        from ..project import Project

        if isinstance(source, Runtime):
            source.start()  # no-op when already started; the caller keeps ownership
            yield source
            return
        if isinstance(source, Project):
            runtime = Runtime(source)
            runtime.start()
            try:
                yield runtime
            finally:
                runtime.stop()
            return
        handle = source if isinstance(source, ProjectHandle) else ProjectHandle(Path(source), self.registry)
        with handle.runtime() as runtime:
            yield runtime

    def run(self, source: RuntimeSource, action: Callable[[Any], Any], **client_options: Any) -> Any:
        """Connect, run `action(client)` (awaited when it returns an awaitable), disconnect; returns its result."""
        import anyio

        async def main() -> Any:
            async with self(source, **client_options) as client:
                result = action(client)
                if inspect.isawaitable(result):
                    result = await result
                return result

        return anyio.run(main)


def tool_result(result: Any) -> Any:
    """The value of a `CallToolResult`: structured content (unwrapped from `{"result": ...}`), else the text.

    An `is_error` result raises AssertionError with the error text, so a test fails with the server's message.
    """
    import json

    if getattr(result, "is_error", False):
        raise AssertionError(f"tool call failed: {_text_of(result)}")
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return structured["result"]
        return structured
    text = _text_of(result)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(result, "content", None) or [])

