"""`mxcp run tool|resource|prompt NAME -p key=value` and `mxcp query "SQL"`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import MxcpError
from .options import DebugOpt, JsonOpt, ProfileOpt, ReadonlyOpt, load
from .output import (
    cell_text,
    console,
    emit_json,
    ends_the_process,
    ok,
    print_table,
    reporting_errors,
    to_json_text,
)

QUERY_ROWS_SHOWN = 1000  # `mxcp query` prints this many rows unless --limit says otherwise


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
    kind: Annotated[str, typer.Argument(metavar="KIND", help="tool, resource or prompt")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Endpoint name (URI for a resource).")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", metavar="KEY=VALUE",
                     help="An argument (JSON values accepted; @file.json reads a file). Repeatable."),
    ] = None,
    user_context: Annotated[
        str | None, typer.Option("--user-context", "-u", metavar="JSON",
                                 help="The caller, a JSON object or @file.json (policies, "
                                 "get_username(), mxcp.runtime.user); default: the user config's user_context, "
                                 "else anonymous.")
    ] = None,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run one endpoint and print its result.

    The call takes the same path as a served one: type checks, policies, audit.

    Examples:
      mxcp run tool hello_world -p name=World
      mxcp run tool search -p filters='{"city": "Paris"}' -p limit=5
      mxcp run resource 'cities://Paris' --json-output
      mxcp run prompt ask -p topic=@topic.json
      mxcp run tool employees -u '{"user_id": "u1", "role": "admin"}'
    """
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
    sql: Annotated[str | None, typer.Argument(metavar="SQL", help="SQL to run.")] = None,
    file: Annotated[Path | None, typer.Option("--file", metavar="FILE", help="Read the SQL from a file.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", metavar="KEY=VALUE", help="A value bound as $KEY. Repeatable."),
    ] = None,
    user_context: Annotated[
        str | None,
        typer.Option("--user-context", "-u", metavar="JSON",
                     help="JSON user context (or @file.json) that get_username() & co. "
                     "return; without it the caller is anonymous (they return NULL)."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", metavar="N", min=0,
                     help=f"Print at most N rows (default {QUERY_ROWS_SHOWN}; 0: all); says how many were left out."),
    ] = QUERY_ROWS_SHOWN,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run SQL against the project's database (DuckDB, or the profile's sql.engine).

    On DuckDB with the project's extensions, secrets and functions loaded
    (UDF plugins, get_username() & co.).

    Examples:
      mxcp query "SELECT * FROM sales LIMIT 5"
      mxcp query "SELECT * FROM sales WHERE region = $region" -p region=EU
      mxcp query --file report.sql --json-output
    """
    from .. import context
    from ..execution import Phase, Runtime
    from ..sql import run_sql

    with reporting_errors(json_output, debug):
        ends_the_process()
        if (sql is None) == (file is None):
            raise MxcpError("give the SQL as an argument or with --file (one of them)")
        text = sql if sql is not None else file.read_text(encoding="utf-8")  # type: ignore[union-attr]
        arguments = dict(parse_param(p) for p in param or [])
        project = load(profile, readonly)
        user = command_caller(user_context, project)
        with Runtime(project, phase=Phase.DATABASE) as runtime, context.bound(runtime, user=user):
            cursor = context.cursor()
            fetched = run_sql(cursor, text, arguments, max_rows=limit or None)
            # run_sql read one row past the limit to know there are more: that one, and the rest, counted (up to
            # COUNT_AT_MOST, so --limit bounds the work whatever the size of the result).
            rest, exact = count_rest(cursor) if fetched.more else (0, True)
            omitted = 1 + rest if fetched.more else 0
        rows = list(fetched)
        if omitted and json_output:
            envelope = {"status": "ok", "result": rows, "truncated": True, "rows_omitted": omitted}
            if not exact:
                envelope["rows_omitted_exact"] = False  # at least that many: counting stopped there
            emit_json(envelope)
            return

        def render(result: list[dict[str, Any]]) -> None:
            if not result:
                print("(no rows)")
                return
            print_table([cell_text(column) for column in result[0]],
                        [[cell_text(value) for value in row.values()] for row in result])
            if omitted:
                more = f"{omitted}" if exact else f"over {COUNT_AT_MOST:,}"
                print(f"mxcp: {len(result)} rows printed, {more} more left out (--limit N prints more, "
                      "--limit 0 all)", file=sys.stderr)

        ok(rows, json_output, render)



COUNT_AT_MOST = 1_000_000  # rows counted past the limit; beyond, "over 1,000,000 more"


def count_rest(cursor: Any) -> tuple[int, bool]:
    """Rows left in the cursor's result, up to COUNT_AT_MOST (and whether that is all of them), read in chunks and
    dropped (never held at once, never printed).

    Counting reads the rest of the result in DuckDB's Python conversion (about 0.3 s per million rows); running a
    COUNT(*) instead would run the query a second time, with its side effects (a `nextval`, an INSERT ...
    RETURNING). Any engine's cursor offers fetchmany; another engine's raises ExecutionError itself."""
    import duckdb

    from ..errors import ExecutionError
    from ..sql import first_line

    total = 0
    try:
        while total <= COUNT_AT_MOST and (chunk := cursor.fetchmany(10_000)):
            total += len(chunk)
    except duckdb.Error as exc:  # a failure further down the result, as run_sql words it
        raise ExecutionError(f"SQL error: {first_line(exc)}") from None
    if total > COUNT_AT_MOST:
        return COUNT_AT_MOST, False  # at least this many (and the row run_sql read past the limit)
    return total, True

