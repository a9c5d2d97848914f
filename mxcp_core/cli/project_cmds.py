"""`mxcp list`, `mxcp validate`, `mxcp plugins`."""
from __future__ import annotations

from typing import Annotated, Any

import attrs
import typer
from rich.markup import escape

from .options import DebugOpt, GlobalState, JsonOpt, ProfileOpt, load, plural, short
from .output import console, fail, ok, reporting_errors


def list_endpoints(
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the project's tools, resources and prompts."""
    with reporting_errors(json_output, debug):
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
            from rich.table import Table

            out = console()
            if not rows and not invalid:
                out.print("No endpoints found. Add YAML files under tools/, resources/ or prompts/.")
                return
            table = Table(title=f"{project.context.name} ({project.context.profile})", show_lines=False)
            for column in ("kind", "name", "language", "description", "origin"):
                table.add_column(column)
            for row in rows:
                table.add_row(row["kind"], row["name"], row["language"] or "", short(row["description"], 50),
                              row["origin"])
            out.print(table)
            for bad in invalid:
                out.print(f"[red]invalid[/] {escape(bad['origin'])}: {escape(bad['error'])}", highlight=False)

        ok(result, json_output, render)


def validate(
    name: Annotated[str | None, typer.Argument(help="Only this endpoint (name, or URI for a resource).")] = None,
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check every endpoint and every secret reference; exits 1 on any error.

    Endpoints: structure, references, SQL prepared against the database, Python functions and their parameters.
    Secrets: every reference of the user config's active profile resolves (vault://, op://, file://, ...).
    """
    from ..project import LoadProblems
    from ..records import Problem
    from ..validation import validate_project

    with reporting_errors(json_output, debug):
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

            emit_json({"status": "ok" if not errors else "error", "result": result,
                       **({"error": f"{plural(len(errors), 'problem')} found"} if errors else {})})
        else:
            out = console(stderr=bool(errors))
            for problem in problems:
                colour = "red" if problem.severity == "error" else "yellow"
                out.print(f"[{colour}]{problem.severity}[/] {escape(problem.format())}", highlight=False)
            resolved = plural(references["resolved"], "secret reference")
            if errors:
                out.print(f"[bold red]{plural(len(errors), 'problem')} found[/] in {plural(checked, 'endpoint')}"
                          f" ({resolved} resolved, {references['failed']} failed)")
            else:
                console().print(f"[green]✓[/] {plural(checked, 'endpoint')} valid, {resolved} resolved")
        if errors:
            raise typer.Exit(1)


def plugins(
    profile: ProfileOpt = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show loaded plugins (distribution, version, hooks), disabled ones, and failed loads with the reason."""
    from pathlib import Path

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
