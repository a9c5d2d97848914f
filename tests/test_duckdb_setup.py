"""Database setup on every open: the site config's extensions and DuckDB secrets from the user config."""
from __future__ import annotations

import duckdb
import pytest

from mxcp_core.errors import ConfigError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_plugins.duckdb_setup import quote_identifier, quote_literal, secret_statement

TRICKY_TOKEN = "it's a 'quoted' token\\"


def site(extra: str = "") -> str:
    return "mxcp: 1\nproject: demo\nprofile: default\n" + extra


def secrets_config(secrets: str) -> str:
    return (
        "mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
        + "".join(f"          {line}\n" for line in secrets.strip().splitlines())
    )


def query(runtime: Runtime, sql: str) -> list[tuple]:
    with runtime.database.cursor() as cursor:
        return cursor.execute(sql).fetchall()


# -- extensions -----------------------------------------------------------------------------------------
def test_builtin_extensions_are_loaded(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site("extensions: [json, {name: parquet}]\n")})
    with Runtime(open_project(root)) as runtime:
        loaded = dict(query(runtime, "SELECT extension_name, loaded FROM duckdb_extensions() "
                                     "WHERE extension_name IN ('json', 'parquet')"))
        assert loaded == {"json": True, "parquet": True}
        assert query(runtime, "SELECT json_extract('{\"a\": 7}', '$.a')::INTEGER") == [(7,)]


def test_missing_extension_error_names_it(make_project, tmp_path):
    # A local (missing) repository: the INSTALL attempt fails without touching the network.
    repo = tmp_path / "no-repo"
    root = make_project(tmp_path / "p", {
        "mxcp-site.yml": site(f"extensions: [json, {{name: no_such_ext_xyz, repo: '{repo}'}}]\n"),
    })
    runtime = Runtime(open_project(root))
    with pytest.raises(ConfigError) as info:
        runtime.start()
    assert "no_such_ext_xyz" in str(info.value)
    assert "extensions[1]" in str(info.value)
    assert not runtime.database.is_open


def test_extension_name_must_be_a_name(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site("extensions: ['json; DROP TABLE x']\n")})
    with pytest.raises(ConfigError, match="is not a DuckDB extension name"):
        Runtime(open_project(root)).start()


# -- secrets --------------------------------------------------------------------------------------------
def test_duckdb_secret_types_become_duckdb_secrets(make_project, user_config, tmp_path):
    user_config(secrets_config(f"""
- name: api_service
  type: http
  parameters: {{BEARER_TOKEN: "{TRICKY_TOKEN.replace(chr(92), chr(92) * 2)}", EXTRA_HTTP_HEADERS: {{X-Team: data}}}}
- {{name: plain_api, type: api, parameters: {{value: abc}}}}
- {{name: 'odd "name"', type: http, parameters: {{BEARER_TOKEN: x}}}}
"""))
    root = make_project(tmp_path / "p")
    with Runtime(open_project(root)) as runtime:
        secrets = query(runtime, "SELECT name, type FROM duckdb_secrets() ORDER BY name")
    # `api` is not a DuckDB secret type: it stays a config-only secret.
    assert secrets == [("api_service", "http"), ('odd "name"', "http")]


def test_secret_statement_quotes_values_and_round_trips():
    statement = secret_statement(
        'my "secret"', "http",
        {"BEARER_TOKEN": TRICKY_TOKEN, "EXTRA_HTTP_HEADERS": {"X-Team": "da'ta"}},
    )
    assert statement.startswith('CREATE OR REPLACE TEMPORARY SECRET "my ""secret""" (TYPE http, ')
    conn = duckdb.connect(config={"allow_unredacted_secrets": True})
    try:
        conn.execute(statement)
        (text,) = conn.execute("SELECT secret_string FROM duckdb_secrets(redact := false)").fetchall()[0]
    finally:
        conn.close()
    assert f"bearer_token={TRICKY_TOKEN}" in text
    assert "extra_http_headers={X-Team='da\\'ta'}" in text  # DuckDB prints the map value escaped


def test_quoting_helpers():
    assert quote_literal("a'b") == "'a''b'"
    assert quote_identifier('a"b') == '"a""b"'


def test_secret_option_names_are_checked(make_project, user_config, tmp_path):
    user_config(secrets_config('- {name: s, type: http, parameters: {"BEARER_TOKEN) --": "v"}}'))
    root = make_project(tmp_path / "p")
    with pytest.raises(ConfigError, match="is not a valid DuckDB secret option"):
        Runtime(open_project(root)).start()


def test_failed_secret_error_names_it_but_not_its_values(make_project, user_config, tmp_path):
    user_config(secrets_config('- {name: broken, type: http, parameters: {BOGUS_OPTION: "hunter2-value"}}'))
    root = make_project(tmp_path / "p")
    with pytest.raises(ConfigError) as info:
        Runtime(open_project(root)).start()
    assert "secret 'broken'" in str(info.value) and "bogus_option" in str(info.value).lower()
    assert "hunter2-value" not in str(info.value)


def test_a_secret_whose_duckdb_extension_is_missing_is_said_not_fatal(make_project, user_config, tmp_path, caplog):
    """A `type: postgres` secret may be for mxcp's own postgres sink or store: offline, without DuckDB's postgres
    extension, the project still starts; the log says DuckDB's SQL cannot use the secret."""
    user_config(secrets_config(
        "- {name: pg_main, type: postgres, parameters: {host: 127.0.0.1, port: 1, database: d, user: u, "
        "password: pg-password-never-logged}}"))
    root = make_project(tmp_path / "p")
    with caplog.at_level("WARNING", logger="mxcp_plugins.duckdb_setup"), Runtime(open_project(root)) as runtime:
        created = query(runtime, "SELECT name FROM duckdb_secrets()")
        assert runtime.context.secret("pg_main")["user"] == "u"
    warned = [r.getMessage() for r in caplog.records if "pg_main" in r.getMessage()]
    # Either DuckDB had the extension (the secret exists in DuckDB) or the start said why it does not.
    assert ("pg_main",) in created or (warned and "not available to DuckDB's SQL" in warned[0])
    assert all("pg-password-never-logged" not in r.getMessage() for r in caplog.records)


def test_secrets_and_extensions_in_a_readonly_database(make_project, user_config, tmp_path, monkeypatch):
    user_config(secrets_config('- {name: api_service, type: http, parameters: {BEARER_TOKEN: t}}'))
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site("extensions: [json]\n")})
    monkeypatch.setenv("MXCP_READONLY", "1")
    project = open_project(root)
    assert project.context.readonly
    with Runtime(project) as runtime:
        assert query(runtime, "SELECT name FROM duckdb_secrets()") == [("api_service",)]
        with pytest.raises(duckdb.Error, match="read-only"):
            query(runtime, "CREATE TABLE t (x INTEGER)")


def test_secrets_are_created_again_after_reload(make_project, user_config, tmp_path):
    user_config(secrets_config('- {name: api_service, type: http, parameters: {BEARER_TOKEN: t}}'))
    root = make_project(tmp_path / "p")
    with Runtime(open_project(root)) as runtime:
        runtime.reload()
        runtime.wait_for_reloads()
        assert runtime.reload_count == 1
        assert query(runtime, "SELECT name FROM duckdb_secrets()") == [("api_service",)]
