"""Opening a project: site and user configuration, plugins, and the endpoint registry built once."""
from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from . import redaction
from .config import (
    NOT_RESOLVED,
    SectionRegistry,
    UserConfig,
    find_site_file,
    load_site_config,
    prepare_user_projects,
    read_user_file,
    structure_user_config,
    values_unquoted,
)
from .environment import env_flag
from .errors import ConfigError, NotFoundError, suggest
from .features import ENDPOINT_KEY_PLUGINS, ENV_PLUGINS, FOLDER_PLUGINS, LANGUAGE_PLUGINS, plugin_state
from .hooks import Hooks
from .plugin_manager import PluginHost, load_plugins
from .records import (
    EndpointDefinition,
    Executor,
    InvalidEndpoint,
    ProjectContext,
    PromptDefinition,
    ResourceDefinition,
    SecretLoad,
    ToolDefinition,
)

log = logging.getLogger(__name__)


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
    # References of the user config's active profile that resolved in the last load (`validate` reports it).
    references_resolved: int = 0

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
        invalid += self._unread_folders([d.origin for d in (*tools, *resources, *prompts, *invalid)])
        executors = self.executors()
        disabled = frozenset(self.host.disabled)

        def settle(definitions: list[Any]) -> dict[str, Any]:
            settled = {}
            for definition in definitions:
                if not definition.enabled:
                    continue
                missing = self._missing_endpoint_plugin(definition)
                if missing:
                    invalid.append(InvalidEndpoint(kind=definition.kind, origin=definition.origin,
                                                   name=definition.key, message=missing))
                    continue
                if definition.kind != "prompt" and definition.function is None:
                    language = definition.language or _infer_language(definition, executors)
                    if language is None or language not in executors:
                        invalid.append(
                            InvalidEndpoint(
                                kind=definition.kind,
                                origin=definition.origin,
                                name=definition.key,
                                message=_language_problem(definition, language, executors, disabled),
                            )
                        )
                        continue
                    if language != definition.language:
                        definition = attrs.evolve(definition, language=language)
                errors = [p.message for p in self.hooks.check_endpoint(definition, self.context)
                          if p.severity == "error"]
                if errors:
                    invalid.append(InvalidEndpoint(kind=definition.kind, origin=definition.origin,
                                                   name=definition.key, message="; ".join(errors)))
                    continue
                settled[definition.key] = definition
            return settled

        return EndpointRegistry(
            tools=settle(tools), resources=settle(resources), prompts=settle(prompts), invalid=invalid
        )

    def _missing_endpoint_plugin(self, definition: EndpointDefinition) -> str | None:
        """An endpoint key whose meaning a plugin provides (`policies:`) must not be served without such a plugin."""
        for key, plugin in ENDPOINT_KEY_PLUGINS.items():
            if getattr(definition, key, None) and ("endpoint", key) not in self.context.sections:
                state = plugin_state(plugin, frozenset(self.host.disabled))
                return (f"declares {key}: but no loaded plugin provides them ({state}); "
                        f"it is refused rather than served without its {key}")
        return None

    def _unread_folders(self, origins: list[str]) -> list[InvalidEndpoint]:
        """Endpoint files or UDF modules in a folder whose builtin is off and that no other plugin read: named."""
        found = []
        for folder_name, plugin in FOLDER_PLUGINS.items():
            if self.host.pm.has_plugin(plugin):
                continue
            folder = self.context.path(folder_name)
            shown = getattr(self.context.site.paths, folder_name).rstrip("/")
            if folder_name == "plugins":
                # A replacement for udf_plugins reads the original's `plugin:` section too.
                read = ("site", "plugin") in self.context.sections
                suffixes: tuple[str, ...] = (".py",)
            else:
                read = any(o.startswith(f"{shown}/") or o.startswith(f"{folder}/") for o in origins)
                suffixes = (".yml", ".yaml")
            if read:
                continue
            if folder.is_dir() and any(p.suffix in suffixes for p in folder.rglob("*") if p.is_file()):
                found.append(InvalidEndpoint(
                    kind="tool" if folder_name != "plugins" else "plugin", origin=f"{shown}/",
                    message=f"the files in {shown}/ are read by "
                            f"{plugin_state(plugin, frozenset(self.host.disabled))}",
                ))
        return found


