"""The one place the core calls hooks: a small typed facade over the pluggy manager."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from .errors import ConfigError, MxcpError
from .records import (
    ConfigSection,
    EndpointCall,
    EndpointDefinition,
    Executor,
    InvalidEndpoint,
    ProjectContext,
    Problem,
    PromptDefinition,
    ResourceDefinition,
    SecretLoad,
    SecretValue,
    ToolDefinition,
    UserContext,
)
from .sign_in import HttpSignIn, IdentityProvider, SignInStore

log = logging.getLogger(__name__)


class Hooks:
    """Typed calls of every hook. Aggregating hooks attribute results to plugins to report duplicates.

    Every call goes through pluggy (per plugin, through `subset_hook_caller`, where results must be attributed),
    so pluggy's tracing and `add_hookcall_monitoring` see all of them.
    """

    def __init__(
        self, pm: pluggy.PluginManager, on_failure: Callable[[str, str], None] | None = None
    ) -> None:
        self.pm = pm
        # How a plugin that fails in an isolatable hook (register_commands) is reported; by default, raised.
        self.on_failure = on_failure

    # -- configuration -------------------------------------------------------------------------
    def config_sections(self) -> dict[tuple[str, str], tuple[str, ConfigSection]]:
        """Every declared section by (scope, name), with the plugin that owns it; two owners are an error."""
        from .config import CORE_KEYS

        found: dict[tuple[str, str], tuple[str, ConfigSection]] = {}
        for plugin_name, results in self._each("config_sections"):
            if isinstance(results, ConfigSection):
                raise ConfigError(f"plugin '{plugin_name}': config_sections must return a list of ConfigSection")
            for section in results or ():
                if not isinstance(section, ConfigSection):
                    raise ConfigError(f"plugin '{plugin_name}': config_sections returned {type(section).__name__}; "
                                      "expected ConfigSection")
                key = (section.scope, section.name)
                if section.name in CORE_KEYS[section.scope]:
                    raise ConfigError(f"plugin '{plugin_name}' declares the {section.scope} section "
                                      f"'{section.name}', which belongs to the core")
                if key in found:
                    raise ConfigError(f"the {section.scope} section '{section.name}' is declared by plugin "
                                      f"'{found[key][0]}' and by plugin '{plugin_name}'")
                found[key] = (plugin_name, section)
        return found

    # -- lifecycle -----------------------------------------------------------------------------
    def on_init(self, runtime: Any) -> None:
        """Each plugin's on_init on its own: one raising a plain exception (a bug in the plugin) is reported by name
        and skipped, fatal in strict mode. An MxcpError (a problem the plugin explains, or a user module's @on_init
        function failing) stops the start: it is the project's, not the plugin's."""
        self._isolated("on_init", runtime=runtime)

    def on_shutdown(self, runtime: Any) -> None:
        """Every implementation runs even when one fails: shutdown must release all it can."""
        for plugin_name, call in self._single_callers("on_shutdown"):
            try:
                call(runtime=runtime)
            except Exception:  # noqa: BLE001
                log.exception("on_shutdown of plugin '%s' failed", plugin_name)

    # -- database ------------------------------------------------------------------------------
    def configure_database(self, conn: Any, project: ProjectContext) -> None:
        self.pm.hook.configure_database(conn=conn, project=project)

    def register_functions(self, conn: Any, project: ProjectContext) -> None:
        """As on_init: a plugin whose implementation raises is named and skipped; an MxcpError stops the open."""
        self._isolated("register_functions", conn=conn, project=project)

    # -- secrets -------------------------------------------------------------------------------
    def resolve_secret(
        self, reference: str, project: ProjectContext | None, load: SecretLoad | None = None
    ) -> SecretValue | None:
        """`load` groups the references read together (one per project load or reload); a fresh one by default."""
        if load is not None:
            return self.pm.hook.resolve_secret(reference=reference, project=project, load=load)
        load = SecretLoad()
        try:
            return self.pm.hook.resolve_secret(reference=reference, project=project, load=load)
        finally:
            load.close()

    def check_reload(self, project: ProjectContext, fresh: ProjectContext) -> list[str]:
        """Why plugins refuse to take the user config read again (none: take it)."""
        return [str(reason) for reason in self.pm.hook.check_reload(project=project, fresh=fresh) if reason]

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

    def check_endpoint(self, endpoint: EndpointDefinition, project: ProjectContext) -> list[Problem]:
        """Every plugin's problems with the endpoint; a plugin whose check raises reports that as an error."""
        problems: list[Problem] = []
        for plugin_name, call in self._single_callers("check_endpoint"):
            if not plugin_name:
                break
            try:
                found = call(endpoint=endpoint, project=project)
            except MxcpError as exc:
                found = [[str(exc)]]
            except Exception as exc:  # noqa: BLE001 - a checker bug must not let the endpoint through unchecked
                found = [[f"plugin '{plugin_name}' could not check it: {type(exc).__name__}: {exc}"]]
            for item in (found[0] if found else None) or ():
                problems.append(item if isinstance(item, Problem) else Problem(message=str(item)))
        return problems

    # -- callers -------------------------------------------------------------------------------
    def identify_caller(self, transport: str, request: Any, project: ProjectContext) -> UserContext:
        """The caller's identity; anonymous when no plugin knows it. A plugin that fails refuses the request."""
        found = self.pm.hook.identify_caller(transport=transport, request=request, project=project)
        if found is None:
            return UserContext.anonymous()
        if not isinstance(found, UserContext):
            raise MxcpError(f"identify_caller returned {type(found).__name__}; expected UserContext")
        return found

    @property
    def decides_visibility(self) -> bool:
        """Whether any plugin may hide endpoints (else every endpoint is visible to everyone, with no hook call)."""
        return bool(self.pm.hook.endpoint_visible.get_hookimpls())

    def endpoint_visible(self, endpoint: EndpointDefinition, user: UserContext, project: ProjectContext) -> bool:
        """False when any plugin hides the endpoint from `user`; an error hides it too (fail closed)."""
        try:
            answers = self.pm.hook.endpoint_visible(endpoint=endpoint, user=user, project=project)
        except Exception:  # noqa: BLE001
            log.exception("deciding whether %s '%s' is visible failed: hidden", endpoint.kind, endpoint.key)
            return False
        return all(answer is not False for answer in answers)

    # -- sign-in -------------------------------------------------------------------------------
    def http_sign_in(self, project: ProjectContext, base_url: str, resource_url: str) -> HttpSignIn | None:
        """The sign-in of HTTP serving, given every identity provider and a store opener; None: no sign-in."""
        providers = {name: provider for name, (_, provider) in self.sign_in_providers(project).items()}

        def open_store(persistence: Mapping[str, Any]) -> SignInStore:
            store = self.open_sign_in_store(dict(persistence), project)
            if store is None:
                kind = persistence.get("type", "sqlite")
                raise ConfigError(f"no loaded plugin opens a sign-in store of type '{kind}' (auth.persistence.type; "
                                  "the builtin 'auth_store_sqlite' opens 'sqlite')")
            return store

        found = self.pm.hook.http_sign_in(project=project, base_url=base_url, resource_url=resource_url,
                                          providers=providers, open_store=open_store)
        if found is not None and not isinstance(found, HttpSignIn):
            raise MxcpError(f"http_sign_in returned {type(found).__name__}; expected HttpSignIn")
        return found

    def sign_in_providers(self, project: ProjectContext) -> dict[str, tuple[str, IdentityProvider]]:
        """Identity providers by name, with the plugin offering each; a name offered twice is an error naming both."""
        by_name: dict[str, tuple[str, IdentityProvider]] = {}
        for plugin_name, results in self._each("sign_in_providers", project=project):
            for provider in results or ():
                if not isinstance(provider, IdentityProvider):
                    raise ConfigError(f"plugin '{plugin_name}': sign_in_providers must return IdentityProvider "
                                      f"records, not {type(provider).__name__}")
                previous = by_name.get(provider.name)
                if previous is not None:
                    raise ConfigError(f"two sign-in providers named '{provider.name}': plugin '{previous[0]}' "
                                      f"and plugin '{plugin_name}'")
                by_name[provider.name] = (plugin_name, provider)
        return by_name

    def open_sql_engine(self, settings: Any, project: ProjectContext) -> Any | None:
        return self.pm.hook.open_sql_engine(settings=settings, project=project)

    def open_audit_sink(self, settings: Any, project: ProjectContext) -> Any | None:
        return self.pm.hook.open_audit_sink(settings=settings, project=project)

    def open_sign_in_store(self, persistence: dict[str, Any], project: ProjectContext) -> SignInStore | None:
        return self.pm.hook.open_sign_in_store(persistence=persistence, project=project)

    # -- calls and commands --------------------------------------------------------------------
    def call_endpoint(self, call: EndpointCall) -> Any:
        return self.pm.hook.call_endpoint(call=call)

    def register_commands(self, cli: Any) -> None:
        """Each plugin adds its commands on its own: one that raises is reported by name, the others add theirs."""
        for plugin_name, call in self._single_callers("register_commands"):
            try:
                call(cli=cli)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break every command
                if self.on_failure is None:
                    raise
                self.on_failure(plugin_name, f"register_commands failed: {type(exc).__name__}: {exc}")

    def _isolated(self, hook_name: str, **kwargs: Any) -> None:
        """Call each implementation in turn; a plugin that raises (but for MxcpError) is reported and skipped."""
        for plugin_name, call in self._single_callers(hook_name):
            try:
                call(**kwargs)
            except MxcpError:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the others down
                if self.on_failure is None or not plugin_name:
                    raise
                log.debug("%s of plugin '%s' failed", hook_name, plugin_name, exc_info=True)
                self.on_failure(plugin_name, f"{hook_name} failed: {type(exc).__name__}: {exc}")

    def _single_callers(self, hook_name: str) -> Iterable[tuple[str, Any]]:
        """One pluggy caller per implementation (first to run first), so each can be attributed and isolated."""
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        if not impls:
            # Nothing implements it: still one (empty) call, so tracing shows the hook was reached.
            yield "", caller
            return
        for impl in reversed(impls):
            others = [other.plugin for other in impls if other is not impl]
            yield impl.plugin_name, self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _each(self, hook_name: str, **kwargs: Any) -> Iterable[tuple[str, Any]]:
        """Call each implementation on its own, so results can be attributed to their plugin."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                # Results are gathered per plugin here, so there is no call for a wrapper to surround.
                raise ConfigError(
                    f"plugin '{impl.plugin_name}': {hook_name} cannot be a wrapper; return records instead"
                )
        for plugin_name, call in self._single_callers(hook_name):
            results = call(**kwargs)
            yield plugin_name, (results[0] if results else None)


def _with_origin(definition: EndpointDefinition, origin: str) -> EndpointDefinition:
    import attrs

    return attrs.evolve(definition, origin=origin)
