"""Options shared by commands, and opening the project they act on."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..plugin_manager import PluginHost
from ..project import Project, open_project

ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="Profile to use (default: MXCP_PROFILE, then the site's profile:).")
]
JsonOpt = Annotated[
    bool, typer.Option("--json-output", help='Print JSON: {"status": "ok", "result": ...} or {"status": "error", ...}.')
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Debug logging and full tracebacks.")]
ReadonlyOpt = Annotated[bool, typer.Option("--readonly", help="Open the DuckDB database read-only.")]


class GlobalState:
    """The invocation's plugin host, loaded before the arguments were parsed (with `--disable-plugin` applied)."""

    host: PluginHost | None = None


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
