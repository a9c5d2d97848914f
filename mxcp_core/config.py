"""mxcp-site.yml and the user config as attrs classes, structured by cattrs with errors naming file, line, key path."""
from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from .errors import ConfigError, suggest
from .records import ConfigSection
from .yamlfile import LineDict, LineList, line_of, load_yaml_file

# Positive quantities: a timeout of -5 seconds or a pool of 0 workers is a mistake, never a setting.
Seconds = typing.NewType("Seconds", float)
Count = typing.NewType("Count", int)


SITE_FILE = "mxcp-site.yml"
log = logging.getLogger(__name__)


# -- mxcp-site.yml: the core's own keys (plugins declare theirs through `config_sections`) ---------------
@attrs.define
class PathsConfig:
    tools: str = "tools"
    resources: str = "resources"
    prompts: str = "prompts"
    evals: str = "evals"
    python: str = "python"
    plugins: str = "plugins"
    sql: str = "sql"
    drift: str = "drift"
    audit: str = "audit"
    data: str = "data"


@attrs.define
class DuckDBConfig:
    path: str | None = None
    readonly: bool = False


# Most MCP clients give up on a request after 60 s (the TypeScript SDK's default): a call running longer
# only holds a worker for an answer nobody reads.
DEFAULT_CALL_TIMEOUT = 60.0


@attrs.define
class LimitsConfig:
    """`limits:` of mxcp-site.yml: what one call, and all calls together, may take from the server."""

    # Rows and bytes of one result: a longer array is cut (the client is told); a larger single value fails.
    max_rows: Count = Count(10_000)
    max_result_bytes: Count = Count(16 * 1024 * 1024)
    # Calls running at once, and calls waiting for a worker before the server answers "busy".
    workers: Count = Count(16)
    queue: Count = Count(64)
    # How long a reload waits for calls in flight before it interrupts them and proceeds.
    reload_deadline: Seconds = Seconds(30.0)


@attrs.define
class SqlEngineConfig:
    """`profiles.<name>.sql`: the engine that runs the profile's SQL endpoints, `mxcp query` and `db.execute`.

    `duckdb` (the embedded database of `duckdb:`) is the core's; any other name comes from a plugin's
    `open_sql_engine` hook, connecting with the user config's secret `secret` (e.g. `type: postgres`).
    """

    engine: str = "duckdb"
    secret: str | None = None


@attrs.define
class SiteProfile:
    duckdb: DuckDBConfig = attrs.Factory(DuckDBConfig)
    sql: SqlEngineConfig = attrs.Factory(SqlEngineConfig)


@attrs.define
class SiteConfig:
    project: str
    profile: str
    mxcp: int = 1
    description: str | None = None
    secrets: list[str] = attrs.Factory(list)
    paths: PathsConfig = attrs.Factory(PathsConfig)
    profiles: dict[str, SiteProfile] = attrs.Factory(dict)
    # Folders outside the project that source files, file:// references from the project and UDF plugin
    # modules may come from (relative to the project root, or absolute); see project.confined_path.
    allowed_paths: list[str] = attrs.Factory(list)
    # Our additions: plugins switched off for this project, the default per-call timeout in seconds (an
    # endpoint's `timeout:` overrides it), and the limits that keep one client from starving the others.
    disable_plugins: list[str] = attrs.Factory(list)
    timeout: Seconds = Seconds(DEFAULT_CALL_TIMEOUT)
    limits: LimitsConfig = attrs.Factory(lambda: LimitsConfig())

    def profile_config(self, profile: str) -> SiteProfile:
        return self.profiles.get(profile) or SiteProfile()


# -- user config (~/.mxcp/config.yml): the core's own keys -----------------------------------------------
@attrs.define
class SecretConfig:
    name: str
    type: str = "custom"
    parameters: dict[str, Any] = attrs.Factory(dict)


@attrs.define
class UserProfile:
    secrets: list[SecretConfig] = attrs.Factory(list)


@attrs.define
class ProjectUserConfig:
    profiles: dict[str, UserProfile] = attrs.Factory(dict)


