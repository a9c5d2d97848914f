"""`mxcp init`: a new project layout, optionally with a hello-world SQL tool."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import SITE_FILE
from .options import DebugOpt, JsonOpt
from .output import fail, ok, reporting_errors

FOLDERS = ("tools", "resources", "prompts", "evals", "python", "plugins", "sql", "drift", "audit", "data")

HELLO_TOOL = """\
mxcp: 1
tool:
  name: hello_world
  description: Say hello to someone.
  tags: [example]
  annotations:
    readOnlyHint: true
  parameters:
    - name: name
      type: string
      description: Who to greet
      minLength: 1
  return:
    type: string
  source:
    file: ../sql/hello_world.sql
  tests:
    - name: greets_world
      arguments:
        - {key: name, value: World}
      result: "Hello, World!"
"""

HELLO_SQL = "SELECT 'Hello, ' || $name || '!' AS greeting\n"


def init(
    folder: Annotated[Path, typer.Argument(help="Folder for the project (created if missing).")] = Path("."),
    project: Annotated[str | None, typer.Option("--project", help="Project name (default: the folder's name).")] = None,
    profile: Annotated[str, typer.Option("--profile", help="Default profile name.")] = "default",
    bootstrap: Annotated[bool, typer.Option("--bootstrap", help="Add a hello-world SQL tool.")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create a new MXCP project."""
    with reporting_errors(json_output, debug):
        folder = folder.resolve()
        site_file = folder / SITE_FILE
        if site_file.exists():
            fail(f"{site_file} already exists; not overwriting it", json_output)
        for parent in folder.parents:
            if (parent / SITE_FILE).exists():
                fail(f"{folder} is inside the project at {parent}; projects cannot be nested", json_output)
        name = project or folder.name.replace(" ", "-") or "mxcp-project"
        folder.mkdir(parents=True, exist_ok=True)
        created = []
        for sub in FOLDERS:
            (folder / sub).mkdir(exist_ok=True)
        site_file.write_text(
            f"mxcp: 1\nproject: {name}\nprofile: {profile}\nprofiles:\n  {profile}:\n"
            f"    duckdb:\n      path: data/db-{profile}.duckdb\n",
            encoding="utf-8",
        )
        created.append(SITE_FILE)
        (folder / ".gitignore").write_text("data/*.duckdb\ndata/*.duckdb.wal\naudit/\ndrift/\n", encoding="utf-8")
        if bootstrap:
            (folder / "tools" / "hello_world.yml").write_text(HELLO_TOOL, encoding="utf-8")
            (folder / "sql" / "hello_world.sql").write_text(HELLO_SQL, encoding="utf-8")
            created += ["tools/hello_world.yml", "sql/hello_world.sql"]
        result = {"path": str(folder), "project": name, "profile": profile, "files": created}

        def render(_: object) -> None:
            from .output import console

            out = console()
            out.print(f"[green]Created project[/] [bold]{name}[/] in {folder}")
            for path in created:
                out.print(f"  {path}")
            out.print("\nNext: [bold]cd[/] into it, then [bold]mxcp list[/], [bold]mxcp validate[/], "
                      "[bold]mxcp run tool hello_world -p name=World[/]")

        ok(result, json_output, render)