def _infer_language(definition: EndpointDefinition, executors: dict[str, Executor]) -> str | None:
    """No `language:` given: the source file's extension decides; inline code is SQL."""
    source = definition.source
    if source is None:
        return None
    if source.file is None:
        return "sql"  # inline code is SQL, as in the original
    suffix = source.file.suffix.lower()
    for language, executor in executors.items():
        if suffix in executor.file_suffixes:
            return language
    return None


def _language_problem(
    definition: EndpointDefinition, language: str | None, executors: dict[str, Any], disabled: frozenset[str]
) -> str:
    if definition.source is None:
        return "no source given (expected source.code or source.file)"
    if language is None:
        if definition.source.file is not None:
            suffix = definition.source.file.suffix.lower().lstrip(".")
            plugin = LANGUAGE_PLUGINS.get({"py": "python"}.get(suffix, suffix))
            if plugin is not None:
                return f"{definition.source.file.name} needs {plugin_state(plugin, disabled)}"
        return (
            f"cannot tell the language of {definition.source.file.name if definition.source.file else 'the source'}; "
            f"set language: to one of {', '.join(sorted(executors)) or '(no executor loaded)'}"
        )
    if language in LANGUAGE_PLUGINS:
        return f"language '{language}' is run by {plugin_state(LANGUAGE_PLUGINS[language], disabled)}"
    return (
        f"no executor for language '{language}'{suggest(language, executors)} "
        f"(available: {', '.join(sorted(executors)) or 'none'})"
    )


def open_project(
    start: Path | None = None,
    *,
    profile: str | None = None,
    readonly: bool | None = None,
    disabled_plugins: Iterable[str] = (),
    strict_plugins: bool | None = None,
    extra_plugins: Iterable[tuple[str, Any]] = (),
    host: PluginHost | None = None,
    problems: LoadProblems | None = None,
) -> Project:
    """Find mxcp-site.yml from `start`, load plugins and configuration for the active profile.

    The core's keys are read first (they say which plugins are disabled), then the plugins are loaded (or `host`,
    already loaded by the CLI, is used), then each plugin's sections are structured into its own classes.
    With `problems`, references of the user config that fail to resolve are collected there rather than stopping
    the load (`mxcp validate` reports them all).
    """
    site_file = find_site_file(start)
    root = site_file.parent
    site, active_profile, raw_site = load_site_config(site_file, profile)
    if host is None:
        host = load_plugins(disabled=[*disabled_plugins, *site.disable_plugins], strict=strict_plugins)
        host.site_disabled = frozenset(site.disable_plugins)
    else:
        _fit_host(host, site.disable_plugins, site_file)
        for name in disabled_plugins:
            host.disable(name)
    for name, plugin in extra_plugins:
        host.register(plugin, name)
    host.check_pending()
    for name, hint in host.unknown_disabled():
        log.warning("plugin '%s' is disabled, but no plugin has that name%s", name, hint)
    hooks = host.hooks
    sections = SectionRegistry(claimed=hooks.config_sections(), disabled=frozenset(host.disabled))
    for variable, (scope, section, plugin) in ENV_PLUGINS.items():
        if env_flag(variable) and (scope, section) not in sections.claimed:
            raise ConfigError(f"{variable} is set, but its feature is provided by "
                              f"{plugin_state(plugin, frozenset(host.disabled))}")
    settings = sections.settle_site(raw_site, active_profile, site_file)

    site_profile = site.profile_config(active_profile)
    env_readonly = env_flag("MXCP_READONLY")
    is_readonly = bool(
        readonly if readonly is not None else env_readonly if env_readonly is not None else site_profile.duckdb.readonly
    )
    duckdb_path = os.environ.get("MXCP_DUCKDB_PATH") or site_profile.duckdb.path
    if duckdb_path is None:
        duckdb_path = str(Path(site.paths.data) / f"db-{active_profile}.duckdb")
    if duckdb_path != ":memory:" and not Path(duckdb_path).is_absolute():
        duckdb_path = str((root / duckdb_path).resolve())

    declared = {key: section for key, (_, section) in sections.claimed.items()}
    context = ProjectContext(
        root=root,
        site=site,
        user=UserConfig(),
        profile=active_profile,
        readonly=is_readonly,
        duckdb_path=duckdb_path,
        site_file=site_file,
        settings=settings,
        sections=declared,
    )
    project = Project(context=context, host=host, hooks=hooks)
    project.context = _with_user_config(project, sections, problems)
    return project


