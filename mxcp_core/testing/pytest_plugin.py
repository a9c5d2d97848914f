"""pytest plugin for MXCP extension authors (entry point `pytest11`: `mxcp`).

Fixtures:
- `mxcp_project_factory(files_or_folder=None, *, site=None, user_config=None, env=None)` → ProjectHandle:
  a project in a temporary folder, from a dict `{relative path: text or mapping}` (mappings are written as
  YAML) or a copy of a folder; mxcp-site.yml is added when missing. HOME, MXCP_CONFIG and the other MXCP_*
  variables are isolated for the test. `user_config` is a mapping, YAML text, or a Path (relative to the
  project) and becomes MXCP_CONFIG; `env` sets environment variables for the test.
- `mxcp_client(project)` → async context manager giving an in-process `mcp.Client` connected to
  `create_server(runtime)`; `mxcp_client.run(project, lambda client: client.call_tool(...))` from sync tests.
- `mxcp_client_call(project, action)`: the same as `mxcp_client.run`.
- `mxcp_plugin(obj, name=None)`: register a plugin object or module for this test only: every project the
  factory's handles open includes it.

No pytest-asyncio is needed: async code runs with `anyio.run` / `asyncio.run` inside a plain test.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# Every variable the framework reads; none may leak in from the developer's shell.
MXCP_ENV = (
    "MXCP_CONFIG", "MXCP_PROFILE", "MXCP_DISABLE_PLUGINS", "MXCP_STRICT_PLUGINS", "MXCP_DUCKDB_PATH",
    "MXCP_READONLY", "MXCP_AUDIT_ENABLED", "MXCP_DEBUG",
)


@pytest.fixture
def mxcp_plugin() -> Iterator[Callable[..., Any]]:
    """`mxcp_plugin(my_plugin_module, name="mine")`: included in projects opened during this test only."""
    from mxcp_core.testing.project_handle import PluginRegistry

    registry = PluginRegistry()

    def register(plugin: Any, name: str | None = None) -> Any:
        return registry.register(plugin, name)

    register.registry = registry  # type: ignore[attr-defined]
    try:
        yield register
    finally:
        registry.clear()


@pytest.fixture
def mxcp_project_factory(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    mxcp_plugin: Callable[..., Any],
) -> Callable[..., Any]:
    """`mxcp_project_factory({"tools/x.yml": {...}, "python/x.py": "..."})` → ProjectHandle (.root, .open(),
    .runtime(), .call(kind, name, args)). A folder path copies that project instead."""
    from mxcp_core.testing.project_handle import ProjectHandle, build_project, write_files

    home = tmp_path_factory.mktemp("mxcp-home")
    monkeypatch.setenv("HOME", str(home))
    for name in MXCP_ENV:
        monkeypatch.delenv(name, raising=False)

    def make(
        source: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        site: Mapping[str, Any] | None = None,
        user_config: Mapping[str, Any] | str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ProjectHandle:
        root = build_project(tmp_path_factory.mktemp("mxcp-project"), source, site=site)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, str(value))
        if isinstance(user_config, Path):
            path = user_config if user_config.is_absolute() else root / user_config
            monkeypatch.setenv("MXCP_CONFIG", str(path))
        elif user_config is not None:
            path = home / ".mxcp" / "config.yml"
            write_files(path.parent, {path.name: user_config})
            monkeypatch.setenv("MXCP_CONFIG", str(path))
        return ProjectHandle(root, mxcp_plugin.registry)  # type: ignore[attr-defined]

    return make


@pytest.fixture
def mxcp_client(mxcp_plugin: Callable[..., Any]) -> Any:
    """`async with mxcp_client(project) as client:` an in-process MCP client (project: handle, Project, Runtime)."""
    from mxcp_core.testing.project_handle import ClientFactory

    return ClientFactory(mxcp_plugin.registry)  # type: ignore[attr-defined]


@pytest.fixture
def mxcp_client_call(mxcp_client: Any) -> Callable[..., Any]:
    """`mxcp_client_call(project, lambda client: client.call_tool("x", {}))`: connect, run, return the result."""
    return mxcp_client.run
