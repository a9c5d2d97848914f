"""The profile's `sql.engine` chooses the engine; one no plugin provides stops the start, and a reload cannot switch."""
from __future__ import annotations

import pytest

from mxcp_core import ConfigError, Runtime, open_project

SITE = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    sql: {{engine: {engine}}}\n"
TOOL = """\
mxcp: 1
tool:
  name: one
  description: One.
  return: {type: integer}
  source: {code: "SELECT 1 AS x"}
"""


def test_duckdb_is_the_default_and_the_explicit_engine(make_project, tmp_path):
    for engine in (None, "duckdb"):
        site = "mxcp: 1\nproject: demo\nprofile: default\n" if engine is None else SITE.format(engine=engine)
        root = make_project(tmp_path / f"p-{engine}", {"mxcp-site.yml": site, "tools/one.yml": TOOL})
        with Runtime(open_project(root)) as runtime:
            assert runtime.database.name == "duckdb"
            assert runtime.call("tool", "one", {}) == 1


def test_an_engine_no_plugin_provides_stops_the_start_naming_the_key(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": SITE.format(engine="oracle"), "tools/one.yml": TOOL})
    with pytest.raises(ConfigError) as caught:
        Runtime(open_project(root))
    message = str(caught.value)
    assert "profiles.default.sql.engine" in message and "'oracle'" in message
    assert "mxcp-site.yml" in message


def test_a_disabled_postgres_plugin_is_not_replaced_by_duckdb(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": SITE.format(engine="postgres"), "tools/one.yml": TOOL})
    done = run_mxcp("run", "tool", "one", cwd=root, env={"MXCP_DISABLE_PLUGINS": "engine_postgres"})
    assert done.returncode != 0
    assert "profiles.default.sql.engine" in done.stderr and "mxcp-pluggy[postgres]" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reload_that_switches_the_engine_is_refused_and_the_old_set_serves_on(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": SITE.format(engine="duckdb"), "tools/one.yml": TOOL})
    runtime = Runtime(open_project(root))
    runtime.start()
    try:
        (root / "mxcp-site.yml").write_text(SITE.format(engine="postgres"), encoding="utf-8")
        runtime.reload(description="test", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert runtime.config_problem is not None and "restart" in runtime.config_problem
        assert "profiles.default.sql" in runtime.config_problem
        assert runtime.database.name == "duckdb"
        assert runtime.call("tool", "one", {}) == 1
    finally:
        runtime.stop()


def test_a_secret_with_the_duckdb_engine_is_refused_not_ignored(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    sql: {secret: pg_main}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site, "tools/one.yml": TOOL})
    with pytest.raises(ConfigError) as caught:
        Runtime(open_project(root))
    assert "profiles.default.sql.secret" in str(caught.value)