USER_SCOPES = ("user", "user_profile")


@attrs.define
class LoadProblems:
    """What `mxcp validate` collects rather than stopping at the first: every secret reference that failed, and
    the first other error of the user config (which a failed reference would otherwise hide)."""

    references: list[ConfigError] = attrs.Factory(list)
    config: list[ConfigError] = attrs.Factory(list)

    def all(self) -> list[ConfigError]:
        return [*self.references, *self.config]


def reread_project(project: Project) -> Project:
    """The project read again for a reload: the site and user config, references resolved afresh, endpoints.

    Same folder, profile, read-only mode and plugin host. Raises ConfigError (the running project stays untouched)
    when a file or a reference fails, when the user config read at start is gone, when `disable_plugins:` changed
    (plugins are loaded once per process), or when a plugin refuses the change (`check_reload`: sign-in is set up
    when a server starts); the caller decides whether to swap the result in.
    """
    host = project.host
    before = project.context.user_config_file
    if before is not None and not before.exists():
        raise ConfigError("the user config read at start no longer exists (restore it, or restart the server "
                          "to run without one)", file=before)
    site_file = find_site_file(project.root)
    site, _, _ = load_site_config(site_file, project.context.profile)
    if host.site_disabled is not None and frozenset(site.disable_plugins) != host.site_disabled:
        raise ConfigError("disable_plugins: changed; plugins are loaded once per process, so restart the server "
                          "to load or unload plugins", file=site_file)
    fresh = open_project(project.root, profile=project.context.profile, readonly=project.context.readonly,
                         host=host)
    refusals = project.hooks.check_reload(project=project.context, fresh=fresh.context)
    if refusals:
        raise ConfigError("; ".join(refusals), file=fresh.context.user_config_file)
    return fresh


def _with_user_config(
    project: Project,
    sections: SectionRegistry,
    problems: LoadProblems | None,
    base: ProjectContext | None = None,
) -> ProjectContext:
    """`base` (the project's context) with the user config read, its references resolved in one SecretLoad.

    With `problems`, a reference that fails is recorded there (and left empty) instead of stopping the load, so
    `validate` reports every one; the project's `references_resolved` counts those that resolved.
    """
    hooks = project.hooks
    context = base if base is not None else project.context
    load = SecretLoad()
    resolved = 0

    def resolver(reference: str) -> Any:
        nonlocal resolved
        found = hooks.resolve_secret(reference=reference, project=context, load=load)
        if found is None:
            return NOT_RESOLVED
        # What a reference resolves to is a secret wherever it is used: masked from now on, errors included.
        redaction.masker.add(redaction.secret_values(found.value))
        resolved += 1
        return found.value

    def failed(problem: ConfigError) -> None:
        assert problems is not None
        problems.references.append(_masked(problem))

    on_error = failed if problems is not None else None
    settings = dict(context.settings)
    site = context.site
    try:
        # Errors about the user config describe values by their kind only: they may be secrets.
        with values_unquoted(), _masked_errors(), _references_from("user"):
            # The top-level sections first: a secret provider may read its own (`vault:`) while resolving.
            raw_user, user_file = read_user_file()
            settings = {**settings, **sections.settle("user", raw_user, file=user_file, key_path="")}
            context = attrs.evolve(context, settings=settings,
                                   user_config_file=user_file if user_file.exists() else None)
            prepared = prepare_user_projects(raw_user, site.project, context.profile, user_file, resolver, on_error)
            project.references_resolved = resolved
            try:
                user = structure_user_config(prepared, user_file)
                settings = {**settings, **sections.settle_user_profiles(prepared, site.project, context.profile,
                                                                        user_file)}
            except ConfigError as exc:
                if not (problems and problems.references):
                    raise
                # Left empty, a failed reference may fail its section's structure too: that is the same problem.
                failed_paths = [p.key_path or "" for p in problems.references]
                if not any((exc.key_path or "") == path or (exc.key_path or "").startswith(path + ".")
                           for path in failed_paths):
                    problems.config.append(_masked(exc))
                return context
    finally:
        load.close()
    return attrs.evolve(context, user=user, settings=settings)


