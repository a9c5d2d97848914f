"""`mxcp test [tool|resource|prompt NAME]`: run the endpoints' `tests:` blocks; exit 1 on any failure."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import MxcpError
from .options import DebugOpt, JsonOpt, ProfileOpt, ReadonlyOpt, load, plural, short
from .output import console, emit_json, reporting_errors

KINDS = ("tool", "resource", "prompt")


def test(
    kind: Annotated[
        str | None, typer.Argument(metavar="KIND",
                                   help="Only this kind: tool, resource or prompt (or an endpoint name alone).")
    ] = None,
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="Only this endpoint (name, or URI for a resource).")
    ] = None,
    profile: ProfileOpt = None,
    readonly: ReadonlyOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the tests declared in endpoint YAML files; exits 1 when any test fails.

    Each test calls its endpoint as a served call would (policies included)
    and checks the result.

    Examples:
      mxcp test                          # every test of every endpoint
      mxcp test tool hello_world         # the tests of one tool
      mxcp test hello_world              # the same, by name alone
      mxcp test --json-output            # results as data
    """
    from ..execution import Runtime
    from ..testing_runner import TestOutcome, plan_tests, run_tests, summarise

    with reporting_errors(json_output, debug):
        if kind is not None and kind not in KINDS and name is None:
            kind, name = None, kind  # `mxcp test NAME`: any kind
        if kind is not None and kind not in KINDS:
            raise MxcpError(f"unknown kind '{kind}': expected tool, resource or prompt")
        project = load(profile, readonly)
        registry = project.endpoints()
        # An endpoint that does not even parse cannot pass its tests: it counts as an error.
        broken = [
            TestOutcome(kind=bad.kind, endpoint=bad.name or bad.origin, name="(endpoint invalid)", status="error",
                        message=bad.message, origin=bad.origin)
            for bad in registry.invalid
            if (kind is None or bad.kind == kind) and (name is None or bad.name == name)
        ]
        with Runtime(project, skip_invalid=True) as runtime:
            planned = [] if name is not None and broken else plan_tests(runtime, kind, name)
            if json_output or not planned:
                outcomes = run_tests(runtime, planned=planned)
            else:
                outcomes = _run_with_progress(runtime, planned)
        outcomes = [*broken, *outcomes]
        counts = summarise(outcomes)
        failed = counts["total"] - counts["passed"]
        result = {"tests": [o.as_dict() for o in outcomes], "summary": counts}
        if json_output:
            payload: dict[str, Any] = {"status": "error" if failed else "ok", "result": result}
            if failed:
                payload["error"] = f"{plural(failed, 'test')} failed"
            emit_json(payload)
        else:
            _render(outcomes, counts)
        if failed:
            raise typer.Exit(1)


def _run_with_progress(runtime: Any, planned: list[Any]) -> list[Any]:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from ..testing_runner import run_tests

    with Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), console=console(stderr=True), transient=True,
    ) as progress:
        task = progress.add_task("Running tests", total=len(planned))

        def advance(outcome: Any) -> None:
            progress.update(task, advance=1, description=escape(f"{outcome.endpoint} · {outcome.name}"))

        return run_tests(runtime, planned=planned, progress=advance)


def _render(outcomes: list[Any], counts: dict[str, int]) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    if not outcomes:
        out.print("No tests found. Add `tests:` to an endpoint's YAML.")
        return
    style = {"passed": "[green]✓ passed[/]", "failed": "[red]✗ failed[/]", "error": "[red]! error[/]"}
    table = Table(title="Test results")
    for column in ("status", "endpoint", "test", "ms", "message"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        table.add_row(style.get(outcome.status, outcome.status), escape(f"{outcome.kind} {outcome.endpoint}"),
                      escape(outcome.name), f"{outcome.duration_ms:.0f}", escape(short(outcome.message or "", 200)))
    out.print(table)
    failed = counts["total"] - counts["passed"]
    colour = "red" if failed else "green"
    out.print(f"[bold {colour}]{counts['passed']} passed[/], {counts['failed']} failed, {counts['error']} errors "
              f"({plural(counts['total'], 'test')})")

