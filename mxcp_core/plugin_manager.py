"""Finds, loads and reports plugins: entry points of group `mxcp`, builtins and third parties alike."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from .environment import env_flag, env_list
from .errors import PluginLoadError, suggest
from .markers import PROJECT_NAME, hookimpl
from .records import PluginFailure, PluginInfo

if TYPE_CHECKING:
    from importlib import metadata

    from .hooks import Hooks
    from .records import EndpointCall

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mxcp"
# The host's own implementation of `call_endpoint` runs every call; without it nothing works.
ESSENTIAL_PLUGINS = frozenset({"core"})
# Hooks through which a plugin guards calls: a plugin implementing one is never skipped for failing elsewhere.
# Sign-in (`http_sign_in`) and refusing reloads (`check_reload`) guard too: skipped, they would serve open.
GUARD_HOOKS = frozenset({"call_endpoint", "check_endpoint", "endpoint_visible", "identify_caller", "resolve_secret",
                         "http_sign_in", "check_reload"})
BUILTIN_PREFIX = "mxcp_plugins"


def disabled_from_env() -> set[str]:
    """Plugin names listed in MXCP_DISABLE_PLUGINS (comma separated)."""
    return set(env_list("MXCP_DISABLE_PLUGINS"))


def strict_from_env() -> bool:
    return bool(env_flag("MXCP_STRICT_PLUGINS"))


class CorePlugin:
    """The host's own, essential plugin: the innermost step of every call, and the core's commands."""

    @hookimpl(trylast=True)
    def call_endpoint(self, call: EndpointCall) -> Any:
        return call.runtime.execute_body(call)

    @hookimpl(tryfirst=True)
    def register_commands(self, cli: Any) -> None:
        from .cli.core_commands import add_core_commands

        add_core_commands(cli)


class PluginHost:
    """Owns the pluggy manager: loads entry points, isolates broken plugins, honours disabling."""

    def __init__(self, *, disabled: Iterable[str] = (), strict: bool | None = None, warn: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled) | disabled_from_env()
        self.strict = strict_from_env() if strict is None else strict
        # A host that only gathers CLI commands stays quiet: the project's own host reports the same failures.
        self.warn = warn
        self.failures: list[PluginFailure] = []
        self.skipped: list[str] = []
        self._sources: dict[str, metadata.EntryPoint | None] = {}
        for name in self.disabled - ESSENTIAL_PLUGINS:
            # pluggy itself refuses these names from now on, whoever registers them.
            self.pm.set_blocked(name)
        self._hooks: Hooks | None = None
        # The `disable_plugins:` of the project this host serves, once one was opened on it.
        self.site_disabled: frozenset[str] | None = None
        # Every plugin name this host has seen offered (entry points, registrations), to spot misspelled disables.
        self.known_names: set[str] = set(ESSENTIAL_PLUGINS)

    def unknown_disabled(self) -> list[tuple[str, str]]:
        """Disabled names that no plugin has: most likely misspelled; each with a did-you-mean (or '')."""
        return [(name, suggest(name, self.known_names)) for name in sorted(self.disabled - self.known_names)]

    @property
    def hooks(self) -> Hooks:
        """The typed facade over this host's hooks; plugins failing in isolatable hooks are reported by name."""
        if self._hooks is None:
            from .hooks import Hooks

            self._hooks = Hooks(self.pm, on_failure=self.report_failure)
        return self._hooks

    def disable(self, name: str) -> None:
        """Disable a plugin by name from now on (unregistering it when it is already loaded)."""
        if name in ESSENTIAL_PLUGINS or name in self.disabled:
            return
        self.disabled.add(name)
        if self.pm.has_plugin(name):
            self._sources.pop(name, None)
        self.pm.set_blocked(name)
        self.skipped.append(name)

    def report_failure(self, name: str, reason: str) -> None:
        """A loaded plugin failed in a hook whose failure can be isolated: skip it (fatal in strict mode).

        Not a plugin that guards calls (a wrapper, visibility, identity, sign-in, checks, secrets, reload refusals):
        skipping it would serve without its guard, so its failure stops the start, whatever the mode."""
        plugin = self.pm.get_plugin(name)
        guards = sorted({caller.name for caller in self.pm.get_hookcallers(plugin) or []} & GUARD_HOOKS) \
            if plugin is not None else []
        if guards:
            raise PluginLoadError(f"plugin '{name}' failed: {reason}; it guards calls ({', '.join(guards)}), so "
                                  "nothing is served without it")
        self._fail(name, _dist_name(self._sources.get(name)), reason)
        if name not in ESSENTIAL_PLUGINS:
            self.unregister(name)

    # -- loading -------------------------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Register every plugin of the `mxcp` entry point group, skipping disabled and broken ones."""
        if entry_points is None:
            # As importlib.metadata.entry_points(group=...) finds them, without importing it (~10 ms per command).
            from .entry_points import entry_points as find_entry_points

            entry_points = find_entry_points(ENTRY_POINT_GROUP)
        entry_points = list(entry_points)
        self.known_names |= {ep.name for ep in entry_points}
        for entry_point in sorted(entry_points, key=lambda ep: ep.name):
            if entry_point.name in self.disabled:
                self.skipped.append(entry_point.name)
                continue
            # The distribution's name only in failures: reading it parses its metadata (a few ms per plugin).
            if entry_point.name in self._sources:
                dist = _dist_name(entry_point)
                other = _dist_name(self._sources[entry_point.name]) if self._sources[entry_point.name] else "core"
                self._fail(
                    entry_point.name,
                    dist,
                    f"duplicate plugin name '{entry_point.name}': provided by {other} and by {dist}",
                )
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
                self._fail(entry_point.name, _dist_name(entry_point), f"import failed: {type(exc).__name__}: {exc}")
                continue
            self.register(plugin, entry_point.name, source=entry_point)

    def register(self, plugin: Any, name: str, *, source: metadata.EntryPoint | None = None) -> bool:
        """Register one plugin object or module; a failure is reported by name (fatal in strict mode)."""
        self.known_names.add(name)
        if self.pm.is_blocked(name):
            self.skipped.append(name)
            return False
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - pluggy raises ValueError / PluginValidationError
            self._fail(name, _dist_name(source), f"registration failed: {exc}")
            return False
        unknown = [caller.name for caller in self.pm.get_hookcallers(plugin) or [] if caller.spec is None]
        if unknown:
            self.pm.unregister(plugin)
            self._fail(
                name,
                _dist_name(source),
                "implements unknown hook(s): " + _with_suggestions(unknown),
            )
            return False
        self._sources[name] = source
        return True

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._sources.pop(name, None)

    def check_pending(self) -> None:
        """Fail loudly when any registered plugin implements a hook that does not exist."""
        self.pm.check_pending()

    def _fail(self, name: str, dist: str | None, reason: str) -> None:
        failure = PluginFailure(name=name, distribution=dist, reason=reason)
        if self.strict:
            raise PluginLoadError(f"plugin '{name}' failed to load: {reason}")
        if self.warn:
            log.warning("plugin '%s' failed to load and was skipped: %s", name, reason)
        self.failures.append(failure)

    # -- reporting -----------------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:  # a blocked (disabled) name
                continue
            source = self._sources.get(name)
            dist = source.dist if source is not None else None
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            module_name = getattr(plugin, "__name__", type(plugin).__module__)
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=dist.metadata["Name"] if dist is not None else None,
                    version=dist.version if dist is not None else None,
                    hooks=hooks,
                    builtin=module_name.startswith(BUILTIN_PREFIX) or name in ESSENTIAL_PLUGINS,
                )
            )
        return infos

    def plugin(self, name: str) -> Any:
        return self.pm.get_plugin(name)


def _dist_name(entry_point: metadata.EntryPoint | None) -> str | None:
    if entry_point is None or entry_point.dist is None:
        return None
    return entry_point.dist.metadata["Name"]


def _with_suggestions(unknown: list[str]) -> str:
    """`provide_tols (did you mean 'provide_tool'?), ...` for misspelled hook names."""
    known = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), f"{PROJECT_NAME}_spec")]
    return ", ".join(name + suggest(name, known) for name in sorted(unknown))


def load_plugins(
    *,
    disabled: Iterable[str] = (),
    strict: bool | None = None,
    warn: bool = True,
    entry_points: Iterable[Any] | None = None,
) -> PluginHost:
    """A plugin host with the essential `core` plugin and the `mxcp` entry points (all, or those given)."""
    host = PluginHost(disabled=disabled, strict=strict, warn=warn)
    host.register(CorePlugin(), "core")
    host.load_entry_points(entry_points)
    return host
