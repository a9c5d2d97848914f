"""The one place the core calls hooks: a small typed facade over the pluggy manager."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from .errors import ConfigError
from .records import (
    EndpointCall,
    EndpointDefinition,
    Executor,
    InvalidEndpoint,
    ProjectContext,
    PromptDefinition,
    ResourceDefinition,
    SecretValue,
    ToolDefinition,
)

log = logging.getLogger(__name__)


class Hooks:
    """Typed calls of every hook. Aggregating hooks attribute results to plugins to report duplicates."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    # -- lifecycle -----------------------------------------------------------------------------
    def on_init(self, runtime: Any) -> None:
        self.pm.hook.on_init(runtime=runtime)

    def on_shutdown(self, runtime: Any) -> None:
        """Every implementation runs even when one fails: shutdown must release all it can."""
        for impl in reversed(self.pm.hook.on_shutdown.get_hookimpls()):
            try:
                _call_impl(impl, runtime=runtime)
            except Exception:  # noqa: BLE001
                log.exception("on_shutdown of plugin '%s' failed", impl.plugin_name)

    # -- database ------------------------------------------------------------------------------
    def configure_database(self, conn: Any, project: ProjectContext) -> None:
        self.pm.hook.configure_database(conn=conn, project=project)

    def register_functions(self, conn: Any, project: ProjectContext) -> None:
        self.pm.hook.register_functions(conn=conn, project=project)

    # -- secrets -------------------------------------------------------------------------------
    def resolve_secret(self, reference: str, project: ProjectContext | None) -> SecretValue | None:
        return self.pm.hook.resolve_secret(reference=reference, project=project)

    # -- endpoints -----------------------------------------------------------------------------
    def tools(self, project: ProjectContext) -> tuple[list[ToolDefinition], list[InvalidEndpoint]]:
        return self._collect("provide_tool", ToolDefinition, project)

    def resources(self, project: ProjectContext) -> tuple[list[ResourceDefinition], list[InvalidEndpoint]]:
        return self._collect("provide_resource", ResourceDefinition, project)

    def prompts(self, project: ProjectContext) -> tuple[list[PromptDefinition], list[InvalidEndpoint]]:
        return self._collect("provide_prompt", PromptDefinition, project)

    def _collect(
        self, hook_name: str, expected: type, project: ProjectContext
    ) -> tuple[list[Any], list[InvalidEndpoint]]:
        """Definitions by key, plus the invalid ones; a key defined twice is reported naming both origins."""
        found: dict[str, EndpointDefinition] = {}
        invalid: list[InvalidEndpoint] = []
        for plugin_name, results in self._each(hook_name, project=project):
            for definition in results or ():
                if isinstance(definition, InvalidEndpoint):
                    invalid.append(definition)
                    continue
                if not isinstance(definition, expected):
                    invalid.append(
                        InvalidEndpoint(
                            kind=expected.kind,
                            origin=f"plugin '{plugin_name}'",
                            message=f"{hook_name} returned {type(definition).__name__}; "
                            f"expected {expected.__name__}",
                        )
                    )
                    continue
                if definition.origin == "<unknown>":
                    definition = _with_origin(definition, f"plugin '{plugin_name}'")
                previous = found.get(definition.key)
                if previous is not None:
                    invalid.append(
                        InvalidEndpoint(
                            kind=definition.kind,
                            origin=definition.origin,
                            name=definition.key,
                            message=f"duplicate {definition.kind} '{definition.key}': defined in "
                            f"{previous.origin} and in {definition.origin}",
                        )
                    )
                    continue
                found[definition.key] = definition
        return list(found.values()), invalid

    def executors(self, project: ProjectContext) -> dict[str, Executor]:
        by_language: dict[str, tuple[str, Executor]] = {}
        for plugin_name, results in self._each("provide_executor", project=project):
            for executor in results or ():
                previous = by_language.get(executor.language)
                if previous is not None:
                    raise ConfigError(
                        f"two executors for language '{executor.language}': plugin '{previous[0]}' "
                        f"and plugin '{plugin_name}'"
                    )
                by_language[executor.language] = (plugin_name, executor)
        return {language: executor for language, (_, executor) in by_language.items()}

    # -- calls and commands --------------------------------------------------------------------
    def call_endpoint(self, call: EndpointCall) -> Any:
        return self.pm.hook.call_endpoint(call=call)

    def register_commands(self, cli: Any) -> None:
        self.pm.hook.register_commands(cli=cli)

    def _each(self, hook_name: str, **kwargs: Any) -> Iterable[tuple[str, Any]]:
        """Call each implementation on its own, so results can be attributed to their plugin."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                # Results are gathered per plugin here, so there is no call for a wrapper to surround.
                raise ConfigError(
                    f"plugin '{impl.plugin_name}': {hook_name} cannot be a wrapper; return records instead"
                )
            yield impl.plugin_name, _call_impl(impl, **kwargs)


def _call_impl(impl: Any, **kwargs: Any) -> Any:
    return impl.function(*[kwargs[name] for name in impl.argnames])


def _with_origin(definition: EndpointDefinition, origin: str) -> EndpointDefinition:
    import attrs

    return attrs.evolve(definition, origin=origin)
