"""The command line's ergonomics: `-C DIR` everywhere, `--version`, `init`'s report, client snippets that start
the server from any directory, the stdio ready line, `--transport http`, and help texts without noise."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
import typer
from mcp.client.stdio import StdioServerParameters, stdio_client
from typer.testing import CliRunner

from mxcp_core.cli import build_app
from mxcp_core.cli.options import GlobalState

from server_helpers import free_port, mxcp_command, serve_env, stop_process, wait_for_port

HELLO_TOOL = """\
mxcp: 1
tool:
  name: echo
  description: Echo a word.
  parameters:
    - {name: word, type: string, description: The word}
  return: {type: string, description: The word}
  source: {code: "SELECT $word"}
"""


def _payload(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["result"]


# -- -C DIR and MXCP_PROJECT_DIR ---------------------------------------------------------------------------


def test_project_dir_before_or_after_the_command_and_from_the_environment(tmp_path, make_project, run_mxcp):
    root = make_project(tmp_path / "proj", {"tools/echo.yml": HELLO_TOOL, "report.sql": "SELECT 41 + 1 AS answer"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["-C", str(root), "list"], ["list", "-C", str(root)], ["list", f"--project-dir={root}"],
                 ["--project-dir", "../proj", "list"]):
        names = [e["name"] for e in _payload(run_mxcp(*args, "--json-output", cwd=elsewhere))["endpoints"]]
        assert names == ["echo"], args
    from_env = run_mxcp("list", "--json-output", cwd=elsewhere, env={"MXCP_PROJECT_DIR": str(root)})
    assert [e["name"] for e in _payload(from_env)["endpoints"]] == ["echo"]
    # -C wins over the environment.
    both = run_mxcp("-C", str(root), "list", "--json-output", cwd=elsewhere, env={"MXCP_PROJECT_DIR": "/nowhere"})
    assert [e["name"] for e in _payload(both)["endpoints"]] == ["echo"]
    # As git -C: the directory changes first, so relative paths in the arguments are relative to DIR.
    rows = _payload(run_mxcp("query", "--file", "report.sql", "-C", str(root), "--json-output", cwd=elsewhere))
    assert rows == [{"answer": 42}]
    # A plugin's command takes it as well.
    lint = run_mxcp("lint", "-C", str(root), "--json-output", cwd=elsewhere)
    assert json.loads(lint.stdout)["result"]["checked"] == 1, lint.stderr


def test_project_dir_applies_before_plugins_load(tmp_path, make_project, run_mxcp):
    """The site file of DIR disables a plugin: its command is gone, as when run inside DIR."""
    root = make_project(tmp_path / "proj", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n"
                                                               "disable_plugins: [lint]\n"})
    done = run_mxcp("-C", str(root), "lint", cwd=tmp_path)
    assert done.returncode == 2
    assert "command 'lint' is provided by" in done.stderr and "lint" in done.stderr


@pytest.mark.parametrize("json_output", [False, True])
def test_a_bad_project_dir_is_one_clear_error(tmp_path, run_mxcp, json_output):
    (tmp_path / "file.txt").write_text("x")
    flag = ["--json-output"] if json_output else []
    cases = [
        (["-C", str(tmp_path / "missing"), "list"], {}, f"-C {tmp_path / 'missing'}: no such directory"),
        (["list", "-C", "file.txt"], {}, "-C file.txt: not a directory"),
        (["list"], {"MXCP_PROJECT_DIR": str(tmp_path / "gone")}, f"MXCP_PROJECT_DIR {tmp_path / 'gone'}: no such"),
    ]
    for args, env, message in cases:
        done = run_mxcp(*args, *flag, cwd=tmp_path, env=env)
        assert done.returncode == 1, args
        assert "Traceback" not in done.stderr
        if json_output:
            assert json.loads(done.stdout) == {"status": "error", "error": json.loads(done.stdout)["error"]}
            assert message in json.loads(done.stdout)["error"]
        else:
            assert message in done.stderr and done.stdout == ""


def test_no_project_in_dir_names_the_dir(tmp_path, run_mxcp):
    done = run_mxcp("-C", str(tmp_path), "list", cwd=Path("/"))
    assert done.returncode == 1
    assert f"no mxcp-site.yml found in {tmp_path.resolve()}" in done.stderr


# -- --version ---------------------------------------------------------------------------------------------


def test_version(tmp_path, run_mxcp):
    expected = f"mxcp {metadata.version('mxcp-pluggy')} (mxcp-pluggy, Python "
    # Answered before plugins load: even a strict run with a plugin that cannot be found does not stop it.
    done = run_mxcp("--version", cwd=tmp_path, env={"MXCP_STRICT_PLUGINS": "1", "MXCP_DISABLE_PLUGINS": "nonesuch"})
    assert done.returncode == 0 and done.stdout.startswith(expected), done.stderr
    in_process = CliRunner().invoke(build_app([]), ["--version"])
    assert in_process.exit_code == 0 and in_process.output.startswith(expected)
    as_module = subprocess.run([sys.executable, "-m", "mxcp_core.cli", "--version"], capture_output=True, text=True,
                               cwd=tmp_path, check=False)
    assert as_module.returncode == 0 and as_module.stdout.startswith(expected), as_module.stderr


# -- init ----------------------------------------------------------------------------------------------------


def test_init_without_bootstrap_names_what_it_created_and_suggests_nothing_missing(tmp_path, run_mxcp):
    done = run_mxcp("init", "shop", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "mxcp-site.yml" in out and ".gitignore" in out and "tools/" in out
    assert "hello_world" not in out  # no such tool without --bootstrap
    assert "cd shop" in out and "mxcp validate" in out
    snippet = json.loads(out[out.index("{"):])
    assert snippet["mcpServers"]["shop"]["args"] == ["-C", str((tmp_path / "shop").resolve()), "serve",
                                                    "--transport", "stdio"]


def test_init_keeps_an_existing_gitignore_and_quotes_names_yaml_would_change(tmp_path, run_mxcp):
    folder = tmp_path / "2024"
    folder.mkdir()
    (folder / ".gitignore").write_text("*.pyc\naudit/\n")
    result = _payload(run_mxcp("init", "--json-output", cwd=folder))
    assert result["project"] == "2024" and ".gitignore (lines added)" in result["files"]
    assert (folder / ".gitignore").read_text() == "*.pyc\naudit/\ndata/*.duckdb\ndata/*.duckdb.wal\ndrift/\n"
    # The project's name stays the text "2024" (bare, YAML would read the number 2024).
    listed = run_mxcp("list", "--json-output", cwd=folder)
    assert listed.returncode == 0, listed.stderr


def test_init_bootstrap_lints_clean_and_its_tests_pass(tmp_path, run_mxcp):
    done = run_mxcp("init", "--bootstrap", "demo", cwd=tmp_path)
    assert "mxcp run tool hello_world -p name=World" in done.stdout
    root = tmp_path / "demo"
    lint = run_mxcp("lint", "--json-output", cwd=root)
    assert lint.returncode == 0 and json.loads(lint.stdout)["result"]["findings"] == [], lint.stdout
    assert run_mxcp("test", cwd=root).returncode == 0


# -- client-config -------------------------------------------------------------------------------------------


def _list_and_call(command: str, args: list[str], env: dict[str, str] | None, errlog: Path) -> tuple[list[str], Any]:
    """Start the server as a client would (its command and args, from `/`), list the tools and call one."""
    params = StdioServerParameters(command=command, args=args, env=env, cwd="/")

    async def main() -> tuple[list[str], Any]:
        with open(errlog, "w") as log:
            async with mcp.Client(stdio_client(params, errlog=log)) as client:
                tools = await client.list_tools()
                called = await client.call_tool("hello_world", {"name": "Ada"})
                return sorted(t.name for t in tools.tools), called

    return anyio.run(main)


def test_client_snippets_start_the_server_from_any_directory(tmp_path, run_mxcp):
    created = _payload(run_mxcp("init", "--bootstrap", "demo", "--json-output", cwd=tmp_path))
    root = (tmp_path / "demo").resolve()
    result = _payload(run_mxcp("client-config", "--json-output", cwd=root))
    clients = result["clients"]
    assert set(clients) == {"claude", "vscode", "cursor"}
    assert created["client_config"] == clients["claude"]["config"]
    claude = clients["claude"]["config"]["mcpServers"]["demo"]
    cursor = clients["cursor"]["config"]["mcpServers"]["demo"]
    vscode = clients["vscode"]["config"]["servers"]["demo"]
    assert vscode.pop("type") == "stdio"
    assert claude == cursor == vscode == {"command": result["command"], "args": result["args"]}
    assert Path(claude["command"]).is_absolute()
    assert claude["args"][-5:] == ["-C", str(root), "serve", "--transport", "stdio"]
    assert clients["claude"]["files"][0].endswith("claude_desktop_config.json")
    assert clients["vscode"]["files"] == [str(root / ".vscode" / "mcp.json")]
    assert clients["cursor"]["files"] == [str(root / ".cursor" / "mcp.json"), "~/.cursor/mcp.json"]

    names, called = _list_and_call(claude["command"], claude["args"], claude.get("env"), tmp_path / "stderr.txt")
    assert "hello_world" in names
    assert called.structured_content == {"result": "Hello, Ada!"}


def test_client_config_one_client_profile_and_user_config(tmp_path, make_project, user_config, run_mxcp):
    config = user_config("mxcp: 1\n")
    root = make_project(tmp_path / "proj")
    result = _payload(run_mxcp("client-config", "vscode", "--profile", "prod", "--name", "sales", "--json-output",
                               cwd=root))
    assert list(result["clients"]) == ["vscode"]
    server = result["clients"]["vscode"]["config"]["servers"]["sales"]
    assert server["args"][-2:] == ["--profile", "prod"]
    # The client does not run in this shell: the user config this shell names goes with the snippet.
    assert server["env"] == {"MXCP_CONFIG": str(config)}
    text = run_mxcp("client-config", "claude", cwd=root)
    assert text.returncode == 0 and "claude_desktop_config.json" in text.stdout
    assert json.loads(text.stdout[text.stdout.index("{"):])["mcpServers"]["demo"]["args"][-1] == "stdio"
    unknown = run_mxcp("client-config", "emacs", cwd=root)
    assert unknown.returncode == 1 and "unknown client 'emacs' (expected claude, vscode, cursor)" in unknown.stderr


def test_launcher_is_this_installation(tmp_path, monkeypatch):
    """The console script that is running, else the one beside this Python, else `python -m mxcp_core.cli`;
    never another `mxcp` found on PATH (the original MXCP's command has the same name)."""
    from mxcp_core.cli.client_config import mxcp_launcher

    script = tmp_path / "venv" / "bin" / "mxcp"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script), "client-config"])
    assert mxcp_launcher() == [str(script)]
    monkeypatch.setattr(sys, "argv", ["-c", "client-config"])
    monkeypatch.setattr(sys, "executable", str(script.parent / "python"))
    assert mxcp_launcher() == [str(script)]
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bare" / "python"))
    monkeypatch.setenv("PATH", str(script.parent))
    assert mxcp_launcher() == [str(tmp_path / "bare" / "python"), "-m", "mxcp_core.cli"]


