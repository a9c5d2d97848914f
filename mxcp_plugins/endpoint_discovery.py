"""Builtin plugin: endpoints from `*.yml` / `*.yaml` files under the project's tools/, resources/ and prompts/."""
from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mxcp_core import (
    ConfigError,
    EndpointDefinition,
    InvalidEndpoint,
    ProjectContext,
    PromptDefinition,
    ResourceDefinition,
    SourceSpec,
    ToolDefinition,
    confined_path,
    endpoint_test_problems,
    hookimpl,
    line_of,
    load_yaml_file,
    parse_parameters,
    parse_type,
    read_text_file,
    structure_config,
    suggest,
)

COMMON_KEYS = {
    "name", "description", "tags", "parameters", "return", "source", "language", "enabled",
    "tests", "policies", "timeout", "annotations", "title",
}
KEYS_BY_KIND = {
    "tool": COMMON_KEYS,
    "resource": COMMON_KEYS | {"uri", "mime_type"},
    "prompt": {"name", "description", "tags", "parameters", "messages", "enabled", "tests", "policies", "title"},
}
ANNOTATION_KEYS = {"title", "readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
MESSAGE_KEYS = {"role", "type", "prompt"}
TOP_KEYS = {"mxcp", "tool", "resource", "prompt", "metadata"}
FOLDERS = ("tools", "resources", "prompts")
ENDPOINT_KINDS: dict[str, type[EndpointDefinition]] = {
    "tool": ToolDefinition, "resource": ResourceDefinition, "prompt": PromptDefinition,
}
_URI_VAR = re.compile(r"\{\+?([A-Za-z_][A-Za-z0-9_]*)\}")

STATE_KEY = "endpoint_discovery"
_lock = threading.Lock()


def discover(project: ProjectContext) -> list[Any]:
    """Parse every endpoint file of the project once; later calls reuse the result kept in the project's state."""
    with _lock:
        found = project.state.get(STATE_KEY)
        if found is None:
            found = project.state[STATE_KEY] = _scan(project)
        return found


def _scan(project: ProjectContext) -> list[Any]:
    found: list[Any] = []
    seen_files: set[Path] = set()
    for folder_name in FOLDERS:
        folder = project.path(folder_name)
        if not folder.is_dir():
            continue
        kind = folder_name.rstrip("s")
        try:
            confined_path(project, getattr(project.site.paths, folder_name), what=f"the {folder_name} folder",
                          file=project.site_file.name, key_path=f"paths.{folder_name}")
        except ConfigError as exc:
            found.append(InvalidEndpoint(kind=kind, origin=f"{getattr(project.site.paths, folder_name)}/",
                                         message=exc.format()))
            continue
        for path in sorted([*folder.rglob("*.yml"), *folder.rglob("*.yaml")]):
            if path in seen_files or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            seen_files.add(path)
            found.append(_load_file(path, project, default_kind=kind))
    return found


def _display(path: Path, project: ProjectContext) -> str:
    try:
        return str(path.relative_to(project.root))
    except ValueError:
        return str(path)


def _load_file(path: Path, project: ProjectContext, default_kind: str = "tool") -> Any:
    shown = _display(path, project)
    kind = default_kind  # until the file says which kind it is
    try:
        # A symlink out of the project is refused like a source file outside it; a FIFO, a binary file or an
        # alias bomb is one error naming this file, and the other files load.
        confined_path(project, shown, what="endpoint file", file=shown)
        raw = load_yaml_file(path, shown=shown)
        if not isinstance(raw, Mapping):
            raise ConfigError("expected a mapping with 'mxcp: 1' and one of tool:, resource:, prompt:", file=shown)
        for key in raw:
            if key not in TOP_KEYS:
                raise ConfigError(
                    f"unknown key '{key}'{suggest(str(key), TOP_KEYS)}",
                    file=shown, line=line_of(raw, key), key_path=str(key),
                )
        kinds = [k for k in ENDPOINT_KINDS if k in raw]
        if len(kinds) != 1:
            raise ConfigError(
                "expected exactly one of tool:, resource:, prompt:" + (f" (found {', '.join(kinds)})" if kinds else ""),
                file=shown, line=getattr(raw, "line", None),
            )
        kind = kinds[0]
        version = raw.get("mxcp", 1)
        if str(version) not in {"1", "1.0"}:
            raise ConfigError(f"unsupported version {version!r}; expected 1", file=shown,
                              line=line_of(raw, "mxcp"), key_path="mxcp")
        return parse_endpoint(kind, raw[kind], file=path, shown=shown, project_root=project.root,
                              claimed=_claimed_keys(project), project=project)
    except ConfigError as exc:
        # The origin already names this file; repeat only a file that is another one (a missing source file...).
        same_file = exc.file in (shown, str(path))
        return InvalidEndpoint(kind=kind, origin=shown, message=exc.detail() if same_file else exc.format())


def _claimed_keys(project: ProjectContext) -> dict[str, Any]:
    """Endpoint keys other plugins declared (`ConfigSection(scope="endpoint")`), with their schemas."""
    return {name: section.schema for (scope, name), section in project.sections.items()
            if scope == "endpoint" and name not in COMMON_KEYS}


def parse_endpoint(
    kind: str, body: Any, *, file: Path, shown: str, project_root: Path, claimed: Mapping[str, Any] | None = None,
    project: ProjectContext | None = None,
) -> EndpointDefinition:
    """Turn one `tool:` / `resource:` / `prompt:` mapping into its attrs definition.

    With `project`, `source.file` must lie inside the project folder or a folder of its `allowed_paths:`.
    """
    if not isinstance(body, Mapping):
        raise ConfigError("expected a mapping", file=shown, key_path=kind)
    claimed = dict(claimed or {})
    allowed = KEYS_BY_KIND[kind] | claimed.keys()
    for key in body:
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{key}'{suggest(str(key), allowed)}",
                file=shown, line=line_of(body, key), key_path=f"{kind}.{key}",
            )

    def need(key: str, expected: type, what: str, default: Any = None, required: bool = False) -> Any:
        if key not in body or body[key] is None:
            if required:
                raise ConfigError(f"required key '{key}' is missing", file=shown,
                                  line=getattr(body, "line", None), key_path=f"{kind}.{key}")
            return default
        value = body[key]
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool) and expected is not object):
            raise ConfigError(f"expected {what}, got {type(value).__name__} {value!r}"[:160], file=shown,
                              line=line_of(body, key), key_path=f"{kind}.{key}")
        return value

    uri = need("uri", str, "a string", required=kind == "resource")
    name = need("name", str, "a string", required=kind != "resource")
    if kind == "resource" and not name:
        name = uri
    description = need("description", str, "a string", default="")
    tags = need("tags", list, "a list of strings", default=[])
    enabled = need("enabled", bool, "true or false", default=True)
    timeout = need("timeout", (int, float), "a number of seconds")
    if timeout is not None and not (0 < timeout < float("inf")):  # nan fails both comparisons
        raise ConfigError(f"expected a number of seconds greater than 0, got {timeout!r}", file=shown,
                          line=line_of(body, "timeout"), key_path=f"{kind}.timeout")
    language = need("language", str, "a string such as sql or python")
    annotations = dict(need("annotations", Mapping, "a mapping", default={}))
    for key in annotations:
        if key not in ANNOTATION_KEYS:
            raise ConfigError(f"unknown annotation '{key}'{suggest(str(key), ANNOTATION_KEYS)}", file=shown,
                              line=line_of(body.get("annotations"), key), key_path=f"{kind}.annotations.{key}")
    if "title" in body and "title" not in annotations:
        annotations["title"] = body["title"]
    parameters = parse_parameters(body.get("parameters") or [], file=shown, key_path=f"{kind}.parameters")
    return_type = parse_type(body["return"], file=shown, key_path=f"{kind}.return") if body.get("return") else None
    tests = need("tests", list, "a list of tests", default=[])
    for index, test in enumerate(tests):
        problems = endpoint_test_problems(test)
        if problems:
            raise ConfigError(problems[0], file=shown, line=line_of(tests, index), key_path=f"{kind}.tests[{index}]")
    policies = need("policies", Mapping, "a mapping with input: and output:")
    extras = {
        name: structure_config(body[name], schema, file=shown, root_path=f"{kind}.{name}", line=line_of(body, name))
        for name, schema in claimed.items() if name in body
    }

    common: dict[str, Any] = dict(
        name=name, description=description, tags=tuple(str(t) for t in tags), enabled=enabled,
        parameters=parameters, return_type=return_type, tests=tuple(tests), policies=policies,
        annotations=annotations, origin=shown, timeout=float(timeout) if timeout else None, extras=extras,
    )
    if kind == "prompt":
        messages = need("messages", list, "a list of messages", required=True)
        for index, message in enumerate(messages):
            _check_message(message, index, shown, messages)
        return ENDPOINT_KINDS[kind](messages=tuple(dict(m) for m in messages), **common)

    source = _parse_source(body, kind, file, shown, project_root, project)
    common.update(language=language, source=source)
    if kind == "resource":
        declared = {p.name for p in parameters}
        in_uri = set(_URI_VAR.findall(uri))
        missing = sorted(declared - in_uri)
        if missing:
            raise ConfigError(f"parameter(s) {', '.join(missing)} do not appear in the URI '{uri}'",
                              file=shown, line=line_of(body, "uri"), key_path="resource.uri")
        undeclared = sorted(in_uri - declared)
        if undeclared:
            raise ConfigError(f"URI placeholder(s) {', '.join(undeclared)} are not declared parameters",
                              file=shown, line=line_of(body, "uri"), key_path="resource.uri")
        mime_type = need("mime_type", str, "a string")
        return ENDPOINT_KINDS[kind](uri=uri, mime_type=mime_type, **common)
    return ENDPOINT_KINDS[kind](**common)


