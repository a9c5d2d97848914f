"""The seed's SQLite-flavoured cache pattern runs on DuckDB as written."""
from __future__ import annotations

import datetime as dt

import pytest

from mxcp_core.errors import MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_plugins.seed_compat import apply_modifier, parse_value

# The seed's "External API Integration Pattern", with the HTTP request replaced by a counter.
CACHE_CODE = """\
from mxcp.runtime import db, on_init

CALLS = {"fetched": 0}


@on_init
def create_cache():
    db.execute("CREATE TABLE IF NOT EXISTS cache (key VARCHAR PRIMARY KEY, data VARCHAR, ts TIMESTAMP)")


def cached_lookup(param: str) -> dict:
    cached = db.execute(
        "SELECT data FROM cache WHERE key = $key AND ts > datetime('now', '-1 hour')",
        {"key": param}
    ).fetchone()
    if cached:
        return {"data": cached["data"], "fetched": CALLS["fetched"]}
    CALLS["fetched"] += 1
    data = f"fresh-{param}"
    db.execute(
        "INSERT OR REPLACE INTO cache (key, data, ts) VALUES ($1, $2, CURRENT_TIMESTAMP)",
        {"key": param, "data": data}
    )
    return {"data": data, "fetched": CALLS["fetched"]}


def age_entry(param: str) -> dict:
    db.execute("UPDATE cache SET ts = datetime('now', '-2 hours') WHERE key = $key", {"key": param})
    return {}
"""

TOOLS = {
    "tools/cached_lookup.yml": """\
        mxcp: 1
        tool:
          name: cached_lookup
          parameters: [{name: param, type: string}]
          return: {type: object}
          source: {file: ../python/cache.py}
        """,
    "tools/age_entry.yml": """\
        mxcp: 1
        tool:
          name: age_entry
          parameters: [{name: param, type: string}]
          return: {type: object}
          source: {file: ../python/cache.py}
        """,
    "python/cache.py": CACHE_CODE,
}


def test_seed_cache_pattern(make_project, tmp_path):
    root = make_project(tmp_path / "p", TOOLS)
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "cached_lookup", {"param": "q"}) == {"data": "fresh-q", "fetched": 1}
        assert runtime.call("tool", "cached_lookup", {"param": "q"}) == {"data": "fresh-q", "fetched": 1}
        runtime.call("tool", "age_entry", {"param": "q"})  # older than an hour: fetched again
        assert runtime.call("tool", "cached_lookup", {"param": "q"}) == {"data": "fresh-q", "fetched": 2}


def test_datetime_in_sql_endpoints_and_after_reload(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/t.yml": """\
        mxcp: 1
        tool:
          name: t
          return: {type: object}
          source: {code: "SELECT datetime('2024-01-31 10:00:00', '+1 month') AS m, datetime('now', '-1 hour') < now()::TIMESTAMP AS earlier"}
        """})
    with Runtime(open_project(root)) as runtime:
        expected = {"m": dt.datetime(2024, 2, 29, 10, 0), "earlier": True}
        assert runtime.call("tool", "t") == expected
        runtime.reload()
        runtime.wait_for_reloads()
        assert runtime.call("tool", "t") == expected


def test_a_project_datetime_function_wins(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "plugins/mine.py": """\
            def register_functions(conn):
                conn.create_function("datetime", lambda a, b: "mine", ["VARCHAR", "VARCHAR"], "VARCHAR")
            """,
        "tools/t.yml": "mxcp: 1\ntool:\n  name: t\n  return: {type: string}\n  source: {code: \"SELECT datetime('now', '-1 hour')\"}\n",
    })
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "t") == "mine"


def test_bad_modifier_is_a_clear_sql_error(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/t.yml": "mxcp: 1\ntool:\n  name: t\n  return: {type: string}\n  source: {code: \"SELECT datetime('now', 'weekday 1')\"}\n",
    })
    with Runtime(open_project(root)) as runtime, pytest.raises(MxcpError, match="unsupported modifier 'weekday 1'"):
        runtime.call("tool", "t")


BASE = dt.datetime(2024, 1, 31, 10, 30, 15)


@pytest.mark.parametrize(("modifier", "expected"), [
    ("-1 hour", dt.datetime(2024, 1, 31, 9, 30, 15)),
    ("+2 days", dt.datetime(2024, 2, 2, 10, 30, 15)),
    ("  30 minutes ", dt.datetime(2024, 1, 31, 11, 0, 15)),
    ("-1.5 seconds", dt.datetime(2024, 1, 31, 10, 30, 13, 500000)),
    ("+1 month", dt.datetime(2024, 2, 29, 10, 30, 15)),
    ("-13 months", dt.datetime(2022, 12, 31, 10, 30, 15)),
    ("+1 YEAR", dt.datetime(2025, 1, 31, 10, 30, 15)),
    ("start of month", dt.datetime(2024, 1, 1)),
    ("start of day", dt.datetime(2024, 1, 31)),
    ("start of year", dt.datetime(2024, 1, 1)),
])
def test_modifiers(modifier, expected):
    assert apply_modifier(BASE, modifier) == expected


def test_values():
    assert parse_value("2024-01-31") == dt.datetime(2024, 1, 31)
    assert parse_value("2024-01-31 10:30:15") == BASE
    before = dt.datetime.now()
    assert before <= parse_value(" NOW ") <= dt.datetime.now()
    with pytest.raises(ValueError, match="cannot read 'yesterday'"):
        parse_value("yesterday")
