"""mxcp-site.yml and the user config as attrs classes, structured by cattrs with errors naming file, line, key path."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from .errors import ConfigError, suggest
from .yamlfile import LineDict, LineList, line_of, load_yaml_file

SITE_FILE = "mxcp-site.yml"


# -- mxcp-site.yml ----------------------------------------------------------------------------
@attrs.define
class ExtensionSpec:
    name: str
    repo: str | None = None


@attrs.define
class PluginInstance:
    name: str
    module: str
    config: str | None = None


@attrs.define
class SqlToolsConfig:
    enabled: bool = False


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


@attrs.define
class AuditConfig:
    enabled: bool = False
    path: str | None = None


@attrs.define
class DriftConfig:
    path: str | None = None


@attrs.define
class SiteProfile:
    duckdb: DuckDBConfig = attrs.Factory(DuckDBConfig)
    audit: AuditConfig = attrs.Factory(AuditConfig)
    drift: DriftConfig = attrs.Factory(DriftConfig)


@attrs.define
class SiteConfig:
    project: str
    profile: str
    mxcp: int = 1
    description: str | None = None
    secrets: list[str] = attrs.Factory(list)
    extensions: list[Union[str, ExtensionSpec]] = attrs.Factory(list)
    plugin: list[PluginInstance] = attrs.Factory(list)
    sql_tools: SqlToolsConfig = attrs.Factory(SqlToolsConfig)
    paths: PathsConfig = attrs.Factory(PathsConfig)
    profiles: dict[str, SiteProfile] = attrs.Factory(dict)
    dbt: dict[str, Any] | None = None
    # Our additions: plugins switched off for this project, and the default per-call timeout in seconds.
    disable_plugins: list[str] = attrs.Factory(list)
    timeout: float | None = None

    def profile_config(self, profile: str) -> SiteProfile:
        return self.profiles.get(profile) or SiteProfile()


# -- user config (~/.mxcp/config.yml) -------------------------------------------------------------
@attrs.define
class SecretConfig:
    name: str
    type: str = "custom"
    parameters: dict[str, Any] = attrs.Factory(dict)


@attrs.define
class PluginUserConfig:
    config: dict[str, dict[str, str]] = attrs.Factory(dict)


@attrs.define
class UserProfile:
    secrets: list[SecretConfig] = attrs.Factory(list)
    plugin: PluginUserConfig = attrs.Factory(PluginUserConfig)
    auth: dict[str, Any] = attrs.Factory(dict)


@attrs.define
class ProjectUserConfig:
    profiles: dict[str, UserProfile] = attrs.Factory(dict)


@attrs.define
class HttpTransportConfig:
    host: str = "localhost"
    port: int = 8000
    stateless: bool = False
    json_response: bool = False
    scheme: str | None = None
    base_url: str | None = None
    trust_proxy: bool | None = None


@attrs.define
class TransportConfig:
    provider: str = "streamable-http"
    http: HttpTransportConfig = attrs.Factory(HttpTransportConfig)


@attrs.define
class UserConfig:
    mxcp: int = 1
    projects: dict[str, ProjectUserConfig] = attrs.Factory(dict)
    transport: TransportConfig = attrs.Factory(TransportConfig)
    # Blocks of the original's config that plugins interpret; kept as given.
    vault: dict[str, Any] | None = None
    onepassword: dict[str, Any] | None = None
    logging: dict[str, Any] | None = None
    telemetry: dict[str, Any] | None = None
    models: dict[str, Any] | None = None


# -- structuring --------------------------------------------------------------------------------
def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)

    def structure_extension(value: Any, _: Any) -> str | ExtensionSpec:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            return converter.structure(value, ExtensionSpec)
        raise ValueError(f"expected an extension name or {{name, repo}}, got {_describe(value)}")

    converter.register_structure_hook(Union[str, ExtensionSpec], structure_extension)

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

    def structure_mapping(value: Any, _: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {_describe(value)}")
        return dict(value)

    converter.register_structure_hook_func(lambda t: t == dict[str, Any], structure_mapping)
    return converter


_converter = _make_converter()


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def structure(raw: Any, cls: type, *, file: Path, root_path: str = "") -> Any:
    """Structure `raw` into `cls`; the first problem becomes a ConfigError with file, line and key path."""
    if raw is None:
        raw = LineDict()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {_describe(raw)}", file=file)
    try:
        return _converter.structure(raw, cls)
    except Exception as exc:  # noqa: BLE001 - cattrs raises exception groups; we translate them
        path, leaf = _first_problem(exc, [])
        raise _config_error(leaf, path, raw, cls, file, root_path) from None


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
        message = f"unexpected value ({message})"
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


def resolve_references(
    value: Any, resolver: Callable[[str], Any], *, file: Path, key_path: str, subject: str
) -> Any:
    """Resolve `scheme://...` strings (not ordinary URLs) through `resolver`; unknown schemes are errors."""

    def walk(node: Any, path: str, container: Any, key: Any) -> Any:
        if isinstance(node, str):
            match = _SCHEME.match(node)
            if not match or match.group(1).lower() in PASSTHROUGH_SCHEMES:
                return node
            line = getattr(container, "line_of", lambda _k: None)(key)
            try:
                resolved = resolver(node)
            except ConfigError as exc:
                if exc.file is not None:
                    raise
                # A provider knows what went wrong, not where: add the file, line and key path.
                raise ConfigError(f"{subject}: {exc.message}", file=file, line=line, key_path=path) from None
            if resolved is None:
                raise ConfigError(
                    f"{subject}: no plugin resolves references of scheme '{match.group(1)}://' "
                    "(is the plugin for it installed and enabled?)",
                    file=file,
                    line=line,
                    key_path=path,
                )
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


def load_site_config(site_file: Path, profile: str | None = None) -> tuple[SiteConfig, str]:
    """Parse the site file, interpolating `${VAR}` everywhere except the profiles not in use."""
    raw = load_yaml_file(site_file)
    if raw is None or not isinstance(raw, Mapping):
        raise ConfigError("expected a mapping with at least 'mxcp', 'project' and 'profile'", file=site_file)
    interpolated = LineDict()
    interpolated.line, interpolated.key_lines = raw.line, raw.key_lines
    for key, value in raw.items():
        if key != "profiles":
            interpolated[key] = interpolate(value, file=site_file, key_path=str(key))
    # `profile:` itself may come from a variable, so the active profile is known only after the pass above.
    active = profile or os.environ.get("MXCP_PROFILE") or interpolated.get("profile")
    profiles_raw = raw.get("profiles")
    if isinstance(profiles_raw, Mapping):
        profiles = LineDict()
        profiles.line, profiles.key_lines = getattr(profiles_raw, "line", None), getattr(profiles_raw, "key_lines", {})
        for name, body in profiles_raw.items():
            profiles[name] = (
                interpolate(body, file=site_file, key_path=f"profiles.{name}") if name == active else body
            )
        interpolated["profiles"] = profiles
    elif "profiles" in raw:
        interpolated["profiles"] = profiles_raw
    site = structure(interpolated, SiteConfig, file=site_file)
    if site.mxcp != 1:
        raise ConfigError(
            f"unsupported version {site.mxcp}; expected 1", file=site_file, line=raw.line_of("mxcp"), key_path="mxcp"
        )
    return site, str(active or site.profile)


def load_user_config(
    project: str,
    profile: str,
    resolver: Callable[[str], Any] | None = None,
    path: Path | None = None,
) -> UserConfig:
    """Load the user config; only the active project and profile are interpolated and resolved."""
    path = path or user_config_path()
    if not path.exists():
        if os.environ.get("MXCP_CONFIG"):
            raise ConfigError("file named by MXCP_CONFIG does not exist", file=path)
        return UserConfig()
    raw = load_yaml_file(path)
    if raw is None:
        return UserConfig()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping at the top level, got {_describe(raw)}", file=path)
    prepared = LineDict()
    prepared.line, prepared.key_lines = raw.line, raw.key_lines
    for key, value in raw.items():
        if key == "projects" and isinstance(value, Mapping):
            prepared[key] = _prepare_projects(value, project, profile, path, resolver)
        else:
            prepared[key] = interpolate(value, file=path, key_path=str(key))
    return structure(prepared, UserConfig, file=path)


def _prepare_projects(
    projects: Mapping[str, Any],
    project: str,
    profile: str,
    file: Path,
    resolver: Callable[[str], Any] | None,
) -> Any:
    out = LineDict()
    out.line, out.key_lines = getattr(projects, "line", None), getattr(projects, "key_lines", {})
    for name, body in projects.items():
        if name != project or not isinstance(body, Mapping) or not isinstance(body.get("profiles"), Mapping):
            out[name] = body
            continue
        body_out = LineDict(body)
        body_out.line, body_out.key_lines = getattr(body, "line", None), getattr(body, "key_lines", {})
        profiles = body["profiles"]
        profiles_out = LineDict(profiles)
        profiles_out.line, profiles_out.key_lines = getattr(profiles, "line", None), getattr(profiles, "key_lines", {})
        if profile in profiles:
            key_path = f"projects.{name}.profiles.{profile}"
            active = interpolate(profiles[profile], file=file, key_path=key_path)
            _check_unique_secret_names(active, file, key_path)
            if resolver is not None and isinstance(active, Mapping):
                active = _resolve_profile_references(active, resolver, file, key_path)
            profiles_out[profile] = active if active is not None else LineDict()
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
    active: Mapping[str, Any], resolver: Callable[[str], Any], file: Path, key_path: str
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
                        subject=f"secret '{name}'",
                    )
                )
            out[key] = secrets
        else:
            out[key] = resolve_references(
                value, resolver, file=file, key_path=f"{key_path}.{key}", subject=f"'{key_path}.{key}'"
            )
    return out