def _parse_source(
    body: Mapping[str, Any], kind: str, file: Path, shown: str, project_root: Path,
    project: ProjectContext | None = None,
) -> SourceSpec:
    source = body.get("source")
    if not isinstance(source, Mapping):
        raise ConfigError("required key 'source' is missing or not a mapping (expected code: or file:)",
                          file=shown, line=line_of(body, "source") or getattr(body, "line", None),
                          key_path=f"{kind}.source")
    for key in source:
        if key not in {"code", "file"}:
            raise ConfigError(f"unknown key '{key}'{suggest(str(key), ['code', 'file'])}", file=shown,
                              line=line_of(source, key), key_path=f"{kind}.source.{key}")
    if ("code" in source) == ("file" in source):
        raise ConfigError("expected exactly one of code: or file:", file=shown, line=line_of(body, "source"),
                          key_path=f"{kind}.source")
    if "code" in source:
        if not isinstance(source["code"], str):
            raise ConfigError("expected a string", file=shown, line=line_of(source, "code"),
                              key_path=f"{kind}.source.code")
        return SourceSpec(code=source["code"])
    target = source["file"]
    if not isinstance(target, str):
        raise ConfigError("expected a path string", file=shown, line=line_of(source, "file"),
                          key_path=f"{kind}.source.file")
    where = dict(file=shown, line=line_of(source, "file"), key_path=f"{kind}.source.file")
    # Relative to the YAML file; a leading / means the project root (never the file system's root).
    relative, base = (target.lstrip("/"), project_root) if target.startswith("/") else (target, file.parent)
    if project is not None:  # symlinks are resolved before the check
        path = confined_path(project, relative, what="source file", base=base, reference=target, **where)
    else:
        path = (base / relative).resolve()
    if not path.exists():
        raise ConfigError(f"source file '{target}' does not exist", **where)
    try:
        read_text_file(path)  # a regular UTF-8 file: a FIFO or a binary file is this endpoint's error, now
    except ConfigError as exc:
        raise ConfigError(f"source file '{target}': {exc.message}", **where) from None
    return SourceSpec(file=path)


