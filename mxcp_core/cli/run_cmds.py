"""`mxcp run tool|resource|prompt NAME -p key=value` and `mxcp query "SQL"`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import MxcpError
from .options import DebugOpt, JsonOpt, ProfileOpt, ReadonlyOpt, load
from .output import console, ok, reporting_errors, to_json_text


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value`: the value as JSON when it parses, `@file.json` reads a file, else the plain string."""
    if "=" not in text:
        raise MxcpError(f"parameter '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MxcpError(f"parameter '{key}': cannot read {path}: {exc.strerror}") from None
        try:
            return key, json.loads(content)
        except json.JSONDecodeError as exc:
            raise MxcpError(f"parameter '{key}': {path} is not valid JSON: {exc}") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return key, raw
    # A bare word like `World` is a string; JSON numbers, booleans, lists and objects keep their type.
    return key, value


def parse_user_context(text: str | None) -> dict[str, Any] | None:
    """`--user-context`: a JSON object, or `@file.json` holding one; None without the option."""
    if not text:
        return None
    user = parse_param(f"user={text}")[1]
    if not isinstance(user, dict):
        raise MxcpError("--user-context must be a JSON object")
    return user


def command_caller(text: str | None, project: Any) -> Any:
    """Who runs the command: `--user-context`, else the user config's identity for this machine's user
    (`user_context:`, through identify_caller), else anonymous."""
    from ..records import UserContext

    given = parse_user_context(text)
    if given is None:
        return project.hooks.identify_caller("cli", None, project.context)
    try:
        return UserContext.from_mapping(given, where="--user-context")
    except TypeError as exc:
        raise MxcpError(str(exc)) from None


def keep_text_for_strings(arguments: dict[str, Any], raw_params: list[str], declared: Any) -> dict[str, Any]:
    """`-p zip=02134` or `-p name=123` for a string parameter: the text as typed, not the JSON number it parses to."""
    string_names = {p.name for p in declared if p.type.type == "string"}
    fixed = dict(arguments)
    for text in raw_params:
        key, _, raw = text.partition("=")
        key = key.strip()
        value = fixed.get(key)
        if key in string_names and not raw.startswith("@") and value is not None and not isinstance(value, str):
            fixed[key] = raw
    return fixed


def run(
    kind: Annotated[str, typer.Argument(help="tool, resource or prompt")],
    name: Annotated[str, typer.Argument(help="Endpoint name (URI for a resource).")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="key=value (JSON values accepted; @file.json reads a file). Repeatable."),
    ] = None,
    user_context: Annotated[
        str | None, typer.Option("--user-context", "-u", help="The caller, a JSON object or @file.json (policies, "
                                 "get_username(), mxcp.runtime.user); default: the user config's user_context, "
                                 "else anonymous.")
    ] = None,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run one endpoint and print its result."""
    import anyio

    from ..execution import Runtime

    with reporting_errors(json_output, debug):
        if kind not in {"tool", "resource", "prompt"}:
            raise MxcpError(f"unknown kind '{kind}': expected tool, resource or prompt")
        arguments = dict(parse_param(p) for p in param or [])
        project = load(profile, readonly)
        user = command_caller(user_context, project)
        with Runtime(project, skip_invalid=True) as runtime:
            compiled = runtime.compiled.get((kind, name))
            if compiled is not None:
                arguments = keep_text_for_strings(arguments, param or [], compiled.definition.parameters)
            result, call = anyio.run(
                lambda: runtime.call_async_with_call(kind, name, arguments, caller="cli", user=user)
            )
        truncated = call.notes.get("truncated")
        if truncated:
            from ..execution import truncation_text

            print(f"mxcp: {truncation_text(truncated)}", file=sys.stderr)
        ok(result, json_output, lambda r: console().print_json(to_json_text(r)) if not isinstance(r, str)
           else console().print(r, highlight=False, markup=False))


def query(
    sql: Annotated[str | None, typer.Argument(help="SQL to run.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read the SQL from a file.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="key=value bound as $key. Repeatable.")
    ] = None,
    user_context: Annotated[
        str | None,
        typer.Option("--user-context", "-u", help="JSON user context (or @file.json) that get_username() & co. "
                     "return; without it the caller is anonymous (they return NULL)."),
    ] = None,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run SQL against the project's DuckDB database (UDFs and extensions loaded)."""
    from .. import context
    from ..execution import Phase, Runtime
    from ..sql import run_sql

    with reporting_errors(json_output, debug):
        if (sql is None) == (file is None):
            raise MxcpError("give the SQL as an argument or with --file (one of them)")
        text = sql if sql is not None else file.read_text(encoding="utf-8")  # type: ignore[union-attr]
        arguments = dict(parse_param(p) for p in param or [])
        project = load(profile, readonly)
        user = command_caller(user_context, project)
        with Runtime(project, phase=Phase.DATABASE) as runtime, context.bound(runtime, user=user):
            rows = list(run_sql(context.cursor(), text, arguments))

        def render(result: list[dict[str, Any]]) -> None:
            from rich.table import Table

            if not result:
                console().print("(no rows)")
                return
            table = Table()
            for column in result[0]:
                table.add_column(str(column))
            for row in result:
                table.add_row(*("NULL" if v is None else str(v) for v in row.values()))
            console().print(table)

        ok(rows, json_output, render)