# -- serve -----------------------------------------------------------------------------------------------------


def test_transport_http_is_streamable_http(tmp_path, make_project):
    root = make_project(tmp_path / "proj", {"tools/echo.yml": HELLO_TOOL})
    port = free_port()
    process = subprocess.Popen(
        [*mxcp_command(), "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env=serve_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process)

        async def main() -> Any:
            async with mcp.Client(f"http://127.0.0.1:{port}/mcp") as client:
                return await client.call_tool("echo", {"word": "duck"})

        assert anyio.run(main).structured_content == {"result": "duck"}
    finally:
        stop_process(process)


def test_unknown_transport_names_the_choices(tmp_path, make_project, run_mxcp):
    root = make_project(tmp_path / "proj")
    done = run_mxcp("serve", "--transport", "htp", cwd=root)
    assert done.returncode == 1
    assert "--transport: unknown transport 'htp' (expected stdio, http" in done.stderr


def test_stdio_serve_says_on_stderr_when_it_is_ready(tmp_path, make_project, third_party_plugins):
    root = make_project(tmp_path / "proj", {"tools/echo.yml": HELLO_TOOL})
    errlog = tmp_path / "stderr.txt"
    command = mxcp_command()
    env = serve_env({"MXCP_DISABLE_PLUGINS": ",".join(third_party_plugins)})  # only the project's tool
    params = StdioServerParameters(command=command[0], args=[*command[1:], "-C", str(root), "serve", "--transport",
                                                             "stdio"], env=env, cwd="/")

    async def main() -> Any:
        with open(errlog, "w") as log:
            async with mcp.Client(stdio_client(params, errlog=log)) as client:
                return await client.call_tool("echo", {"word": "ready"})

    assert anyio.run(main).structured_content == {"result": "ready"}
    lines = [line for line in errlog.read_text().splitlines() if "over stdio" in line]
    assert lines == [("mxcp: serving demo (default) over stdio: 1 tool, 0 resources, 0 prompts; "
                      "stop with Ctrl+C, or end the input (Ctrl+D)")]


# -- help ------------------------------------------------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    group = typer.main.get_command(build_app([]))
    paths: list[list[str]] = [[]]

    def walk(command: Any, path: list[str]) -> None:
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            paths.append([*path, name])
            walk(sub, [*path, name])

    walk(group, [])
    return paths


NOISE = re.compile(r"<(bool|str|int|float|path|list\[[^>]*\])>")


def test_every_help_has_examples_that_parse_and_no_type_noise(monkeypatch):
    # The examples' -C must not move this process: parse them, as main() would after applying -C itself.
    monkeypatch.setattr(GlobalState, "project_dir_applied", True)
    paths = _command_paths()
    assert ["client-config"] in paths and ["serve"] in paths and ["lint"] in paths
    problems = []
    for path in paths:
        shown = CliRunner().invoke(build_app([]), [*path, "--help"], env={"COLUMNS": "200"})
        name = " ".join(["mxcp", *path])
        assert shown.exit_code == 0, (name, shown.output)
        out = shown.output
        if "<bool>" in out or "<list" in out or NOISE.search(out):
            problems.append(f"{name}: annotation noise")
        if "--project-dir" not in out or "-C" not in out:
            problems.append(f"{name}: no -C DIR")
        if "Examples:" not in out:
            problems.append(f"{name}: no Examples:")
            continue
        block = out[out.index("Examples:"):out.index("╭")]
        examples = [line.strip().split("  #")[0].strip() for line in block.splitlines()[1:] if line.strip()]
        if not examples:
            problems.append(f"{name}: empty Examples:")
        for example in examples:
            words = shlex.split(example)
            if words[0] != "mxcp":
                problems.append(f"{name}: example does not start with mxcp: {example}")
                continue
            # Every option of the example exists: with --help at the end, parsing reaches it or fails first.
            parsed = CliRunner().invoke(build_app([]), [*words[1:], "--help"])
            if parsed.exit_code != 0:
                problems.append(f"{name}: example does not parse: {example}: {parsed.output.strip()[-200:]}")
    assert problems == []


def test_a_command_that_defines_its_own_dash_c_is_refused_naming_it(capsys):
    """-C is read as the project folder before any command parses: a command's own -C could never get its value."""
    import typer

    from mxcp_core.cli import _fit_command

    app = typer.Typer()

    @app.command()
    def tiny_count(count: int = typer.Option(1, "-C", "--count")) -> None:
        """Count."""

    @app.command()
    def other() -> None:
        """Other."""

    command = typer.main.get_command(app)
    with pytest.raises(SystemExit) as stopped:
        _fit_command(command.commands["tiny-count"], None)
    assert stopped.value.code == 2
    assert "command 'tiny-count' defines -C, which mxcp reserves for the project folder" in capsys.readouterr().err
    fine = command.commands["other"]
    _fit_command(fine, fine.context_class(fine))
    assert any("-C" in p.opts for p in fine.params)