def _positive(kind: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: a positive, finite number (the value itself stays out of the message)."""

    def check(_: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not (0 < value < float("inf")):
            raise ValueError(f"{attribute.name} must be a positive number of {kind}")

    return check


# A name or address, optionally with `:port` or `:*`: the only forms the SDK's Host check can match (no `*.x`).
HOST_PATTERN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(:(\d{1,5}|\*))?")


# An origin as browsers send it: scheme and host (and port), no path.
ORIGIN_PATTERN = re.compile(r"https?://[^/\s@]+")


def _host_patterns(_: Any, attribute: Any, value: list[str]) -> None:
    for index, entry in enumerate(value):
        if entry != "*" and not HOST_PATTERN.fullmatch(entry):
            raise ValueError(f"{attribute.name}[{index}] must be a host name or address, optionally with :port or :*"
                             " (wildcards such as *.example.com cannot match)")
    if "*" in value and len(value) > 1:
        raise ValueError(f"{attribute.name}: '*' (no Host/Origin checks) must be the only entry")


def _origin_patterns(_: Any, attribute: Any, value: list[str]) -> None:
    for index, entry in enumerate(value):
        if not ORIGIN_PATTERN.fullmatch(entry):
            raise ValueError(f"{attribute.name}[{index}] must look like https://host or http://host:port (no path)")


@attrs.define
class HttpTransportConfig:
    host: str = "localhost"
    port: int = 8000
    stateless: bool = False
    json_response: bool = False
    scheme: str | None = None
    base_url: str | None = None
    trust_proxy: bool | None = None
    # DNS-rebinding protection: Host/Origin values accepted besides the loopback names and the bound address;
    # ["*"] turns the checks off.
    allowed_hosts: list[str] = attrs.field(factory=list, validator=_host_patterns)
    allowed_origins: list[str] = attrs.field(factory=list, validator=_origin_patterns)
    # Seconds a client may take to send a whole request body (slow senders would hold a worker forever).
    body_timeout: float = attrs.field(default=60.0, validator=_positive("seconds"))
    # Streamable HTTP sessions: idle seconds before one is closed, and how many may be open at once.
    session_idle_timeout: float = attrs.field(default=1800.0, validator=_positive("seconds"))
    max_sessions: int = attrs.field(default=1000, validator=_positive("sessions"))


@attrs.define
class TransportConfig:
    provider: str = "streamable-http"
    http: HttpTransportConfig = attrs.Factory(HttpTransportConfig)


@attrs.define
class UserConfig:
    mxcp: int = 1
    projects: dict[str, ProjectUserConfig] = attrs.Factory(dict)
    transport: TransportConfig = attrs.Factory(TransportConfig)


# -- structuring --------------------------------------------------------------------------------
def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)

    def is_str_or_record(kind: Any) -> bool:
        """`str | SomeAttrsClass`: a name, or the full mapping form (DuckDB extensions `httpfs` or `{name, repo}`)."""
        members = typing.get_args(kind) if typing.get_origin(kind) in (Union, types.UnionType) else ()
        records = [m for m in members if attrs.has(m)]
        return len(members) == 2 and str in members and len(records) == 1

    def str_or_record(kind: Any) -> Callable[[Any, Any], Any]:
        record = next(m for m in typing.get_args(kind) if attrs.has(m))

        def structure(value: Any, _: Any) -> Any:
            if isinstance(value, str):
                return value
            if isinstance(value, Mapping):
                return converter.structure(value, record)
            raise ValueError(f"expected a name or a mapping, got {_describe(value)}")

        return structure

    converter.register_structure_hook_factory(is_str_or_record, str_or_record)

    # A string where a list is expected must not become a list of letters, nor a list a mapping.
    def guarded(factory: Callable[..., Any], accepted: type, what: str) -> Callable[[Any], Any]:
        def build(kind: Any) -> Callable[[Any, Any], Any]:
            inner = factory(kind, converter)

            def structure(value: Any, target: Any) -> Any:
                if not isinstance(value, accepted):
                    raise ValueError(f"expected {what}, got {_describe(value)}")
                return inner(value, target)

            return structure

        return build

    converter.register_structure_hook_factory(
        lambda kind: typing.get_origin(kind) is list, guarded(list_structure_factory, list, "a list"))
    converter.register_structure_hook_factory(
        lambda kind: typing.get_origin(kind) is dict and kind != dict[str, Any],
        guarded(mapping_structure_factory, Mapping, "a mapping"))

    def strict_scalar(kind: type) -> Callable[[Any, Any], Any]:
        def structure(value: Any, _: Any) -> Any:
            if kind is bool:
                if isinstance(value, bool):
                    return value
                raise ValueError(f"expected true or false, got {_describe(value)}")
            if kind is int:
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise ValueError(f"expected an integer, got {_describe(value)}")
                try:
                    return int(value)
                except ValueError:
                    raise ValueError(f"expected an integer, got {_describe(value)}") from None
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError(f"expected a number, got {_describe(value)}")
                try:
                    return float(value)
                except ValueError:
                    raise ValueError(f"expected a number, got {_describe(value)}") from None
            if kind is str:
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    return str(value)
                raise ValueError(f"expected a string, got {_describe(value)}")
            return value

        return structure

    for kind in (bool, int, float, str):
        converter.register_structure_hook(kind, strict_scalar(kind))

    def positive(kind: type, what: str) -> Callable[[Any, Any], Any]:
        read = strict_scalar(kind)

        def structure(value: Any, _: Any) -> Any:
            number = read(value, kind)
            if not math.isfinite(number) or number <= 0:  # `.nan` and `.inf` are YAML floats too
                raise ValueError(f"expected {what} greater than 0, got {_describe(value)}")
            return number

        return structure

    converter.register_structure_hook(Seconds, positive(float, "a number of seconds"))
    converter.register_structure_hook(Count, positive(int, "a whole number"))

    def structure_mapping(value: Any, _: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {_describe(value)}")
        return dict(value)

    converter.register_structure_hook_func(lambda t: t == dict[str, Any], structure_mapping)
    return converter


_converter = _make_converter()


# Off while the user config is structured: its values may be secrets (resolved references, `${VAR}`), so an
# error there says what kind of value it found, never the value.
_quote_values: contextvars.ContextVar[bool] = contextvars.ContextVar("mxcp_config_quote_values", default=True)


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if not _quote_values.get():
        return f"a {type(value).__name__}"
    return f"{type(value).__name__} {value!r}"[:80]


@contextlib.contextmanager
def values_unquoted() -> Iterator[None]:
    """Errors raised inside describe values by their type only (for files holding secrets)."""
    token = _quote_values.set(False)
    try:
        yield
    finally:
        _quote_values.reset(token)


def structure(raw: Any, cls: Any, *, file: Path, root_path: str = "", line: int | None = None) -> Any:
    """Structure `raw` into `cls`; the first problem becomes a ConfigError with file, line and key path.

    `line` is where `raw` itself sits, for a problem with the value as a whole (a string given for a list).
    """
    if attrs.has(cls):
        if raw is None:
            raw = LineDict()
        if not isinstance(raw, Mapping):
            where = f"expected a mapping, got {_describe(raw)}"
            if not root_path:
                where = f"expected a mapping at the top level, got {_describe(raw)}"
            raise ConfigError(where, file=file, line=line, key_path=root_path or None)
    try:
        return _converter.structure(raw, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs raises exception groups; we translate them
        path, leaf = _first_problem(exc, [])
        error = _config_error(leaf, path, raw, cls, file, root_path)
        if error.line is None and line is not None:
            error = ConfigError(error.message, file=error.file, line=line, key_path=error.key_path)
        raise error from None


def _first_problem(exc: BaseException, path: list[Any]) -> tuple[list[Any], BaseException]:
    """Walk cattrs' exception groups to the first leaf error, collecting the key path on the way."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)) or isinstance(exc, BaseExceptionGroup):
        notes_by_exc: list[tuple[BaseException, Any]] = []
        if isinstance(exc, ClassValidationError):
            with_notes, without = exc.group_exceptions()
            notes_by_exc = [(e, note.name) for e, note in with_notes] + [(e, None) for e in without]
        elif isinstance(exc, IterableValidationError):
            with_notes, without = exc.group_exceptions()
            notes_by_exc = [(e, note.index) for e, note in with_notes] + [(e, None) for e in without]
        else:
            notes_by_exc = [(e, _note_key(e)) for e in exc.exceptions]
        # Missing-key and extra-key problems are the most useful to report first.
        notes_by_exc.sort(key=lambda item: 0 if isinstance(item[0], ForbiddenExtraKeysError) else 1)
        sub, key = notes_by_exc[0]
        return _first_problem(sub, path + ([key] if key is not None else []))
    return path, exc


def _note_key(exc: BaseException) -> Any:
    for note in getattr(exc, "__notes__", []) or []:
        for attr in ("name", "index"):
            if hasattr(note, attr):
                return getattr(note, attr)
    return None


def _config_error(
    leaf: BaseException, path: list[Any], raw: Any, cls: type, file: Path, root_path: str
) -> ConfigError:
    container, line = _locate(raw, path)
    key_path = _format_path(root_path, path)
    if isinstance(leaf, ForbiddenExtraKeysError):
        extra = sorted(leaf.extra_fields)[0]
        valid = [f.name for f in attrs.fields(leaf.cl)]
        target = container.get(extra) if isinstance(container, Mapping) else None
        del target
        extra_line = container.line_of(extra) if isinstance(container, LineDict) else line
        return ConfigError(
            f"unknown key '{extra}'{suggest(extra, valid)}; valid keys: {', '.join(valid)}",
            file=file,
            line=extra_line,
            key_path=_format_path(root_path, path + [extra]),
        )
    if isinstance(leaf, KeyError):
        missing = leaf.args[0] if leaf.args else "?"
        # cattrs already notes the missing field's name on the way down; add it only when it did not.
        missing_path = path if path and path[-1] == missing else path + [missing]
        return ConfigError(
            f"required key '{missing}' is missing",
            file=file,
            line=line,
            key_path=_format_path(root_path, missing_path),
        )
    message = str(leaf)
    if isinstance(leaf, (TypeError, AttributeError)) and "mapping" not in message:
        if not isinstance(container, (Mapping, list)):
            # cattrs' own words for a scalar where a section belongs ("'int' is not iterable").
            message = f"expected a mapping, got {_describe(container)}"
        else:
            message = "unexpected value" if not _quote_values.get() else f"unexpected value ({message})"
    return ConfigError(message, file=file, line=line, key_path=key_path or None)


def _locate(raw: Any, path: list[Any]) -> tuple[Any, int | None]:
    node: Any = raw
    line = getattr(raw, "line", None)
    for key in path:
        finder = getattr(node, "line_of", None)
        try:
            child = node[key]
        except (KeyError, IndexError, TypeError):
            if finder:
                line = finder(key) or line
            break
        if finder:
            line = finder(key) or line
        node = child
    return node, line


def _format_path(root: str, path: list[Any]) -> str:
    text = root
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text = f"{text}.{key}" if text else str(key)
    return text


# -- value references -----------------------------------------------------------------------------
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Ordinary URLs are values, not references to resolve.
PASSTHROUGH_SCHEMES = frozenset(
    {
        "http", "https", "ws", "wss", "ftp", "sftp", "s3", "s3a", "s3n", "gs", "gcs", "az", "azure",
        "abfs", "abfss", "r2", "hf", "md", "postgres", "postgresql", "mysql", "redis", "rediss",
        "mongodb", "mongodb+srv", "jdbc", "sqlite", "duckdb", "mailto", "urn", "data",
    }
)


def interpolate(value: Any, *, file: Path, key_path: str, environ: Mapping[str, str] | None = None) -> Any:
    """Replace `${VAR}` in every string under `value`; an unset variable is an error naming it."""
    env = os.environ if environ is None else environ

    def walk(node: Any, path: str, container: Any, key: Any) -> Any:
        if isinstance(node, str):
            if "${" not in node:
                return node

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in env:
                    raise ConfigError(
                        f"environment variable '{name}' is not set",
                        file=file,
                        line=getattr(container, "line_of", lambda _k: None)(key),
                        key_path=path,
                    )
                return env[name]

            return _VAR.sub(substitute, node)
        if isinstance(node, LineDict):
            out = LineDict()
            out.line, out.key_lines = node.line, node.key_lines
            for k, v in node.items():
                out[k] = walk(v, f"{path}.{k}" if path else str(k), node, k)
            return out
        if isinstance(node, Mapping):
            return {k: walk(v, f"{path}.{k}" if path else str(k), node, k) for k, v in node.items()}
        if isinstance(node, LineList):
            out_list = LineList(walk(v, f"{path}[{i}]", node, i) for i, v in enumerate(node))
            out_list.line, out_list.item_lines = node.line, node.item_lines
            return out_list
        if isinstance(node, list):
            return [walk(v, f"{path}[{i}]", node, i) for i, v in enumerate(node)]
        return node

    return walk(value, key_path, None, None)


# What a resolver returns for a reference no plugin owns (None is a value: a key that holds null).
NOT_RESOLVED: Any = object()


def resolve_references(
    value: Any,
    resolver: Callable[[str], Any],
    *,
    file: Path,
    key_path: str,
    subject: str,
    on_error: Callable[[ConfigError], None] | None = None,
) -> Any:
    """Resolve `scheme://...` strings (not ordinary URLs) through `resolver`; unknown schemes are errors.

    `resolver` returns the value, or NOT_RESOLVED when no plugin owns the scheme.

    An error is raised, or with `on_error` passed to it and the value left as None (to report every failure).
    """

    def fail(error: ConfigError) -> None:
        if on_error is None:
            raise error
        on_error(error)

    def walk(node: Any, path: str, container: Any, key: Any) -> Any:
        if isinstance(node, str):
            match = _SCHEME.match(node)
            if not match or match.group(1).lower() in PASSTHROUGH_SCHEMES:
                return node
            line = getattr(container, "line_of", lambda _k: None)(key)
            try:
                resolved = resolver(node)
            except ConfigError as exc:
                # A provider knows what went wrong, not where: add the file, line and key path.
                fail(exc if exc.file is not None else
                     ConfigError(f"{subject}: {exc.message}", file=file, line=line, key_path=path))
                return None
            if resolved is NOT_RESOLVED:
                from .features import SCHEME_PLUGINS

                plugin = SCHEME_PLUGINS.get(match.group(1).lower())
                hint = f"plugin '{plugin}' resolves them; is it disabled?" if plugin else (
                    "is the plugin for it installed and enabled?")
                fail(ConfigError(
                    f"{subject}: no plugin resolves references of scheme '{match.group(1)}://' ({hint})",
                    file=file,
                    line=line,
                    key_path=path,
                ))
                return None
            return resolved
        if isinstance(node, Mapping):
            items = {k: walk(v, f"{path}.{k}", node, k) for k, v in node.items()}
            if isinstance(node, LineDict):
                out = LineDict(items)
                out.line, out.key_lines = node.line, node.key_lines
                return out
            return items
        if isinstance(node, list):
            out_list = LineList(walk(v, f"{path}[{i}]", node, i) for i, v in enumerate(node))
            if isinstance(node, LineList):
                out_list.line, out_list.item_lines = node.line, node.item_lines
            return out_list
        return node

    return walk(value, key_path, None, None)


# -- finding and loading ----------------------------------------------------------------------------
def find_site_file(start: Path | None = None) -> Path:
    """mxcp-site.yml in `start` or the nearest parent folder."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / SITE_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {SITE_FILE} found in {here} or any parent folder (create a project with `mxcp init`)"
    )


def user_config_path() -> Path:
    explicit = os.environ.get("MXCP_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    return Path.home() / ".mxcp" / "config.yml"


def read_site_file(site_file: Path, profile: str | None = None) -> tuple[LineDict, str]:
    """The site file with `${VAR}` interpolated everywhere except in the profiles not in use, and the active profile."""
    raw = load_yaml_file(site_file)
    if raw is None or not isinstance(raw, Mapping):
        raise ConfigError("expected a mapping with at least 'mxcp', 'project' and 'profile'", file=site_file)
    interpolated = _like(raw)
    for key, value in raw.items():
        if key != "profiles":
            interpolated[key] = interpolate(value, file=site_file, key_path=str(key))
    # `profile:` itself may come from a variable, so the active profile is known only after the pass above.
    active = profile or os.environ.get("MXCP_PROFILE") or interpolated.get("profile")
    profiles_raw = raw.get("profiles")
    if isinstance(profiles_raw, Mapping):
        profiles = _like(profiles_raw)
        for name, body in profiles_raw.items():
            profiles[name] = (
                interpolate(body, file=site_file, key_path=f"profiles.{name}") if str(name) == active else body
            )
        interpolated["profiles"] = profiles
    elif "profiles" in raw:
        interpolated["profiles"] = profiles_raw
    return interpolated, str(active or "")


def load_site_config(site_file: Path, profile: str | None = None) -> tuple[SiteConfig, str, LineDict]:
    """The core's part of the site file (plugins' sections are settled later), the active profile, the raw file."""
    raw, active = read_site_file(site_file, profile)
    core = _keep(raw, SiteConfig)
    if isinstance(raw.get("profiles"), Mapping):
        profiles = _like(raw["profiles"])
        for name, body in raw["profiles"].items():
            # `dev:` with nothing under it is an empty profile, as YAML writers mean it.
            profiles[name] = _keep(body, SiteProfile) if isinstance(body, Mapping) else (
                LineDict() if body is None else body)
        core["profiles"] = profiles
    site = structure(core, SiteConfig, file=site_file)
    if site.mxcp != 1:
        raise ConfigError(
            f"unsupported version {site.mxcp}; expected 1", file=site_file, line=raw.line_of("mxcp"), key_path="mxcp"
        )
    return site, active, raw  # `profile:` is required, so `active` is set once the file structures


def read_user_file(path: Path | None = None) -> tuple[LineDict, Path]:
    """The user config with `${VAR}` interpolated in its top-level sections; `projects:` is left as written."""
    path = path or user_config_path()
    if not path.exists():
        if os.environ.get("MXCP_CONFIG"):
            raise ConfigError("file named by MXCP_CONFIG does not exist", file=path)
        return LineDict(), path
    raw = load_yaml_file(path)
    if raw is None:
        return LineDict(), path
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {_describe(raw)}", file=path)
    prepared = _like(raw)
    for key, value in raw.items():
        prepared[key] = value if key == "projects" else interpolate(value, file=path, key_path=str(key))
    return prepared, path


def prepare_user_projects(
    raw: LineDict,
    project: str,
    profile: str,
    file: Path,
    resolver: Callable[[str], Any] | None = None,
    on_error: Callable[[ConfigError], None] | None = None,
) -> LineDict:
    """`raw` with the active project's active profile interpolated and its references resolved (no other).

    A reference that fails raises, or with `on_error` is passed to it (see `resolve_references`).
    """
    prepared = _like(raw)
    prepared.update(raw)
    if isinstance(raw.get("projects"), Mapping):
        prepared["projects"] = _prepare_projects(raw["projects"], project, profile, file, resolver, on_error)
    return prepared


def structure_user_config(raw: Mapping[str, Any], file: Path) -> UserConfig:
    """The core's part of a (prepared) user config; the plugins' sections are settled separately."""
    core = _keep(raw, UserConfig)
    projects = raw.get("projects")
    if isinstance(projects, Mapping):
        projects_core = _like(projects)
        for name, body in projects.items():
            if isinstance(body, Mapping) and isinstance(body.get("profiles"), Mapping):
                body_core = _like(body)
                body_core.update(body)
                profiles_core = _like(body["profiles"])
                for profile_name, profile_body in body["profiles"].items():
                    profiles_core[profile_name] = (
                        _keep(profile_body, UserProfile) if isinstance(profile_body, Mapping)
                        else LineDict() if profile_body is None else profile_body
                    )
                body_core["profiles"] = profiles_core
                projects_core[name] = body_core
            else:
                projects_core[name] = body
        core["projects"] = projects_core
    return structure(core, UserConfig, file=file)


# -- plugins' sections ----------------------------------------------------------------------------------------
CORE_KEYS: Mapping[str, frozenset[str]] = {
    "site": frozenset(f.name for f in attrs.fields(SiteConfig)),
    "site_profile": frozenset(f.name for f in attrs.fields(SiteProfile)),
    "user": frozenset(f.name for f in attrs.fields(UserConfig)),
    "user_profile": frozenset(f.name for f in attrs.fields(UserProfile)),
    # Endpoint YAML keys whose meaning the core itself gives.
    "endpoint": frozenset({
        "name", "description", "tags", "parameters", "return", "source", "language", "enabled", "tests", "timeout",
        "annotations", "title", "uri", "mime_type", "messages",
    }),
}


@attrs.define
class SectionRegistry:
    """The sections plugins declared (`config_sections`), and how to settle each key of a config file.

    A key is the core's, a loaded plugin's section (structured into its class), a section of the original format
    that nothing loaded reads (an error naming the plugin that would, a warning for features this version does not
    implement, an error for those that guard anything), or unknown (an error with a suggestion).
    """

    claimed: Mapping[tuple[str, str], tuple[str, ConfigSection]]
    disabled: frozenset[str] = frozenset()
    warned: set[tuple[str, str]] = attrs.Factory(set)

    def names(self, scope: str) -> set[str]:
        from .features import ORIGINAL_SECTIONS

        known = {name for (where, name) in self.claimed if where == scope}
        known |= {section.name for section in ORIGINAL_SECTIONS if section.scope == scope}
        return known | set(CORE_KEYS[scope])

    def settle(
        self, scope: str, node: Any, *, file: Path, key_path: str, active: bool = True
    ) -> dict[tuple[str, str], Any]:
        """Structure the plugins' sections found in `node` (one level of a config file); check the other keys."""
        from .features import original_section, plugin_state

        settled: dict[tuple[str, str], Any] = {}
        if not isinstance(node, Mapping):
            return settled
        for key, value in node.items():
            name = str(key)
            if name in CORE_KEYS[scope]:
                continue
            where = f"{key_path}.{name}" if key_path else name
            line = line_of(node, key)
            owner = self.claimed.get((scope, name))
            if owner is not None:
                if active:
                    settled[(scope, name)] = structure(value, owner[1].schema, file=file, root_path=where, line=line)
                continue
            original = original_section(scope, name)
            if original is None:
                valid = sorted(self.names(scope))
                raise ConfigError(
                    f"unknown key '{name}'{suggest(name, valid)}; valid keys: {', '.join(valid)}",
                    file=file, line=line, key_path=where,
                )
            if not active or original.inert(value):
                continue
            if original.plugin is not None:
                raise ConfigError(
                    f"section '{name}' ({original.purpose}) is read by {plugin_state(original.plugin, self.disabled)}; "
                    "enable the plugin or remove the section",
                    file=file, line=line, key_path=where,
                )
            if original.security:
                raise ConfigError(
                    f"section '{name}' ({original.purpose}) is not implemented by any loaded plugin; it guards access, "
                    "so it is refused rather than ignored (install a plugin that provides it, or remove the section)",
                    file=file, line=line, key_path=where,
                )
            if (scope, name) not in self.warned:
                self.warned.add((scope, name))
                log.warning("%s:%s: %s: section '%s' (%s) is not implemented in this version and is ignored",
                            file, line, where, name, original.purpose)
        return settled

    def settle_site(self, raw: Mapping[str, Any], active: str, file: Path) -> dict[tuple[str, str], Any]:
        settled = self.settle("site", raw, file=file, key_path="")
        profiles = raw.get("profiles")
        if isinstance(profiles, Mapping):
            for name, body in profiles.items():
                found = self.settle("site_profile", body, file=file, key_path=f"profiles.{name}",
                                    active=str(name) == active)
                settled.update(found)
        return settled

    def settle_user_profiles(
        self, raw: Mapping[str, Any], project: str, active: str, file: Path
    ) -> dict[tuple[str, str], Any]:
        settled: dict[tuple[str, str], Any] = {}
        projects = raw.get("projects")
        if not isinstance(projects, Mapping):
            return settled
        for project_name, body in projects.items():
            profiles = body.get("profiles") if isinstance(body, Mapping) else None
            if not isinstance(profiles, Mapping):
                continue
            for name, profile_body in profiles.items():
                found = self.settle("user_profile", profile_body, file=file,
                                    key_path=f"projects.{project_name}.profiles.{name}",
                                    active=str(project_name) == project and str(name) == active)
                settled.update(found)
        return settled


