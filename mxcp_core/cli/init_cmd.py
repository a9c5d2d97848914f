"""`mxcp init`: a new project layout, optionally with a hello-world SQL tool."""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Annotated

import typer

from ..config import SITE_FILE
from .options import DebugOpt, GlobalState, JsonOpt
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
      examples: [World, Alice]
  return:
    type: string
    description: The greeting
  source:
    file: ../sql/hello_world.sql
  tests:
    - name: greets_world
      arguments:
        - {key: name, value: World}
      result: "Hello, World!"
"""

HELLO_SQL = "SELECT 'Hello, ' || $name || '!' AS greeting\n"


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"}


def _yaml_text(value: str) -> str:
    """`value` as a YAML string: bare when YAML reads it back as that text, else quoted (2024, a:b, yes)."""
    return value if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS else json.dumps(value)


GITIGNORE_LINES = ("data/*.duckdb", "data/*.duckdb.wal", "audit/", "drift/")


def _gitignore(folder: Path) -> str | None:
    """Add our lines to .gitignore (an existing one keeps its own); what was done, or None when nothing was."""
    path = folder / ".gitignore"
    if not path.exists():
        path.write_text("\n".join(GITIGNORE_LINES) + "\n", encoding="utf-8")
        return "created"
    text = path.read_text(encoding="utf-8")
    missing = [line for line in GITIGNORE_LINES if line not in text.splitlines()]
    if not missing:
        return None
    path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(missing) + "\n",
                    encoding="utf-8")
    return "updated"


def init(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="Folder for the project (created if missing).")
    ] = Path("."),
    project: Annotated[
        str | None, typer.Option("--project", metavar="NAME", help="Project name (default: the folder's name).")
    ] = None,
    profile: Annotated[str, typer.Option("--profile", metavar="NAME", help="Default profile name.")] = "default",
    bootstrap: Annotated[bool, typer.Option("--bootstrap", help="Add a hello-world SQL tool.")] = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create a new MXCP project.

    Writes mxcp-site.yml, the usual folders (tools/, sql/, python/, ...)
    and a .gitignore, then prints the JSON that connects Claude Desktop or
    Cursor to the project (VS Code: mxcp client-config vscode).

    Examples:
      mxcp init                        # here
      mxcp init demo --bootstrap       # in demo/, with a hello-world tool
      mxcp init demo --project sales --profile dev
    """
    with reporting_errors(json_output, debug):
        folder = folder.resolve()
        site_file = folder / SITE_FILE
        if site_file.exists():
            fail(f"{site_file} already exists; not overwriting it", json_output)
        for parent in folder.parents:
            if (parent / SITE_FILE).exists():
                fail(f"{folder} is inside the project at {parent}; projects cannot be nested", json_output)
        name = project or folder.name.replace(" ", "-") or "mxcp-project"
        if folder.exists() and not folder.is_dir():
            fail(f"{folder} exists and is not a folder", json_output)
        folder.mkdir(parents=True, exist_ok=True)
        new_folders = [f"{sub}/" for sub in FOLDERS if not (folder / sub).is_dir()]
        for sub in FOLDERS:
            (folder / sub).mkdir(exist_ok=True)
        site_file.write_text(
            f"mxcp: 1\nproject: {_yaml_text(name)}\nprofile: {_yaml_text(profile)}\nprofiles:\n"
            f"  {_yaml_text(profile)}:\n    duckdb:\n      path: {_yaml_text(f'data/db-{profile}.duckdb')}\n",
            encoding="utf-8",
        )
        created = [SITE_FILE]
        gitignore = _gitignore(folder)
        if gitignore:
            created.append(".gitignore" + (" (lines added)" if gitignore == "updated" else ""))
        if bootstrap:
            (folder / "tools" / "hello_world.yml").write_text(HELLO_TOOL, encoding="utf-8")
            (folder / "sql" / "hello_world.sql").write_text(HELLO_SQL, encoding="utf-8")
            created += ["tools/hello_world.yml", "sql/hello_world.sql"]
        from .client_config import client_snippet

        snippet = client_snippet("claude", name, folder)
        result = {"path": str(folder), "project": name, "profile": profile, "files": created,
                  "folders": new_folders, "client_config": snippet}

        def render(_: object) -> None:
            from .client_config import claude_config_file

            here = (GlobalState.started_in or Path.cwd()).resolve()  # the user's shell, before any -C
            print(f"Created project {name} in {folder}:")
            for path in created:
                print(f"  {path}")
            if new_folders:
                print(f"  folders: {' '.join(new_folders)}")
            print("\nNext:")
            if folder != here:
                print(f"  cd {shlex.quote(os.path.relpath(folder, here) if folder.is_relative_to(here) else str(folder))}")
            if bootstrap:
                print("  mxcp run tool hello_world -p name=World   # call the example tool")
                print("  mxcp test                                 # run its tests")
            else:
                print("  add a tool: tools/NAME.yml, its SQL in sql/ or its Python in python/")
                print("  mxcp validate                             # check it")
            print("  mxcp serve --transport http               # serve it at http://localhost:8000/mcp")
            print(f"\nTo use it from Claude Desktop ({claude_config_file()}) or Cursor (.cursor/mcp.json), "
                  "merge this into \"mcpServers\"; for VS Code run `mxcp client-config vscode`:")
            print(json.dumps(snippet, indent=2))

        ok(result, json_output, render)
