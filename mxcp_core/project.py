"""Opening a project: site and user configuration, plugins, and the endpoint registry built once."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .config import UserConfig, find_site_file, load_site_config, load_user_config
from .errors import NotFoundError, suggest
from .hooks import Hooks
from .plugin_manager import PluginHost
from .records import (
    EndpointDefinition,
    Executor,
    InvalidEndpoint,
    ProjectContext,
    PromptDefinition,
    ResourceDefinition,
    ToolDefinition,
)

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return raw.strip().lower() in _TRUE


@attrs.define
class EndpointRegistry:
    """Every endpoint of a project, by kind and key, with the problems found while collecting them."""

    tools: dict[str, ToolDefinition]
    resources: dict[str, ResourceDefinition]
    prompts: dict[str, PromptDefinition]
    invalid: list[InvalidEndpoint]

    def all(self) -> list[EndpointDefinition]:
        return [*self.tools.values(), *self.resources.values(), *self.prompts.values()]

    def by_kind(self, kind: str) -> dict[str, Any]:
        try:
            return {"tool": self.tools, "resource": self.resources, "prompt": self.prompts}[kind]
        except KeyError:
            raise NotFoundError(f"unknown endpoint kind '{kind}' (expected tool, resource or prompt)") from None

    def get(self, kind: str, key: str) -> EndpointDefinition:
        endpoints = self.by_kind(kind)
        if key in endpoints:
            return endpoints[key]
        raise NotFoundError(f"{kind} '{key}' not found{suggest(key, endpoints)}")


@attrs.define(eq=False)
class Project:
    """A loaded project: its context, its plugins, and (lazily) its endpoints and executors."""

    context: ProjectContext
    host: PluginHost
    hooks: Hooks
    _registry: EndpointRegistry | None = None
    _executors: dict[str, Executor] | None = None

    @property
    def root(self) -> Path:
        return self.context.root

    def executors(self) -> dict[str, Executor]:
        if self._executors is None:
            self._executors = self.hooks.executors(self.context)
        return self._executors

    def endpoints(self) -> EndpointRegistry:
        """Collected once per project: serving never scans files per call."""
        if self._registry is None:
            self._registry = self._collect_endpoints()
        return self._registry

    def _collect_endpoints(self) -> EndpointRegistry:
        tools, bad_tools = self.hooks.tools(self.context)
        resources, bad_resources = self.hooks.resources(self.context)
        prompts, bad_prompts = self.hooks.prompts(self.context)
        invalid = [*bad_tools, *bad_resources, *bad_prompts]
        executors = self.executors()

        def settle(definitions: list[Any]) -> dict[str, Any]:
            settled = {}
            for definition in definitions:
                if not definition.enabled:
                    continue
                if definition.kind != "prompt" and definition.function is None:
                    language = definition.language or _infer_language(definition, executors)
                    if language is None or language not in executors:
                        invalid.append(
                            InvalidEndpoint(
                                kind=definition.kind,
                                origin=definition.origin,
                                name=definition.key,
                                message=_language_problem(definition, language, executors),
                            )
                        )
                        continue
                    if language != definition.language:
                        definition = attrs.evolve(definition, language=language)
                settled[definition.key] = definition
            return settled

        return EndpointRegistry(
            tools=settle(tools), resources=settle(resources), prompts=settle(prompts), invalid=invalid
        )


def _infer_language(definition: EndpointDefinition, executors: dict[str, Executor]) -> str | None:
    """No `language:` given: the source file's extension decides; inline code is SQL."""
    source = definition.source
    if source is None:
        return None
    if source.file is None:
        return "sql" if "sql" in executors else None
    suffix = source.file.suffix.lower()
    for language, executor in executors.items():
        if suffix in executor.file_suffixes:
            return language
    return None


def _language_problem(definition: EndpointDefinition, language: str | None, executors: dict[str, Any]) -> str:
    if definition.source is None:
        return "no source given (expected source.code or source.file)"
    if language is None:
        return (
            f"cannot tell the language of {definition.source.file.name if definition.source.file else 'the source'}; "
            f"set language: to one of {', '.join(sorted(executors)) or '(no executor loaded)'}"
        )
    return (
        f"no executor for language '{language}'{suggest(language, executors)} "
        f"(available: {', '.join(sorted(executors)) or 'none'})"
    )


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    strict: bool | None = None,
    warn: bool = True,
    entry_points: Iterable[Any] | None = None,
) -> PluginHost:
    """A plugin host with the essential `core` plugin and the `mxcp` entry points (all, or those given)."""
    from .execution import CorePlugin

    host = PluginHost(disabled=disabled, strict=strict, warn=warn)
    host.register(CorePlugin(), "core")
    host.load_entry_points(entry_points)
    return host


def open_project(
    start: Path | None = None,
    *,
    profile: str | None = None,
    readonly: bool | None = None,
    disabled_plugins: Iterable[str] = (),
    strict_plugins: bool | None = None,
    extra_plugins: Iterable[tuple[str, Any]] = (),
    host: PluginHost | None = None,
) -> Project:
    """Find mxcp-site.yml from `start`, load plugins and configuration for the active profile."""
    site_file = find_site_file(start)
    root = site_file.parent
    site, active_profile = load_site_config(site_file, profile)
    if host is None:
        host = load_plugins(disabled=[*disabled_plugins, *site.disable_plugins], strict=strict_plugins)
    for name, plugin in extra_plugins:
        host.register(plugin, name)
    host.check_pending()
    hooks = Hooks(host.pm)

    site_profile = site.profile_config(active_profile)
    env_readonly = _env_flag("MXCP_READONLY")
    is_readonly = bool(
        readonly if readonly is not None else env_readonly if env_readonly is not None else site_profile.duckdb.readonly
    )
    duckdb_path = os.environ.get("MXCP_DUCKDB_PATH") or site_profile.duckdb.path
    if duckdb_path is None:
        duckdb_path = str(Path(site.paths.data) / f"db-{active_profile}.duckdb")
    if duckdb_path != ":memory:" and not Path(duckdb_path).is_absolute():
        duckdb_path = str((root / duckdb_path).resolve())

    context = ProjectContext(
        root=root,
        site=site,
        user=UserConfig(),
        profile=active_profile,
        readonly=is_readonly,
        duckdb_path=duckdb_path,
        site_file=site_file,
    )

    def resolver(reference: str) -> Any:
        found = hooks.resolve_secret(reference=reference, project=context)
        return None if found is None else found.value

    user = load_user_config(site.project, active_profile, resolver=resolver)
    context = attrs.evolve(context, user=user)
    return Project(context=context, host=host, hooks=hooks)