def _keep(node: Any, cls: type) -> Any:
    """`node` with only the keys that are fields of `cls` (the plugins' keys are settled separately)."""
    if not isinstance(node, Mapping):
        return node
    fields = {f.name for f in attrs.fields(cls)}
    kept = _like(node)
    for key, value in node.items():
        if key in fields:
            kept[key] = value
    return kept


def _like(node: Any) -> LineDict:
    """An empty LineDict carrying `node`'s line information."""
    out = LineDict()
    out.line, out.key_lines = getattr(node, "line", None), dict(getattr(node, "key_lines", {}) or {})
    return out


def as_plain_dict(
    core: Any, context: Any, *, scope: str, profile_path: list[str]
) -> dict[str, Any]:
    """A config as plain data: the core's part, and every declared section of `scope` where the file has it (its
    default when absent), the `<scope>_profile` ones under the active profile."""
    data = _converter.unstructure(core)
    node = data
    for part in profile_path:
        node = node.setdefault(part, {})
    for (where, name) in context.sections:
        if where in (scope, f"{scope}_profile"):
            value = _converter.unstructure(context.plugin_config(name, scope=where))
            (data if where == scope else node)[name] = value
    return data


def _prepare_projects(
    projects: Mapping[str, Any],
    project: str,
    profile: str,
    file: Path,
    resolver: Callable[[str], Any] | None,
    on_error: Callable[[ConfigError], None] | None = None,
) -> Any:
    out = LineDict()
    out.line, out.key_lines = getattr(projects, "line", None), getattr(projects, "key_lines", {})
    for name, body in projects.items():
        # YAML keys may be numbers (`2024:`); names from the site file are strings.
        if str(name) != project or not isinstance(body, Mapping) or not isinstance(body.get("profiles"), Mapping):
            out[name] = body
            continue
        body_out = LineDict(body)
        body_out.line, body_out.key_lines = getattr(body, "line", None), getattr(body, "key_lines", {})
        profiles = body["profiles"]
        profiles_out = LineDict(profiles)
        profiles_out.line, profiles_out.key_lines = getattr(profiles, "line", None), getattr(profiles, "key_lines", {})
        key = next((k for k in profiles if str(k) == profile), None)
        if key is not None:
            key_path = f"projects.{name}.profiles.{profile}"
            active = interpolate(profiles[key], file=file, key_path=key_path)
            _check_unique_secret_names(active, file, key_path)
            if resolver is not None and isinstance(active, Mapping):
                active = _resolve_profile_references(active, resolver, file, key_path, on_error)
            profiles_out[key] = active if active is not None else LineDict()
        body_out["profiles"] = profiles_out
        out[name] = body_out
    return out


