"""A run of one command builds only that command (`_keep_only_command`): what it prints and its exit code are
those of the full command line, including help, unknown commands (with their close names) and plugin groups."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mxcp_core.cli import _keep_only_command

SCRIPT = """\
import sys
import mxcp_core.cli as cli
if sys.argv.pop(1) == "full":
    cli._keep_only_command = lambda *args: None
from mxcp_core.cli import main
main()
"""

ARGVS = [
    ["list"], ["list", "--json-output"], ["validate", "--json-output"], ["list", "--help"], ["-h", "list"],
    ["--help", "validate"], ["lsit"], ["log", "--help"], ["log", "verify", "--help"], ["log", "verify"],
    ["--disable-plugin", "lint", "lint"], ["-C", ".", "list", "--bogus"], ["--bogus", "list"],
    ["query", "--limit", "x"], ["query", "SELECT 1", "--limit", "-1"], ["drift-check", "-h"], [],
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_command")
    (folder / "mxcp-site.yml").write_text("mxcp: 1\nproject: p\nprofile: default\n", encoding="utf-8")
    (folder / "tools").mkdir()
    (folder / "tools" / "t.yml").write_text(
        "mxcp: 1\ntool:\n  name: t\n  return: {type: integer}\n  source: {code: SELECT 1}\n", encoding="utf-8")
    return folder


def _run(mode: str, argv: list[str], cwd) -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "100", "HOME": str(cwd)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "(none)" for a in ARGVS])
def test_one_command_prints_what_the_full_command_line_prints(argv, project):
    assert _run("one", argv, project) == _run("full", argv, project)


def test_only_the_named_command_is_kept():
    import typer

    app = typer.Typer()
    for name in ("list", "validate", "lint"):
        app.command(name)(lambda: None)

    @app.command()
    def drift_check() -> None:
        """A name from the function."""

    _keep_only_command(app, "drift-check", ["-C", "x", "drift-check"])
    assert [info.callback.__name__ for info in app.registered_commands] == ["drift_check"]
    _keep_only_command(app, "nope", ["nope"])  # unknown: everything stays (for the close names)
    assert len(app.registered_commands) == 1