def _check_message(message: Any, index: int, shown: str, messages: Any) -> None:
    key_path = f"prompt.messages[{index}]"
    if not isinstance(message, Mapping):
        raise ConfigError("expected a mapping with role and prompt", file=shown,
                          line=line_of(messages, index), key_path=key_path)
    for key in message:
        if key not in MESSAGE_KEYS:
            raise ConfigError(f"unknown key '{key}'{suggest(str(key), MESSAGE_KEYS)}", file=shown,
                              line=line_of(message, key), key_path=f"{key_path}.{key}")
    if message.get("role") not in {"user", "assistant"}:
        raise ConfigError("role must be 'user' or 'assistant'", file=shown,
                          line=line_of(message, "role"), key_path=f"{key_path}.role")
    if message.get("type", "text") != "text":
        raise ConfigError("type must be 'text'", file=shown, line=line_of(message, "type"),
                          key_path=f"{key_path}.type")
    if not isinstance(message.get("prompt"), str):
        raise ConfigError("prompt must be a string", file=shown, line=line_of(message, "prompt") or
                          line_of(messages, index), key_path=f"{key_path}.prompt")


def _of_kind(project: ProjectContext, kind: str) -> list[Any]:
    return [item for item in discover(project) if item.kind == kind]


@hookimpl
def provide_tool(project: ProjectContext) -> list[Any]:
    return _of_kind(project, "tool")


@hookimpl
def provide_resource(project: ProjectContext) -> list[Any]:
    return _of_kind(project, "resource")


@hookimpl
def provide_prompt(project: ProjectContext) -> list[Any]:
    return _of_kind(project, "prompt")
