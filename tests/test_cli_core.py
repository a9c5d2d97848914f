"""The `mxcp` command line: init, list, validate, plugins, as a new user runs them (real subprocesses)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mxcp_core.cli import build_app


def ok_json(done) -> dict:
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["status"] == "ok"
    return payload["result"]


def test_new_user_walkthrough(run_mxcp, tmp_path):
    """`mxcp init --bootstrap demo && cd demo && mxcp list && mxcp validate && mxcp plugins`."""
    created = run_mxcp("init", "--bootstrap", "demo", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    demo = tmp_path / "demo"
    assert (demo / "mxcp-site.yml").read_text() == (
        "mxcp: 1\nproject: demo\nprofile: default\n"
        "profiles:\n  default:\n    duckdb:\n      path: data/db-default.duckdb\n"
    )
    for folder in ("tools", "resources", "prompts", "python", "sql", "data"):
        assert (demo / folder).is_dir()

    listed = run_mxcp("list", cwd=demo)
    assert listed.returncode == 0 and "hello_world" in listed.stdout
    validated = run_mxcp("validate", cwd=demo)
    assert validated.returncode == 0 and "1 endpoint valid" in validated.stdout
    plugins = run_mxcp("plugins", cwd=demo)
    assert plugins.returncode == 0 and "endpoint_discovery" in plugins.stdout and "mxcp-pluggy" in plugins.stdout
    ran = run_mxcp("run", "tool", "hello_world", "-p", "name=World", cwd=demo)
    assert ran.stdout.strip() == "Hello, World!"


def test_json_output_of_each_command(run_mxcp, tmp_path, third_party_plugins):
    init = ok_json(run_mxcp("init", "--bootstrap", "demo", "--json-output", cwd=tmp_path))
    client_config = init.pop("client_config")
    assert init == {"path": str(tmp_path / "demo"), "project": "demo", "profile": "default",
                    "files": ["mxcp-site.yml", ".gitignore", "tools/hello_world.yml", "sql/hello_world.sql"],
                    "folders": ["tools/", "resources/", "prompts/", "evals/", "python/", "plugins/", "sql/",
                                "drift/", "audit/", "data/"]}
    assert client_config["mcpServers"]["demo"]["args"][-5:] == ["-C", str(tmp_path / "demo"), "serve", "--transport",
                                                                "stdio"]
    demo = tmp_path / "demo"
    listed = ok_json(run_mxcp("list", "--json-output", cwd=demo))
    assert listed == {"endpoints": [{"kind": "tool", "name": "hello_world", "description": "Say hello to someone.",
                                     "language": "sql", "origin": "tools/hello_world.yml", "tags": ["example"]}],
                      "invalid": []}
    assert ok_json(run_mxcp("validate", "--json-output", cwd=demo)) == {
        "checked": 1, "references": {"resolved": 0, "failed": 0}, "problems": [], "valid": True}
    plugins = ok_json(run_mxcp("plugins", "--json-output", cwd=demo))
    assert {"core", "endpoint_discovery", "executor_sql"} <= {p["name"] for p in plugins["plugins"]}
    assert plugins["failed"] == [] and plugins["disabled"] == third_party_plugins


def test_init_options(run_mxcp, tmp_path):
    result = ok_json(run_mxcp("init", "here", "--project", "acme", "--profile", "dev", "--json-output", cwd=tmp_path))
    assert (result["project"], result["profile"], result["files"]) == ("acme", "dev", ["mxcp-site.yml", ".gitignore"])
    site = (tmp_path / "here" / "mxcp-site.yml").read_text()
    assert "project: acme\nprofile: dev\n" in site and "db-dev.duckdb" in site
    assert not (tmp_path / "here" / "tools" / "hello_world.yml").exists()
    listed = ok_json(run_mxcp("list", "--json-output", cwd=tmp_path / "here"))
    assert listed == {"endpoints": [], "invalid": []}


def test_init_refuses_to_overwrite_or_nest(run_mxcp, tmp_path):
    assert run_mxcp("init", "demo", cwd=tmp_path).returncode == 0
    again = run_mxcp("init", "demo", "--json-output", cwd=tmp_path)
    assert again.returncode == 1 and "already exists" in json.loads(again.stdout)["error"]
    nested = run_mxcp("init", "inner", cwd=tmp_path / "demo")
    assert nested.returncode == 1 and "cannot be nested" in nested.stderr


def test_validate_exits_non_zero_on_any_problem(run_mxcp, make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/undeclared.yml": "mxcp: 1\ntool:\n  name: undeclared\n  source: {code: 'SELECT $who'}\n",
        "tools/typo.yml": "mxcp: 1\ntool:\n  name: typo\n  sourse: {code: 'SELECT 1'}\n",
    })
    done = run_mxcp("validate", "--json-output", cwd=root)
    assert done.returncode == 1
    payload = json.loads(done.stdout)
    assert payload["status"] == "error" and payload["error"] == "2 problems found"
    messages = {p["file"]: p["message"] for p in payload["result"]["problems"]}
    assert "SQL uses undeclared parameter(s): $who" in messages["tools/undeclared.yml"]
    assert "(did you mean 'source'?)" in messages["tools/typo.yml"]
    human = run_mxcp("validate", cwd=root)
    assert human.returncode == 1 and "2 problems found" in human.stderr


def test_config_errors_are_one_message_without_traceback(run_mxcp, make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nprofils: {}\n"})
    for command in ("list", "validate", "plugins"):
        done = run_mxcp(command, cwd=root)
        assert done.returncode == 1, command
        assert "mxcp-site.yml:4: profils: unknown key 'profils' (did you mean 'profiles'?)" in done.stderr
        assert "Traceback" not in done.stderr
    payload = json.loads(run_mxcp("list", "--json-output", cwd=root).stdout)
    assert payload["status"] == "error" and "profils" in payload["error"]


def test_outside_a_project(run_mxcp, tmp_path):
    done = run_mxcp("list", cwd=tmp_path)
    assert done.returncode == 1 and "no mxcp-site.yml found" in done.stderr
    plugins = ok_json(run_mxcp("plugins", "--json-output", cwd=tmp_path))
    assert "endpoint_discovery" in {p["name"] for p in plugins["plugins"]}


def test_profile_option_and_environment(run_mxcp, make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/t.yml": "mxcp: 1\ntool:\n  name: t\n  source: {code: SELECT 1}\n"})
    assert ok_json(run_mxcp("validate", "--profile", "staging", "--json-output", cwd=root))["valid"] is True
    assert "(staging)" in run_mxcp("list", cwd=root, env={"MXCP_PROFILE": "staging"}).stdout
    assert "(prod)" in run_mxcp("list", "--profile", "prod", cwd=root, env={"MXCP_PROFILE": "staging"}).stdout


def test_help_lists_the_commands():
    result = CliRunner().invoke(build_app([]), ["--help"])
    assert result.exit_code == 0
    for command in ("init", "list", "validate", "plugins", "--disable-plugin", "--strict-plugins"):
        assert command in result.output


@pytest.mark.parametrize("command", ["list", "validate", "plugins", "init"])
def test_every_core_command_has_json_output(command):
    result = CliRunner().invoke(build_app([]), [command, "--help"])
    assert result.exit_code == 0 and "--json-output" in result.output


def test_init_into_an_existing_file_is_one_clear_error(tmp_path, run_mxcp):
    (tmp_path / "afile").write_text("x")
    done = run_mxcp("init", "afile", cwd=tmp_path)
    assert done.returncode == 1 and "exists and is not a folder" in done.stderr and "Traceback" not in done.stderr
