"""The attrs records that hooks take and return: the vocabulary shared by the core and every plugin."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from .config import SiteConfig, UserConfig, ProjectUserConfig
    from .typesystem import ParameterSpec, TypeSpec


@attrs.frozen
class SecretValue:
    """The value a `resolve_secret` provider found for a reference (a string, or a mapping)."""

    value: Any = attrs.field(repr=False)


@attrs.frozen
class SourceSpec:
    """Where an endpoint's body lives: inline `code`, or a `file` resolved to an absolute path."""

    code: str | None = None
    file: Path | None = None

    def read(self) -> str:
        if self.code is not None:
            return self.code
        if self.file is None:
            return ""
        return self.file.read_text(encoding="utf-8")


@attrs.frozen(kw_only=True)
class EndpointDefinition:
    """What every endpoint kind has in common. `origin` is the YAML file or the plugin that provided it."""

    kind: ClassVar[str] = "endpoint"

    name: str
    description: str = ""
    parameters: tuple[ParameterSpec, ...] = ()
    return_type: TypeSpec | None = None
    language: str | None = None
    source: SourceSpec | None = None
    # A Python callable that implements the endpoint directly (plugins providing endpoints from Python alone).
    function: Callable[..., Any] | None = attrs.field(default=None, eq=False)
    annotations: Mapping[str, Any] = attrs.field(factory=dict)
    tags: tuple[str, ...] = ()
    tests: tuple[Mapping[str, Any], ...] = ()
    policies: Mapping[str, Any] | None = None
    enabled: bool = True
    timeout: float | None = None
    origin: str = "<unknown>"

    @property
    def key(self) -> str:
        """The name clients use: tool and prompt name, resource URI."""
        return self.name


@attrs.frozen(kw_only=True)
class ToolDefinition(EndpointDefinition):
    kind: ClassVar[str] = "tool"


@attrs.frozen(kw_only=True)
class ResourceDefinition(EndpointDefinition):
    kind: ClassVar[str] = "resource"

    uri: str
    mime_type: str | None = None

    @property
    def key(self) -> str:
        return self.uri

    @property
    def is_template(self) -> bool:
        return "{" in self.uri


@attrs.frozen(kw_only=True)
class PromptDefinition(EndpointDefinition):
    kind: ClassVar[str] = "prompt"

    messages: tuple[Mapping[str, Any], ...] = ()


@attrs.frozen
class InvalidEndpoint:
    """An endpoint a provider found but could not parse; `validate` lists it, `serve` refuses or skips it."""

    kind: str
    origin: str
    message: str
    name: str | None = None


ENDPOINT_KINDS: dict[str, type[EndpointDefinition]] = {
    "tool": ToolDefinition,
    "resource": ResourceDefinition,
    "prompt": PromptDefinition,
}


@attrs.frozen
class ProjectContext:
    """One project with its active profile: configuration resolved, paths absolute."""

    root: Path
    site: SiteConfig
    user: UserConfig
    profile: str
    readonly: bool
    duckdb_path: str
    site_file: Path
    # Objects plugins expose to endpoint code by name (`mxcp.runtime.plugins.get`), e.g. UDF plugin instances.
    plugin_objects: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    # Per-project state plugins keep under their own key (parsed files, loaded modules): it lives and dies
    # with the project, so plugins need no module-level caches keyed by id() nor finalizers.
    state: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def name(self) -> str:
        return self.site.project

    @property
    def project_user_config(self) -> ProjectUserConfig | None:
        return self.user.projects.get(self.site.project)

    def path(self, folder: str) -> Path:
        """Absolute path of a configured folder (`tools`, `python`, `plugins`, ...)."""
        return (self.root / getattr(self.site.paths, folder)).resolve()

    def secret(self, name: str) -> Mapping[str, Any] | None:
        """Parameters of the active profile's secret `name`, or None."""
        profile = self._user_profile()
        if profile is None:
            return None
        for secret in profile.secrets:
            if secret.name == name:
                return secret.parameters
        return None

    def secrets(self) -> tuple[Any, ...]:
        profile = self._user_profile()
        return tuple(profile.secrets) if profile else ()

    def plugin_config(self, config_name: str | None) -> Mapping[str, str]:
        profile = self._user_profile()
        if profile is None or config_name is None:
            return {}
        return profile.plugin.config.get(config_name, {})

    def _user_profile(self):
        project = self.project_user_config
        return project.profiles.get(self.profile) if project else None


@attrs.frozen
class UserContext:
    """The caller, as policies and audit see it."""

    user_id: str | None = None
    username: str | None = None
    email: str | None = None
    provider: str | None = None
    name: str | None = None
    role: str | None = None
    permissions: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.raw)
        for field in attrs.fields(type(self)):
            if field.name != "raw":
                value = getattr(self, field.name)
                data[field.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> UserContext:
        data = dict(data or {})
        known = {f.name for f in attrs.fields(cls)} - {"raw"}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(raw=data, **kwargs)


@attrs.define(eq=False)
class EndpointCall:
    """One call on its way through the `call_endpoint` hook: wrappers may read and annotate it."""

    endpoint: EndpointDefinition
    arguments: dict[str, Any]
    runtime: Any
    caller: str = "cli"  # stdio | http | cli | test
    user: UserContext | None = None
    session_id: str | None = None
    trace_id: str | None = None
    # Free-form notes wrappers leave for each other (policy decisions for audit, timings...).
    notes: dict[str, Any] = attrs.field(factory=dict)
    _interrupters: list[Callable[[], None]] = attrs.field(factory=list, alias="_interrupters")
    cancelled: bool = False

    def on_interrupt(self, interrupter: Callable[[], None]) -> None:
        """Register how to stop the work in progress (e.g. a DuckDB cursor's `interrupt`)."""
        self._interrupters.append(interrupter)
        if self.cancelled:
            interrupter()

    def interrupt(self) -> None:
        """Cancel: interrupt whatever the executor registered."""
        self.cancelled = True
        for interrupter in list(self._interrupters):
            try:
                interrupter()
            except Exception:  # noqa: BLE001 - best effort; the call is being abandoned anyway
                pass


@runtime_checkable
class Executor(Protocol):
    """Runs endpoints of one language. Returned by `provide_executor`."""

    language: str
    file_suffixes: tuple[str, ...]

    def start(self, runtime: Any) -> None:
        """Get ready to run: import modules, prepare caches. Called once per runtime."""

    def validate(self, endpoint: EndpointDefinition, runtime: Any) -> list[str | Problem]:
        """Problems with the endpoint's body: messages (errors) or Problem records (empty when fine)."""

    def execute(self, call: EndpointCall) -> Any:
        """Run the endpoint (in a worker thread) and return its raw result."""

    def stop(self) -> None:
        """Release what `start` acquired."""


@attrs.frozen
class PluginInfo:
    """A loaded plugin as `mxcp plugins` shows it."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    builtin: bool


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str | None
    reason: str


@attrs.frozen
class Problem:
    """One finding of `validate` (and later `lint`)."""

    message: str
    file: str | None = None
    endpoint: str | None = None
    severity: str = "error"

    def format(self) -> str:
        where = " ".join(x for x in (self.file, f"[{self.endpoint}]" if self.endpoint else None) if x)
        return f"{where}: {self.message}" if where else self.message