def _fit_host(host: PluginHost, site_disabled: Iterable[str], site_file: Path) -> None:
    """A host loaded before the project (the CLI's) takes its `disable_plugins:`; it cannot serve two that differ."""
    wanted = frozenset(site_disabled)
    if host.site_disabled is not None and host.site_disabled != wanted:
        raise ConfigError(
            "the plugin host was loaded for a project that disables "
            f"{', '.join(sorted(host.site_disabled)) or 'no plugin'}; this one disables "
            f"{', '.join(sorted(wanted)) or 'none'} (open it with its own host)", file=site_file,
        )
    host.site_disabled = wanted
    for name in wanted:
        host.disable(name)


@contextmanager
def _masked_errors() -> Iterator[None]:
    """A configuration error never carries a secret value that was resolved before it."""
    try:
        yield
    except ConfigError as exc:
        masked = _masked(exc)
        if masked is exc:
            raise
        raise masked from None


def _masked(exc: ConfigError) -> ConfigError:
    masked = redaction.mask(exc.message)
    if masked == exc.message:
        return exc
    return ConfigError(masked, file=exc.file, line=exc.line, key_path=exc.key_path)


# -- files the project points at ---------------------------------------------------------------------------
_REFERENCE_ORIGIN: contextvars.ContextVar[str] = contextvars.ContextVar("mxcp_reference_origin", default="project")


def reference_origin() -> str:
    """Where the value reference being resolved comes from, for `resolve_secret` providers that read files.

    "user": the user's own config file (~/.mxcp/config.yml or MXCP_CONFIG), which the user wrote and trusts, so a
    `file://` path there may point anywhere. "project": anything else (mxcp-site.yml, endpoint YAML, a plugin
    resolving a value of its own section); whoever shipped the project chose those paths, so they are confined
    to the project folder and `allowed_paths:` (see `confined_path`).
    """
    return _REFERENCE_ORIGIN.get()


@contextmanager
def _references_from(origin: str) -> Iterator[None]:
    token = _REFERENCE_ORIGIN.set(origin)
    try:
        yield
    finally:
        _REFERENCE_ORIGIN.reset(token)


def allowed_folders(project: ProjectContext) -> list[Path]:
    """The project folder and the folders mxcp-site.yml's `allowed_paths:` names, resolved (symlinks followed)."""
    root = project.root.resolve()
    return [root, *((root / Path(entry).expanduser()).resolve() for entry in project.site.allowed_paths)]


def confined_path(
    project: ProjectContext,
    path: str | Path,
    *,
    what: str,
    base: Path | None = None,
    file: str | Path | None = None,
    line: int | None = None,
    key_path: str | None = None,
    reference: str | None = None,
) -> Path:
    """`path` (relative to `base`, default the project root) resolved, symlinks followed, if it lies inside the
    project folder or a folder of `allowed_paths:`; else a ConfigError naming `file` (the file holding the
    reference), the reference (`reference`, default `path` as given) and how to allow it. `what` says what the path is."""
    reference = reference if reference is not None else str(path)
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = (base if base is not None else project.root) / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ConfigError(f"{what} '{reference}' cannot be resolved: {exc}", file=file, line=line,
                          key_path=key_path) from None
    folders = allowed_folders(project)
    if any(resolved == folder or resolved.is_relative_to(folder) for folder in folders):
        return resolved
    via = f" (it resolves to {resolved})" if str(resolved) != reference else ""
    raise ConfigError(
        f"{what} '{reference}' is outside the project folder {folders[0]}{via}; "
        f"to allow it, list its folder under allowed_paths: in {project.site_file.name} "
        f"(e.g. allowed_paths: [{resolved.parent}])",
        file=file, line=line, key_path=key_path,
    )
