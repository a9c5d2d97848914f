"""The `mxcp` command line. Heavy modules (mcp, duckdb, uvicorn) are imported only by commands that need them.

One plugin host serves a whole invocation: it is loaded before the arguments are parsed (plugins add commands),
and the command's project is opened on it. Every command, the core's included, comes from `register_commands`.
"""
from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import MxcpError
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
    # Both were read from the arguments before parsing, when the plugin host was loaded (so a disabled plugin adds
    # no command); applied again here for callers whose arguments differ from sys.argv.
    host = GlobalState.host
    if host is not None:
        for name in disable_plugin or []:
            host.disable(name)
        if strict_plugins:
            host.strict = True


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The command line with the commands of every loaded plugin; `argv` may disable some (`--disable-plugin`)."""
    from ..plugin_manager import load_plugins

    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_root)
    strict = True if "--strict-plugins" in argv else None
    host = load_plugins(disabled=[*_pre_parse_disabled(argv), *_site_disabled()], strict=strict)
    GlobalState.host = host
    host.hooks.register_commands(cli=app)
    return app


def _site_disabled() -> list[str]:
    """`disable_plugins:` of the project here, read leniently: a broken site file must not break `--help`.

    The command then opens the project strictly on the same host, and reports a broken file there.
    """
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


def _command_of(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is not a global option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--disable-plugin":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    argv = sys.argv[1:]
    try:
        app = build_app(argv)
    except MxcpError as exc:
        # Strict mode and a broken plugin: the same one clear message a command gives, before any command runs.
        from .output import fail

        try:
            fail(str(exc), "--json-output" in argv)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
    command = _command_of(argv)
    if command is not None:
        _explain_missing_command(app, command)
    app(prog_name="mxcp")


def _explain_missing_command(app: typer.Typer, command: str) -> None:
    """A builtin plugin's command whose plugin is off: say which plugin, instead of 'No such command'."""
    from ..features import COMMAND_PLUGINS, plugin_state

    plugin = COMMAND_PLUGINS.get(command)
    if plugin is None or any(info.name == command for info in app.registered_commands):
        return
    host = GlobalState.host
    disabled = frozenset(host.disabled) if host is not None else frozenset()
    print(f"Error: command '{command}' is provided by {plugin_state(plugin, disabled)}", file=sys.stderr)
    raise SystemExit(2)
