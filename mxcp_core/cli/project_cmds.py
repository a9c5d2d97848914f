"""`mxcp list`, `mxcp validate`, `mxcp plugins`."""
from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .options import DebugOpt, GlobalState, JsonOpt, ProfileOpt, load, plural, short
from .output import cell_text, console, ends_the_process, fail, ok, paint, print_table, reporting_errors


def list_endpoints(
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the project's tools, resources and prompts.

    Also names every endpoint file that does not parse, with the reason.

    Examples:
      mxcp list                          # a table
      mxcp list --json-output            # endpoints as data
      mxcp -C ~/projects/demo list --profile prod
    """
    with reporting_errors(json_output, debug):
        ends_the_process()
        project = load(profile)
        registry = project.endpoints()
        rows = [
            {
                "kind": e.kind,
                "name": e.key,
                "description": e.description,
                "language": e.language,
                "origin": e.origin,
                "tags": list(e.tags),
            }
            for e in registry.all()
        ]
        invalid = [{"kind": b.kind, "name": b.name, "origin": b.origin, "error": b.message} for b in registry.invalid]
        result = {"endpoints": rows, "invalid": invalid}

        def render(_: Any) -> None:
            if not rows and not invalid:
                print("No endpoints found. Add YAML files under tools/, resources/ or prompts/.")
                return
            print_table(
                ("kind", "name", "language", "description", "origin"),
                [[cell_text(row["kind"]), cell_text(row["name"]), cell_text(row["language"] or ""),
                  cell_text(short(row["description"], 50)), cell_text(row["origin"])] for row in rows],
                title=f"{project.context.name} ({project.context.profile})",
                shrink_first=(3,),  # the description, before names and files
            )
            for bad in invalid:
                print(f"{paint('invalid', 'red', sys.stdout)} {cell_text(bad['origin'])}: "
                      f"{cell_text(bad['error'], lines=True)}")

        ok(result, json_output, render)


def validate(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="Only this endpoint (name, or URI for a resource).")
    ] = None,
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check every endpoint and every secret reference; exits 1 on any error.

    Endpoints: structure, references, SQL prepared against the database,
    Python functions and their parameters.
    Secrets: every reference of the user config's active profile resolves
    (vault://, op://, file://, ...).

    Examples:
      mxcp validate                      # everything
      mxcp validate hello_world          # one endpoint
      mxcp validate --json-output        # problems as data
    """
    import attrs

    from ..project import LoadProblems
    from ..records import Problem
    from ..validation import validate_project

    with reporting_errors(json_output, debug):
        ends_the_process()
        config_problems = LoadProblems()
        project = load(profile, problems=config_problems)
        problems = [Problem(message=f"{e.key_path}: {e.message}" if e.key_path else e.message,
                            file=f"{e.file}:{e.line}" if e.file and e.line else e.file)
                    for e in config_problems.all()]
        problems += validate_project(project, only=name)
        errors = [p for p in problems if p.severity == "error"]
        registry = project.endpoints()
        checked = len([e for e in registry.all() if name is None or e.key == name]) + len(
            [b for b in registry.invalid if name is None or b.name == name])
        if name is not None and checked == 0 and not problems:
            fail(f"endpoint '{name}' not found", json_output)
        references = {"resolved": project.references_resolved, "failed": len(config_problems.references)}
        result = {
            "checked": checked,
            "references": references,
            "problems": [attrs.asdict(p) for p in problems],
            "valid": not errors,
        }
        if json_output:
            from .output import emit_json

            if errors:
                fail(f"{plural(len(errors), 'problem')} found", json_output, result=result)
            emit_json({"status": "ok", "result": result})
        else:
            out = sys.stderr if errors else sys.stdout
            lines = []
            for problem in problems:
                colour = "red" if problem.severity == "error" else "yellow"
                lines.append(f"{paint(problem.severity, colour, out)} {cell_text(problem.format(), lines=True)}")
            resolved = plural(references["resolved"], "secret reference")
            if errors:
                lines.append(f"{paint(plural(len(errors), 'problem') + ' found', 'bold red', out)} in "
                             f"{plural(checked, 'endpoint')} ({resolved} resolved, {references['failed']} failed)")
            else:
                lines.append(f"{paint('✓', 'green', out)} {plural(checked, 'endpoint')} valid, {resolved} resolved")
            out.write("\n".join(lines) + "\n")
            out.flush()
        if errors:
            raise typer.Exit(1)


def plugins(
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show loaded plugins, disabled ones, and failed loads with the reason.

    Each loaded plugin with its distribution, version and hooks.

    Examples:
      mxcp plugins                       # a table
      mxcp --disable-plugin audit plugins
      mxcp plugins --json-output         # plugins as data
    """
    from pathlib import Path

    import attrs
    from rich.markup import escape

    from ..config import find_site_file
    from ..errors import ConfigError
    from ..plugin_manager import load_plugins

    with reporting_errors(json_output, debug):
        try:
            find_site_file(Path.cwd())
        except ConfigError:
            # Outside a project: show what is installed.
            host = GlobalState.host or load_plugins()
        else:
            host = load(profile).host
        result = {
            "plugins": [attrs.asdict(p) for p in host.plugins()],
            "disabled": sorted(set(host.skipped)),
            "failed": [attrs.asdict(f) for f in host.failures],
        }

        def render(_: Any) -> None:
            from rich.table import Table

            out = console()
            table = Table(title="Plugins")
            for column in ("name", "distribution", "version", "hooks"):
                table.add_column(column)
            for info in host.plugins():
                table.add_row(info.name, info.distribution or "(core)", info.version or "", ", ".join(info.hooks))
            out.print(table)
            for name in result["disabled"]:
                out.print(f"[yellow]disabled[/] {name}")
            for failure in host.failures:
                out.print(f"[red]failed[/] {failure.name} ({failure.distribution or '?'}): {escape(failure.reason)}",
                          highlight=False)

        ok(result, json_output, render)