def _check_unique_secret_names(active: Any, file: Path, key_path: str) -> None:
    """Secrets of one profile need unique names: otherwise the first would silently win."""
    secrets = active.get("secrets") if isinstance(active, Mapping) else None
    if not isinstance(secrets, list):
        return
    seen: set[Any] = set()
    for index, secret in enumerate(secrets):
        name = secret.get("name") if isinstance(secret, Mapping) else None
        if name is None:
            continue
        if name in seen:
            raise ConfigError(
                f"secret '{name}' is defined twice", file=file, line=line_of(secrets, index),
                key_path=f"{key_path}.secrets[{index}].name",
            )
        seen.add(name)


def _resolve_profile_references(
    active: Mapping[str, Any],
    resolver: Callable[[str], Any],
    file: Path,
    key_path: str,
    on_error: Callable[[ConfigError], None] | None = None,
) -> Any:
    """Resolve references secret by secret, so an error names the secret it belongs to."""
    out = LineDict(active)
    out.line, out.key_lines = getattr(active, "line", None), getattr(active, "key_lines", {})
    for key, value in active.items():
        if key == "secrets" and isinstance(value, list):
            secrets = LineList()
            secrets.line, secrets.item_lines = getattr(value, "line", None), getattr(value, "item_lines", [])
            for index, secret in enumerate(value):
                name = secret.get("name", f"#{index}") if isinstance(secret, Mapping) else f"#{index}"
                secrets.append(
                    resolve_references(
                        secret, resolver, file=file, key_path=f"{key_path}.secrets[{index}]",
                        subject=f"secret '{name}'", on_error=on_error,
                    )
                )
            out[key] = secrets
        else:
            out[key] = resolve_references(
                value, resolver, file=file, key_path=f"{key_path}.{key}", subject=f"'{key_path}.{key}'",
                on_error=on_error,
            )
    return out
