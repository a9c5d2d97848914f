"""A reload with `config=True` (SIGHUP) reads the user config again: what it takes, and what it refuses."""
from __future__ import annotations

import signal
from pathlib import Path

import attrs
import pytest

from executor_helpers import python_tool
from mxcp_core import Runtime, hookimpl, open_project
from server_helpers import health, http_server, run_http, text, wait_for

SECRETS = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - {{name: api, type: custom, parameters: {{token: "{token}"}}}}
{extra}"""


TOKEN_TOOL = python_tool("token", "token.py", returns="{type: string}")
TOKEN_CODE = """\
from mxcp.runtime import config

def token() -> str:
    return config.get_secret("api")["token"]
"""


def config(token: str, extra: str = "") -> str:
    return SECRETS.format(token=token, extra=extra)


@attrs.define
class Served:
    runtime: Runtime
    user_file: Path

    def reload_config(self) -> None:
        """What SIGHUP does, waited for."""
        self.runtime.reload(description="test", config=True)
        self.runtime.wait_for_reloads(timeout=30)

    def token(self) -> str:
        return self.runtime.context.secret("api")["token"]


@pytest.fixture
def served(make_project, user_config, tmp_path):
    """A started runtime on a user config the test rewrites."""
    path = user_config(config("token-one"))
    runtime = Runtime(open_project(make_project(tmp_path / "p")))
    runtime.start()
    try:
        yield Served(runtime, path)
    finally:
        runtime.stop()


def test_a_changed_secret_is_taken(served):
    served.user_file.write_text(config("token-two"))
    served.reload_config()
    runtime = served.runtime
    assert served.token() == "token-two" and runtime.config_problem is None
    assert runtime.project.context is runtime.context and runtime.database.project is runtime.context


def test_without_http_sign_in_an_auth_block_on_reload_is_taken(served):
    """stdio and `mxcp run` have no sign-in: adding an `auth:` block changes nothing there, so nothing blocks."""
    served.user_file.write_text(config("token-two", extra=(
        "        auth: {provider: github, github: {client_id: x, client_secret: y}}\n")))
    served.reload_config()
    assert served.runtime.config_problem is None and served.token() == "token-two"


def test_http_sign_in_added_on_sighup_is_refused_not_left_unapplied(make_project, user_config, tmp_path):
    """An open HTTP server given an `auth:` block on SIGHUP must not take it and stay open: it keeps what it has,
    says to restart, and a restart then signs callers in."""
    path = user_config(config("token-one"))
    root = make_project(tmp_path / "p", {"tools/token.yml": TOKEN_TOOL, "python/token.py": TOKEN_CODE})
    with http_server(root) as (base, process):
        assert text(run_http(f"{base}/mcp", lambda client: client.call_tool("token", {}))) == "token-one"
        path.write_text(config("token-two", extra=(
            "        auth: {provider: github, github: {client_id: x, client_secret: y}}\n")))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(base)[1].get("reloads") == 1)
        problem = health(base)[1]["config_problem"]
        assert "sign-in settings" in problem and "restart the server" in problem
        # Still the configuration it started with: open, and the old secret.
        assert text(run_http(f"{base}/mcp", lambda client: client.call_tool("token", {}))) == "token-one"

        path.write_text(config("token-three"))  # the block removed again: the next reload is taken
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(base)[1].get("reloads") == 2)
        assert "config_problem" not in health(base)[1]
        assert text(run_http(f"{base}/mcp", lambda client: client.call_tool("token", {}))) == "token-three"


class Pinned:
    """A plugin that applies the secret `api` at start only, so it refuses a reload that changes it."""

    @hookimpl
    def check_reload(self, project, fresh):
        if fresh.secret("api") != project.secret("api"):
            return "secret 'api' is pinned by the test plugin"
        return None


def test_a_plugin_refuses_a_reload_through_check_reload(make_project, user_config, tmp_path):
    path = user_config(config("token-one"))
    runtime = Runtime(open_project(make_project(tmp_path / "p"), extra_plugins=[("pinned", Pinned())]))
    with runtime:
        path.write_text(config("token-two"))
        runtime.reload(description="test", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert runtime.config_problem.endswith("secret 'api' is pinned by the test plugin")
        assert runtime.context.secret("api")["token"] == "token-one"


def test_a_user_config_gone_since_start_is_refused(served):
    served.user_file.unlink()
    served.reload_config()
    assert "no longer exists" in served.runtime.config_problem
    assert served.token() == "token-one"


def test_a_broken_file_keeps_the_previous_configuration_and_a_fixed_one_clears_the_problem(served):
    served.user_file.write_text("mxcp: 1\nprojects: [unclosed\n")
    served.reload_config()
    assert served.runtime.config_problem and served.token() == "token-one"
    served.user_file.write_text(config("token-three"))
    served.reload_config()
    assert served.runtime.config_problem is None and served.token() == "token-three"


def test_a_reload_without_config_does_not_read_it(served):
    served.user_file.write_text(config("token-two"))
    served.runtime.reload(description="reload_duckdb")  # what reload_duckdb() from endpoint code asks for
    served.runtime.wait_for_reloads(timeout=30)
    assert served.token() == "token-one"


UDF_PLUGIN = """\
from mxcp.plugins import MXCPBasePlugin, udf


class MXCPPlugin(MXCPBasePlugin):
    def __init__(self, config):
        super().__init__(config)
        self.key = config.get("api_key", "")

    @udf
    def key_tail(self) -> str:
        return self.key[-3:]
"""


def test_udf_plugin_instances_are_built_again_with_a_rotated_config(make_project, user_config, tmp_path):
    """A UDF plugin's config (an API key from the user config) rotated on reload reaches its functions."""
    site = ("mxcp: 1\nproject: demo\nprofile: default\n"
            "plugin:\n  - {name: keys, module: keyplug, config: kcfg}\n")
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site, "plugins/keyplug.py": UDF_PLUGIN})
    plugin_config = "        plugin:\n          config:\n            kcfg: {{api_key: {key}}}\n"
    path = user_config(config("token-one", extra=plugin_config.format(key="key-one")))
    with Runtime(open_project(root)) as runtime:
        assert runtime.database.connection.execute("SELECT key_tail_keys()").fetchone() == ("one",)
        path.write_text(config("token-one", extra=plugin_config.format(key="key-two")))
        runtime.reload(description="test", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert runtime.config_problem is None
        assert runtime.database.connection.execute("SELECT key_tail_keys()").fetchone() == ("two",)
