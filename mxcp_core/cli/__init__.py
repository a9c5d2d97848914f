"""The `mxcp` command line. Heavy modules (mcp, duckdb, uvicorn) are imported only by commands that need them.

One plugin host serves a whole invocation: it is loaded before the arguments are parsed (plugins add commands),
and the command's project is opened on it. Every command, the core's included, comes from `register_commands`.
`-C DIR` is applied first of all (the site file of DIR may disable plugins), and every command accepts it.
"""
from __future__ import annotations

import copy
import sys
from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..errors import MxcpError
from .coercion import speed_up
from .options import PROJECT_DIR_FLAGS, GlobalState, ProjectDirOpt, apply_project_dir

DISTRIBUTION = "mxcp-pluggy"


def version_text() -> str:
    import platform
    from importlib import metadata

    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"mxcp {version} ({DISTRIBUTION}, Python {platform.python_version()})"


def _show_version(value: bool) -> None:
    if value:
        print(version_text())
        raise typer.Exit()


def _root(
    disable_plugin: Annotated[
        list[str] | None,
        typer.Option("--disable-plugin", metavar="NAME",
                     help="Do not load this plugin (repeatable). Also MXCP_DISABLE_PLUGINS=a,b."),
    ] = None,
    strict_plugins: Annotated[
        bool, typer.Option("--strict-plugins", help="A plugin that fails to load is fatal (MXCP_STRICT_PLUGINS=1).")
    ] = False,
    project_dir: ProjectDirOpt = None,
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, expose_value=False, callback=_show_version,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    """MXCP: serve tools, resources and prompts described in YAML and written in SQL or Python over MCP.

    Examples:
      mxcp init --bootstrap demo        # a new project with a hello-world tool
      mxcp -C demo list                 # the endpoints of the project in demo/
      mxcp -C demo serve --transport stdio
      mxcp client-config claude         # the JSON to add the project to Claude Desktop
    """
    # Both were read from the arguments before parsing, when the plugin host was loaded (so a disabled plugin adds
    # no command); applied again here for callers whose arguments differ from sys.argv.
    host = GlobalState.host
    if host is not None:
        for name in disable_plugin or []:
            host.disable(name)
        if strict_plugins:
            host.strict = True


# Help shows a value's kind in words, as click does, rather than a Python annotation (<bool>, <list[str]>).
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "file": "FILE",
               "directory": "DIR"}


def _tidy_metavars(params: list[Any], ctx: Any) -> None:
    for param in params:
        speed_up(param)
        if getattr(param, "param_type_name", None) == "argument" and hasattr(param, "display_type_rich"):
            # Its metavar (KIND, NAME) says it already: no `<str>` type column beside it.
            param.display_type_rich = lambda ctx: None
            continue
        if getattr(param, "param_type_name", None) != "option" or param.metavar is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""  # a flag takes no value: nothing to show
            continue
        display_type = getattr(param, "display_type", None)
        if display_type is None:
            continue  # a Typer without annotation labels shows click's TEXT/INTEGER already
        label = str(display_type(ctx)).strip("<>")
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
        param.metavar = f"[{label}]" if "|" in label else _TYPE_WORDS.get(label, label.upper())


@cache
def _project_dir_param() -> Any:
    """The `-C DIR` option as a click parameter, built by Typer from ProjectDirOpt like any other option."""
    template = typer.Typer(add_completion=False)

    @template.command()
    def command(project_dir: ProjectDirOpt = None) -> None:
        """Template."""

    return typer.main.get_command(template).params[0]


def _fit_command(command: Any, ctx: Any) -> None:
    """Every command takes `-C DIR` (plugins' included) and shows no annotation noise in its help."""
    if getattr(command, "_mxcp_fitted", False):
        return
    command._mxcp_fitted = True
    taken = [p for p in command.params if set(getattr(p, "opts", ())) & set(PROJECT_DIR_FLAGS)]
    if taken and taken[0].name != "project_dir":
        # -C was read as the project folder before the command was parsed: its own -C could never work.
        flags = "/".join(sorted(set(taken[0].opts) & set(PROJECT_DIR_FLAGS)))
        print(f"Error: command '{command.name}' defines {flags}, which mxcp reserves for the project folder "
              f"(-C DIR on every command); its plugin must use another name", file=sys.stderr)
        raise SystemExit(2)
    if not taken:
        command.params.append(copy.copy(_project_dir_param()))
    _tidy_metavars(command.get_params(ctx), ctx)
    for sub in (getattr(command, "commands", None) or {}).values():
        _fit_command(sub, ctx)


class MxcpGroup(TyperGroup):
    """The root command group: fits each command as it is looked up (for running it, or listing it in help)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _tidy_metavars(params, ctx)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _fit_command(command, ctx)
        return command


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The command line with the commands of every loaded plugin; `argv` may disable some (`--disable-plugin`)."""
    from ..plugin_manager import load_plugins

    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(cls=MxcpGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
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


_GLOBAL_OPTIONS_WITH_VALUE = ("--disable-plugin", *PROJECT_DIR_FLAGS)


def _command_of(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is not a global option or its value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _asks_version(argv: list[str]) -> bool:
    """`mxcp --version` (before any command): answered without loading a plugin."""
    command = _command_of(argv)
    head = argv if command is None else argv[: argv.index(command)]
    return "--version" in head and "--help" not in head and "-h" not in head


def main() -> None:
    argv = sys.argv[1:]
    if _asks_version(argv):
        print(version_text())
        return
    try:
        apply_project_dir(argv)
        app = build_app(argv)
    except MxcpError as exc:
        # A bad -C, or strict mode and a broken plugin: the same one clear message a command gives, before any
        # command runs.
        from .output import fail

        try:
            fail(str(exc), "--json-output" in argv)
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
    command = _command_of(argv)
    if command is not None:
        _explain_missing_command(app, command)
        _keep_only_command(app, command, argv)
    app(prog_name="mxcp")


def _keep_only_command(app: typer.Typer, command: str, argv: list[str]) -> None:
    """A run of one command builds only that command (Typer builds every registered one: ~15 ms).

    Only when the command is registered (an unknown one is answered with the list of close names) and the root's
    own help is not asked for before it (which lists every command). Sub-apps without a name of their own stay.
    """
    head = argv[: argv.index(command)]
    if "--help" in head or "-h" in head:
        return
    from typer.main import get_command_name

    def name_of(info: Any) -> str | None:
        if info.name:
            return str(info.name)
        callback = info.callback
        return get_command_name(callback.__name__) if callback is not None else None

    commands = [info for info in app.registered_commands if name_of(info) == command]
    groups = [info for info in app.registered_groups if not info.name or info.name == command]
    if not commands and not any(info.name == command for info in groups):
        return
    app.registered_commands[:] = commands
    app.registered_groups[:] = groups


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
