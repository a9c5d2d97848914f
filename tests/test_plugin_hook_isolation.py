"""A plugin raising in register_commands, register_functions or on_init is named and skipped (fatal with
--strict-plugins); a user module's raising @on_init stops the start, naming the file and the function.

Through the real `mxcp` command line in a subprocess, with plugins installed as distributions (entry points).
"""
from __future__ import annotations

import json
import sys

import pytest
from executor_helpers import started

from mxcp_core.errors import MxcpError

COMMAND_PLUGIN = """\
import typer
from mxcp_core import hookimpl

def hello() -> None:
    \"\"\"Say hello from a plugin.\"\"\"
    typer.echo("hello from acme")

@hookimpl
def register_commands(cli):
    cli.command("acme-hello")(hello)
"""

BROKEN_COMMANDS = """\
from mxcp_core import hookimpl

@hookimpl
def register_commands(cli):
    raise RuntimeError("cannot add a command")
"""

GOOD_FUNCTIONS = """\
from mxcp_core import hookimpl

@hookimpl
def register_functions(conn, project):
    conn.create_function("acme_double", lambda x: x * 2, ["BIGINT"], "BIGINT")
"""

BROKEN_FUNCTIONS = """\
from mxcp_core import hookimpl

@hookimpl
def register_functions(conn, project):
    raise KeyError("no such setting")
"""

BROKEN_INIT = """\
from mxcp_core import hookimpl

@hookimpl
def on_init(runtime):
    raise RuntimeError("cannot reach the cache")
"""

TOOL = """\
mxcp: 1
tool:
  name: doubled
  return: {type: integer}
  source: {code: "SELECT acme_double(21)"}
"""


@pytest.fixture
def plugins(make_dist):
    """Folders of installed-looking distributions, by what their plugin does."""
    return {
        "commands": make_dist("acme-cli", {"acme_cli": COMMAND_PLUGIN}, {"acme_cli": "acme_cli"}),
        "broken_commands": make_dist("acme-broken-cli", {"acme_broken_cli": BROKEN_COMMANDS},
                                     {"acme_broken_cli": "acme_broken_cli"}),
        "functions": make_dist("acme-fn", {"acme_fn": GOOD_FUNCTIONS}, {"acme_fn": "acme_fn"}),
        "broken_functions": make_dist("acme-broken-fn", {"acme_broken_fn": BROKEN_FUNCTIONS},
                                      {"acme_broken_fn": "acme_broken_fn"}),
        "broken_init": make_dist("acme-broken-init", {"acme_broken_init": BROKEN_INIT},
                                 {"acme_broken_init": "acme_broken_init"}),
    }


def test_a_raising_register_commands_leaves_help_and_other_plugins_commands_working(plugins, make_project,
                                                                                   run_mxcp, tmp_path):
    root = make_project(tmp_path / "p")
    path = [plugins["commands"], plugins["broken_commands"]]
    helped = run_mxcp("--help", cwd=root, pythonpath=path)
    assert helped.returncode == 0 and "acme-hello" in helped.stdout and "validate" in helped.stdout
    assert "plugin 'acme_broken_cli'" in helped.stderr and "cannot add a command" in helped.stderr
    assert "Traceback" not in helped.stderr
    other = run_mxcp("acme-hello", cwd=root, pythonpath=path)
    assert (other.returncode, other.stdout) == (0, "hello from acme\n")
    strict = run_mxcp("--strict-plugins", "--help", cwd=root, pythonpath=path)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "plugin 'acme_broken_cli' failed to load: register_commands failed: RuntimeError: cannot add a command" \
        in strict.stderr


def test_a_raising_register_functions_is_named_and_the_other_plugins_functions_still_work(plugins, make_project,
                                                                                         run_mxcp, tmp_path):
    root = make_project(tmp_path / "p", {"tools/doubled.yml": TOOL})
    path = [plugins["functions"], plugins["broken_functions"]]
    done = run_mxcp("run", "tool", "doubled", cwd=root, pythonpath=path)
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
    assert ("plugin 'acme_broken_fn' failed to load and was skipped: register_functions failed: KeyError: "
            "'no such setting'") in done.stderr
    assert "Traceback" not in done.stderr
    # validate opens the database too: the same plugin is named, the endpoint using the other's function is valid.
    checked = run_mxcp("validate", "--json-output", cwd=root, pythonpath=path)
    assert checked.returncode == 0 and json.loads(checked.stdout)["result"]["problems"] == []
    assert "plugin 'acme_broken_fn' failed to load and was skipped: register_functions failed" in checked.stderr

    strict = run_mxcp("--strict-plugins", "run", "tool", "doubled", cwd=root, pythonpath=path)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "plugin 'acme_broken_fn' failed to load: register_functions failed: KeyError" in strict.stderr


