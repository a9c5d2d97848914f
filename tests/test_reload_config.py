"""A reload with `config=True` (SIGHUP) reads the user config again: what it takes, and what it refuses."""
from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mxcp_core import Runtime, open_project

SECRETS = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - {{name: api, type: custom, parameters: {{token: "{token}"}}}}
{extra}"""


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


def test_a_sign_in_block_added_on_reload_is_refused_not_ignored(served):
    """Sign-in is set up when the server starts: taking the block without applying it would serve open."""
    served.user_file.write_text(config("token-two", extra=(
        "        auth: {provider: github, github: {client_id: x, client_secret: y}}\n")))
    served.reload_config()
    assert "section 'auth' changed" in served.runtime.config_problem and "restart the server" in served.runtime.config_problem
    assert "sign_in" in served.runtime.config_problem
    assert served.token() == "token-one"  # nothing of that reading was taken
    assert served.runtime.health == (True, None)


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
