"""Options shared by commands, opening the project they act on, and `-C DIR` (where the command runs)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import MxcpError
from ..plugin_manager import PluginHost
from ..project import Project, open_project

PROJECT_DIR_ENV = "MXCP_PROJECT_DIR"
PROJECT_DIR_FLAGS = ("-C", "--project-dir")


class GlobalState:
    """The invocation's plugin host, loaded before the arguments were parsed (with `--disable-plugin` applied),
    and where `-C` moved it from."""

    host: PluginHost | None = None
    # True once `main()` applied every `-C` of the arguments (the options then have nothing left to do).
    project_dir_applied: bool = False
    # Where the user was before `-C` moved the process (hints such as `cd FOLDER` are for that shell).
    started_in: Path | None = None


def change_to_project_dir(directory: str, source: str) -> None:
    """`-C DIR`: go there first, as git does; every relative path of the invocation is then relative to DIR."""
    target = Path(directory).expanduser()
    if GlobalState.started_in is None:
        GlobalState.started_in = Path.cwd()
    if not target.exists():
        raise MxcpError(f"{source} {directory}: no such directory")
    if not target.is_dir():
        raise MxcpError(f"{source} {directory}: not a directory")
    try:
        os.chdir(target)
    except OSError as exc:
        raise MxcpError(f"{source} {directory}: {exc.strerror or exc}") from None


def project_dirs_in(argv: Sequence[str]) -> list[str]:
    """The `-C DIR` / `--project-dir DIR` values anywhere before `--`, in order (each relative to the one before)."""
    found = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            break
        if arg in PROJECT_DIR_FLAGS and index + 1 < len(argv):
            found.append(argv[index + 1])
            index += 2
            continue
        if arg.startswith("--project-dir="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-C") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:])  # -CDIR, the attached form click accepts too
        index += 1
    return found


def apply_project_dir(argv: Sequence[str]) -> None:
    """Before plugins load (the site file of DIR may disable some): `-C` from the arguments, else MXCP_PROJECT_DIR."""
    given = project_dirs_in(argv)
    if given:
        for directory in given:
            change_to_project_dir(directory, "-C")
    elif os.environ.get(PROJECT_DIR_ENV):
        change_to_project_dir(os.environ[PROJECT_DIR_ENV], PROJECT_DIR_ENV)
    GlobalState.project_dir_applied = True


def _project_dir_option(value: Path | None) -> None:
    # Callers that build the app themselves (tests, embedding) skipped main()'s early pass: apply it here.
    if value is not None and not GlobalState.project_dir_applied:
        change_to_project_dir(str(value), "-C")


ProjectDirOpt = Annotated[
    Path | None,
    typer.Option(
        *PROJECT_DIR_FLAGS, metavar="DIR", expose_value=False, is_eager=True, callback=_project_dir_option,
        help="Work in DIR, as git -C does: the project is found from there, relative paths start there. "
             f"Also {PROJECT_DIR_ENV}.",
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", metavar="NAME", help="Profile to use (default: MXCP_PROFILE, then the site's profile:)."),
]
JsonOpt = Annotated[
    bool, typer.Option("--json-output", help='Print JSON: {"status": "ok", "result": ...} or {"status": "error", ...}.')
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Debug logging and full tracebacks.")]
ReadonlyOpt = Annotated[bool, typer.Option("--readonly", help="Open the DuckDB database read-only.")]


def load(
    profile: str | None = None,
    readonly: bool | None = None,
    start: Path | None = None,
    problems: Any = None,
) -> Project:
    """Open the project the command acts on, on the invocation's plugin host (`problems`: see open_project)."""
    return open_project(start, profile=profile, readonly=readonly or None, host=GlobalState.host, problems=problems)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def short(text: Any, width: int = 70) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"
