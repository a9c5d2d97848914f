"""`mxcp client-config`: the JSON that adds the project to Claude Desktop, VS Code or Cursor.

Each client starts the server itself over stdio, from a working directory of its own choosing and with a PATH
of its own: the snippet names the absolute path of this very `mxcp` (the one in the virtual environment it is
installed in) and the project with `-C`, so nothing depends on either.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import MxcpError
from .options import DebugOpt, JsonOpt
from .output import ok, reporting_errors

CLIENTS = {"claude": "Claude Desktop", "vscode": "VS Code", "cursor": "Cursor"}


def mxcp_launcher() -> list[str]:
    """The command (absolute) that starts this same installation of mxcp, whatever the caller's PATH holds."""
    script = "mxcp.exe" if os.name == "nt" else "mxcp"
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if invoked is not None and invoked.name == script and invoked.is_file():
        return [os.path.abspath(invoked)]
    beside = Path(sys.executable).parent / script  # the console script of the environment running us
    if beside.is_file():
        return [str(beside)]
    # Not `shutil.which("mxcp")`: that may be another installation (the original MXCP uses the same name).
    return [os.path.abspath(sys.executable), "-m", "mxcp_core.cli"]


def claude_config_file() -> str:
    if sys.platform == "darwin":
        return "~/Library/Application Support/Claude/claude_desktop_config.json"
    if sys.platform == "win32":
        return r"%APPDATA%\Claude\claude_desktop_config.json"
    return "~/.config/Claude/claude_desktop_config.json"


def where_it_goes(client: str, project_dir: Path) -> list[str]:
    """The files a client reads its MCP servers from (any one will do), the project's own first."""
    if client == "claude":
        return [claude_config_file()]
    if client == "vscode":
        return [str(project_dir / ".vscode" / "mcp.json")]
    return [str(project_dir / ".cursor" / "mcp.json"), "~/.cursor/mcp.json"]


HINTS = {
    "claude": "then restart Claude Desktop (Settings > Developer > Edit Config opens the file)",
    "vscode": "or into your user configuration (command 'MCP: Open User Configuration')",
    "cursor": "the first for this project only, the second for every project",
}


def server_command(project_dir: Path, profile: str | None = None) -> tuple[str, list[str]]:
    """The command and arguments a client runs: this mxcp, serving the project over stdio."""
    launcher = mxcp_launcher()
    args = [*launcher[1:], "-C", str(project_dir), "serve", "--transport", "stdio"]
    if profile:
        args += ["--profile", profile]
    return launcher[0], args


def client_snippet(client: str, name: str, project_dir: Path, profile: str | None = None) -> dict[str, Any]:
    """The JSON to merge into the client's configuration file (`where_it_goes`)."""
    command, args = server_command(project_dir, profile)
    server: dict[str, Any] = {"command": command, "args": args}
    if os.environ.get("MXCP_CONFIG"):
        # The client does not share this shell's environment: name the user config this shell uses.
        server["env"] = {"MXCP_CONFIG": os.path.abspath(os.path.expanduser(os.environ["MXCP_CONFIG"]))}
    if client == "vscode":
        return {"servers": {name: {"type": "stdio", **server}}}
    return {"mcpServers": {name: server}}


def project_identity() -> tuple[str, Path]:
    """The project's name (its `project:`) and folder, from the site file found from the working directory."""
    from ..config import find_site_file, read_site_file

    site_file = find_site_file()
    data, _ = read_site_file(site_file)  # `project: ${NAME}` interpolated, as every command reads it
    name = data.get("project") if isinstance(data, dict) else None
    return (str(name) if name else site_file.parent.name), site_file.parent


def render_snippets(snippets: dict[str, dict[str, Any]], project_dir: Path) -> None:
    # Plain print, not Rich: a console would wrap long paths inside the JSON people copy.
    for index, (client, snippet) in enumerate(snippets.items()):
        if index:
            print()
        key = "servers" if client == "vscode" else "mcpServers"
        print(f"{CLIENTS[client]}: merge into \"{key}\" of {' or '.join(where_it_goes(client, project_dir))}; "
              f"{HINTS[client]}:")
        print(json.dumps(snippet, indent=2))


def client_config(
    client: Annotated[
        str | None, typer.Argument(metavar="CLIENT", help="claude, vscode or cursor (default: all three).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="The server's name in the client "
                                 "(default: the project's name).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", metavar="NAME", help="Profile the server uses (default: as serve).")
    ] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print the JSON that adds this project to Claude Desktop, VS Code or Cursor.

    The client starts mxcp serve --transport stdio itself: the snippet holds
    the absolute paths of this mxcp and of the project (-C), so it works from
    any directory, without activating a virtual environment.

    Examples:
      mxcp client-config                   # all three clients
      mxcp client-config claude            # Claude Desktop only
      mxcp -C ~/projects/demo client-config vscode --profile prod
      mxcp client-config cursor --json-output
    """
    with reporting_errors(json_output, debug):
        if client is not None and client not in CLIENTS:
            raise MxcpError(f"unknown client '{client}' (expected {', '.join(CLIENTS)})")
        project, project_dir = project_identity()
        chosen = [client] if client else list(CLIENTS)
        snippets = {c: client_snippet(c, name or project, project_dir, profile) for c in chosen}
        command, args = server_command(project_dir, profile)
        result = {
            "project": project,
            "project_dir": str(project_dir),
            "command": command,
            "args": args,
            "clients": {c: {"files": where_it_goes(c, project_dir), "hint": HINTS[c], "config": snippets[c]}
                        for c in chosen},
        }
        ok(result, json_output, lambda _: render_snippets(snippets, project_dir))
