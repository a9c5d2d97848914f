"""The attrs records that hooks take and return: the vocabulary shared by the core and every plugin."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from .config import SiteConfig, UserConfig, ProjectUserConfig
    from .typesystem import ParameterSpec, TypeSpec


CONFIG_SCOPES = ("site", "site_profile", "user", "user_profile", "endpoint")


@attrs.frozen
class ConfigSection:
    """A section of the configuration a plugin owns, returned by `config_sections`.

    `scope` says where it lives: `site` (top level of mxcp-site.yml), `site_profile` (under the active
    `profiles.<name>` there), `user` (top level of the user config), `user_profile` (under
    `projects.<project>.profiles.<name>`) or `endpoint` (a key of endpoint YAML: its value reaches plugins as
    `definition.extras[name]`; `policies`, a field of every definition, stays `definition.policies`). An endpoint
    key of the original's that no loaded plugin declares (`policies`) makes its endpoints invalid rather than
    served without it. `schema` is an attrs class (or a type such as
    `list[str]`) that the core's converter structures the section into, with errors naming the file, line and
    key path. Sections of the user config (`user`, `user_profile`) are read again on each reload (SIGHUP): a
    plugin that applies its section at start only refuses a change through `check_reload`.
    """

    name: str
    schema: Any
    scope: str = attrs.field(default="site", validator=attrs.validators.in_(CONFIG_SCOPES))
    description: str = ""

    def default(self) -> Any:
        """The value of an absent section: the schema built without arguments ([] / {} for collections)."""
        import typing

        origin = typing.get_origin(self.schema)
        if origin in (list, tuple, set, frozenset):
            return origin()
        if origin is dict:
            return {}
        try:
            return self.schema()
        except TypeError:
            return None


@attrs.frozen
class SecretValue:
    """The value a `resolve_secret` provider found for a reference (a string, or a mapping)."""

    value: Any = attrs.field(repr=False)


@attrs.define(eq=False)
class SecretLoad:
    """One reading of the configuration's references: opening a project, or a reload (SIGHUP) reading them afresh.

    `resolve_secret` providers keep what they share across the references of one load in `cache`, under their
    own plugin name (a client, a login, a secret already read, so that `vault://db#user` and `vault://db#password`
    come from one version of the secret). A reload starts a new load, so nothing read before survives it.
    `on_close` registers a function the core calls once the load is over (to close a client's connections).
    """

    cache: dict[str, Any] = attrs.Factory(dict)
    _closers: list[Callable[[], Any]] = attrs.Factory(list)

    def on_close(self, close: Callable[[], Any]) -> None:
        self._closers.append(close)

    def close(self) -> None:
        """Run the registered closers (each once; one failing does not keep the others from running)."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a client after the load must not fail the load
                logging.getLogger(__name__).debug("closing after a secret load failed", exc_info=True)


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
        from .yamlfile import read_text_file  # the one reader of project files: regular UTF-8 files only

        return read_text_file(self.file)


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
    # Values of endpoint keys that plugins declared (`ConfigSection(scope="endpoint")`), structured by their schema.
    extras: Mapping[str, Any] = attrs.field(factory=dict)
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
    """One project with its active profile: configuration resolved, paths absolute. Read-only for plugins."""

    root: Path
    site: SiteConfig
    user: UserConfig
    profile: str
    readonly: bool
    duckdb_path: str
    site_file: Path
    # Plugins' sections of the active configuration, by (scope, name), and the declarations behind them.
    settings: Mapping[tuple[str, str], Any] = attrs.field(factory=dict, repr=False)
    sections: Mapping[tuple[str, str], ConfigSection] = attrs.field(factory=dict, repr=False)
    # The user config file read (None: there was none), so a reload can tell a file that vanished.
    user_config_file: Path | None = None
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

    def plugin_config(self, name: str, scope: str = "site") -> Any:
        """A plugin's section of the active configuration, structured; its default when the file has none."""
        key = (scope, name)
        if key in self.settings:
            return self.settings[key]
        section = self.sections.get(key)
        if section is None:
            from .errors import NotFoundError

            raise NotFoundError(f"no loaded plugin declares the {scope} section '{name}' (see config_sections)")
        return section.default()

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

    def _user_profile(self) -> Any:
        project = self.project_user_config
        return project.profiles.get(self.profile) if project else None


def _strings(value: Any) -> tuple[str, ...]:
    """A list of names from YAML or claims: a list, or one string (space-separated, like OAuth's `scope`)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(str(item) for item in value)
    raise TypeError(f"expected a list of strings, got {type(value).__name__}")


ANONYMOUS_ROLE = "anonymous"


@attrs.frozen
class UserContext:
    """The caller of one endpoint call, as SQL, Python code, policies and audit see it.

    Without sign-in the caller is `UserContext.anonymous()` (role "anonymous", everything else empty), never
    None. A context given without a role (a test's `user_context: {username: alice}`) has the role "user".
    `external_token` is the upstream provider's token: never written to logs or audit records.
    """

    user_id: str | None = None
    username: str | None = None
    email: str | None = None
    name: str | None = None
    provider: str | None = None
    role: str = "user"
    permissions: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    capabilities: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    scopes: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    avatar_url: str | None = None
    # The identity provider's claims (or the test's mapping) as given.
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    external_token: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def anonymous(cls) -> UserContext:
        return _ANONYMOUS

    @property
    def is_anonymous(self) -> bool:
        return self.role == ANONYMOUS_ROLE

    def is_authenticated(self) -> bool:
        """True for a signed-in (or configured, or test) caller; False for the anonymous one."""
        return not self.is_anonymous

    def __bool__(self) -> bool:
        # The original's `get_user_context()` returned None without sign-in: `if ctx:` keeps meaning the same.
        return not self.is_anonymous

    @property
    def raw_profile(self) -> Mapping[str, Any]:
        """The original MXCP's name for the claims."""
        return self.claims

    def policy_view(self) -> dict[str, Any]:
        """`user` as CEL conditions see it: every field present (None when unknown), the claims, no token."""
        return {
            "user_id": self.user_id,
            "username": self.username,
            "email": self.email,
            "name": self.name,
            "provider": self.provider,
            "role": self.role,
            "permissions": list(self.permissions),
            "capabilities": list(self.capabilities),
            "scopes": list(self.scopes),
            "claims": self.claims,
        }

    def as_dict(self) -> dict[str, Any]:
        """Every field but the external token (for output, logs and audit)."""
        data = self.policy_view()
        data["avatar_url"] = self.avatar_url
        data["claims"] = dict(self.claims)
        return data

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, where: str = "user context") -> UserContext:
        """Build from a mapping (`--user-context`, a test's `user_context`, a configured identity).

        Known keys fill the fields (`raw_profile` is the original's name for `claims`); unknown keys are kept as
        claims, so conditions written for the original's extra fields still find them there.
        """
        if data is None:
            return _ANONYMOUS
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a mapping, got {type(data).__name__}")
        values = dict(data)
        claims = values.pop("claims", None) or values.pop("raw_profile", None) or {}
        if not isinstance(claims, Mapping):
            raise TypeError(f"{where}: claims must be a mapping, got {type(claims).__name__}")
        claims = dict(claims)
        known = {f.name for f in attrs.fields(cls)} - {"claims"}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                claims.setdefault(key, value)
                continue
            if key in ("permissions", "capabilities", "scopes"):
                try:
                    kwargs[key] = _strings(value)
                except TypeError as exc:
                    raise TypeError(f"{where}: {key}: {exc}") from None
            elif value is not None and not isinstance(value, str):
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    kwargs[key] = str(value)  # numeric ids from a provider (GitHub's are integers)
                else:
                    raise TypeError(f"{where}: {key} must be a string, got {type(value).__name__}")
            else:
                kwargs[key] = value
        if kwargs.get("role") is None:
            kwargs.pop("role", None)
        return cls(claims=claims, **kwargs)


_ANONYMOUS = UserContext(role=ANONYMOUS_ROLE)


@attrs.define(eq=False)
class EndpointCall:
    """One call on its way through the `call_endpoint` hook: wrappers may read and annotate it."""

    endpoint: EndpointDefinition
    arguments: dict[str, Any]
    runtime: RuntimeView
    # The endpoint's validators and schemas (`CompiledEndpoint`: `.parameters.redact(...)`, `.returns`).
    compiled: Any = None
    caller: str = "cli"  # stdio | http | cli | test
    # Who calls: never None (`UserContext.anonymous()` without sign-in).
    user: UserContext = attrs.field(factory=UserContext.anonymous)
    session_id: str | None = None
    trace_id: str | None = None
    # Free-form notes wrappers leave for each other (policy decisions for audit, timings...).
    notes: dict[str, Any] = attrs.field(factory=dict)
    # At most this many rows reach the client (`limits.max_rows`): an executor need not fetch more than one past it.
    max_rows: int | None = None
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
class RuntimeView(Protocol):
    """What plugins may use of a runtime: hooks get one as `runtime`, calls carry one as `call.runtime`.

    `phase` is "database" (`mxcp query`), "checking" (`mxcp validate`: executors started, no on_init) or
    "serving" (on_init run). `reloading` is true while a reload runs on_shutdown and on_init (the runtime starts
    again right after: what outlives it need not be flushed or closed). Everything else about the runtime is the
    core's business.
    """

    context: ProjectContext
    phase: str
    reloading: bool
    # The profile's SQL engine (hookspecs.md, `open_sql_engine`): plugins read its `name` and check SQL with
    # `statements(sql)` and `check(statement, phase=...)`; opening and closing it is the core's.
    database: Any
    # The typed facade over the plugin manager (mxcp_core.hooks.Hooks), for a plugin whose feature is itself
    # extended by hooks (the audit plugin asks `open_audit_sink` for its sink).
    hooks: Any

    @property
    def started(self) -> bool:
        """True between `start()` and `stop()`."""

    def endpoints(self) -> list[Any]:
        """The compiled endpoints served (`CompiledEndpoint`: `.definition`, `.parameters`, `.returns`)."""

    def compiled_endpoint(self, kind: str, key: str) -> Any:
        """One compiled endpoint, or None."""

    def cursor(self) -> Any:
        """A context manager giving a fresh cursor of the profile's engine, for work outside a call."""

    def run_async(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a coroutine function on the runtime's own event loop and wait for its result (from a worker thread)."""

    def reload(self, payload: Callable[[], Any] | None = None, description: str = "") -> None:
        """Schedule a reload: drain calls, on_shutdown, close the database, run `payload`, reopen, on_init."""

    def wait_for_reloads(self, timeout: float | None = None) -> None:
        """Wait until the scheduled reloads have finished (or `timeout` seconds have passed)."""

    def register_plugin(self, plugin: Any, name: str) -> bool:
        """Register a plugin object (hook implementations) for the rest of this runtime's life."""

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin registered with `register_plugin`."""

    def call(self, kind: str, name: str, arguments: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Validate and run one call through the whole call path (wrappers included), blocking."""


@runtime_checkable
class Executor(Protocol):
    """Runs endpoints of one language. Returned by `provide_executor`."""

    language: str
    file_suffixes: tuple[str, ...]

    def start(self, runtime: RuntimeView) -> None:
        """Get ready to run: import modules, prepare caches. Called once per runtime."""

    def validate(self, endpoint: EndpointDefinition, runtime: RuntimeView) -> list[str | Problem]:
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
