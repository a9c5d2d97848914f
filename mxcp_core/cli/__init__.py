"""The `mxcp` command line. Heavy modules (mcp, duckdb, uvicorn) are imported only by commands that need them."""
from __future__ import annotations

import sys
from typing import Annotated

import typer

from .options import GlobalState


def _root(
    disable_plugin: Annotated[
        list[str] | None,
        typer.Option("--disable-plugin", help="Do not load this plugin (repeatable). Also MXCP_DISABLE_PLUGINS=a,b."),
    ] = None,
    strict_plugins: Annotated[
        bool, typer.Option("--strict-plugins", help="A plugin that fails to load is fatal (MXCP_STRICT_PLUGINS=1).")
    ] = False,
) -> None:
    """MXCP: serve tools, resources and prompts described in YAML and written in SQL or Python over MCP."""
    GlobalState.disabled_plugins = list(disable_plugin or [])
    GlobalState.strict_plugins = True if strict_plugins else None


def build_app(load_plugin_commands: bool = True) -> typer.Typer:
    from . import init_cmd, project_cmds, run_cmds, serve_cmd, test_cmd

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_root)
    app.command("init")(init_cmd.init)
    app.command("list")(project_cmds.list_endpoints)
    app.command("validate")(project_cmds.validate)
    app.command("plugins")(project_cmds.plugins)
    for module in (run_cmds, serve_cmd, test_cmd):
        module.register(app)
    if load_plugin_commands:
        _add_plugin_commands(app)
    return app


def _add_plugin_commands(app: typer.Typer) -> None:
    """Plugins add commands through `register_commands`; options before the command may disable some."""
    from ..hooks import Hooks
    from ..project import load_plugins

    disabled = [*_pre_parse_disabled(sys.argv[1:]), *_site_disabled()]
    host = load_plugins(disabled=disabled, strict=False, warn=False)
    Hooks(host.pm).register_commands(cli=app)


def _site_disabled() -> list[str]:
    """`disable_plugins:` of the project here, read leniently: a broken site file must not break `--help`."""
    from ..config import find_site_file
    from ..errors import MxcpError
    from ..yamlfile import load_yaml_file

    try:
        names = load_yaml_file(find_site_file()).get("disable_plugins") or []
    except (MxcpError, AttributeError):
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def _pre_parse_disabled(argv: list[str]) -> list[str]:
    names = []
    for index, arg in enumerate(argv):
        if arg == "--disable-plugin" and index + 1 < len(argv):
            names.append(argv[index + 1])
        elif arg.startswith("--disable-plugin="):
            names.append(arg.split("=", 1)[1])
    return names


def main() -> None:
    app = build_app()
    app(prog_name="mxcp")