def test_a_plugins_raising_on_init_is_named_and_skipped(plugins, make_project, run_mxcp, tmp_path):
    root = make_project(tmp_path / "p", {"tools/doubled.yml": TOOL})
    path = [plugins["functions"], plugins["broken_init"]]
    done = run_mxcp("run", "tool", "doubled", cwd=root, pythonpath=path)
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
    assert ("plugin 'acme_broken_init' failed to load and was skipped: on_init failed: RuntimeError: "
            "cannot reach the cache") in done.stderr
    assert "Traceback" not in done.stderr
    strict = run_mxcp("--strict-plugins", "run", "tool", "doubled", cwd=root, pythonpath=path)
    assert strict.returncode == 1 and "Traceback" not in strict.stderr
    assert "plugin 'acme_broken_init' failed to load: on_init failed: RuntimeError" in strict.stderr


USER_INIT = {
    "tools/answer.yml": """\
        mxcp: 1
        tool:
          name: answer
          return: {type: integer}
          source: {code: "SELECT 42"}
        """,
    "python/setup_cache.py": """\
        from mxcp.runtime import on_init

        @on_init
        def connect_cache():
            raise ConnectionError("cache at localhost:1 refused")
        """,
}


def test_a_user_modules_raising_on_init_stops_the_start_naming_file_and_function(make_project, run_mxcp,
                                                                                 tmp_path):
    """The project's own setup failed: every endpoint may depend on it, so nothing is served (not even with
    --ignore-errors, which skips invalid endpoints only)."""
    root = make_project(tmp_path / "p", USER_INIT)
    expected = ("python/setup_cache.py: @on_init function connect_cache() failed: ConnectionError: "
                "cache at localhost:1 refused")
    done = run_mxcp("run", "tool", "answer", cwd=root)
    assert done.returncode == 1 and expected in done.stderr and "Traceback" not in done.stderr
    debug = run_mxcp("run", "tool", "answer", "--debug", cwd=root)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and 'raise ConnectionError' in debug.stderr
    for extra in ((), ("--ignore-errors",)):
        served = run_mxcp("serve", "--transport", "stdio", *extra, cwd=root)
        assert served.returncode == 1 and expected in served.stderr and "Traceback" not in served.stderr
    # validate runs no on_init: the project's endpoints are valid.
    assert run_mxcp("validate", cwd=root).returncode == 0


def test_a_start_stopped_by_on_init_releases_what_it_took(make_project, tmp_path):
    root = make_project(tmp_path / "p", USER_INIT)
    path_before = list(sys.path)
    with pytest.raises(MxcpError, match=r"^python/setup_cache.py: @on_init function connect_cache\(\) failed"), \
            started(root):
        pass
    assert sys.path == path_before and "setup_cache" not in sys.modules


GUARD_BROKEN_INIT = """\
from mxcp_core import MxcpError, hookimpl

@hookimpl
def on_init(runtime):
    raise OSError("cannot reach the policy server")

@hookimpl(wrapper=True)
def call_endpoint(call):
    raise MxcpError("denied by the guard")
    yield  # a wrapper is a generator
"""


def test_a_plugin_that_guards_calls_is_never_skipped_when_it_fails(make_dist, make_project, run_mxcp, tmp_path):
    """Skipping it would serve without its guard: its failure stops the start instead, even without strict mode."""
    folder = make_dist("acme-guard", {"acme_guard": GUARD_BROKEN_INIT}, {"acme_guard": "acme_guard"})
    root = make_project(tmp_path / "p", {"tools/open.yml": 'mxcp: 1\ntool: {name: open, return: {type: integer}, '
                                                           'source: {code: "SELECT 1"}}\n'})
    done = run_mxcp("run", "tool", "open", cwd=root, pythonpath=[folder])
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert ("plugin 'acme_guard' failed: on_init failed: OSError: cannot reach the policy server; it guards calls "
            "(call_endpoint), so nothing is served without it") in done.stderr


SIGN_IN_BROKEN_INIT = """
from mxcp_core import hookimpl


@hookimpl
def on_init(runtime):
    raise OSError("cannot reach the token service")

@hookimpl
def http_sign_in(project, base_url, resource_url, providers, open_store):
    return None
"""


def test_a_sign_in_plugin_is_never_skipped_when_it_fails(make_dist, make_project, run_mxcp, tmp_path):
    """A plugin that signs HTTP callers in guards calls as well: skipped, the server would be open."""
    folder = make_dist("acme-sign-in", {"acme_sign_in": SIGN_IN_BROKEN_INIT}, {"acme_sign_in": "acme_sign_in"})
    root = make_project(tmp_path / "p", {"tools/open.yml": 'mxcp: 1\ntool: {name: open, return: {type: integer}, '
                                                           'source: {code: "SELECT 1"}}\n'})
    done = run_mxcp("run", "tool", "open", cwd=root, pythonpath=[folder])
    assert done.returncode == 1 and done.stdout == ""
    assert "plugin 'acme_sign_in' failed" in done.stderr and "it guards calls (http_sign_in)" in done.stderr
