"""Every project in examples/ passes `mxcp lint` without an error (warnings and info are allowed).

Lint only reads the project, so it runs in the example folder itself. Plugins of other installed
distributions (examples/mxcp-plugin-example when CI installs it) stay disabled, as for every test
(conftest.isolated_environment): their tools are not the example's to lint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROJECTS = sorted(path.parent.name for path in EXAMPLES.glob("*/mxcp-site.yml"))


def test_there_are_example_projects():
    assert PROJECTS


@pytest.mark.parametrize("folder", PROJECTS)
def test_example_has_no_lint_error(folder: str, run_mxcp: Any, third_party_plugins: list[str]):
    env = {"MXCP_DISABLE_PLUGINS": ",".join(third_party_plugins)} if third_party_plugins else {}
    done = run_mxcp("lint", "--json-output", cwd=EXAMPLES / folder, env=env)
    payload = json.loads(done.stdout)
    errors = [finding for finding in payload["result"]["findings"] if finding["severity"] == "error"]
    assert errors == [], f"lint errors in examples/{folder}:\n{json.dumps(errors, indent=2)}"
    assert payload["result"]["checked"] > 0
    assert done.returncode == 0, f"mxcp lint failed in examples/{folder}:\n{done.stdout}\n{done.stderr}"
