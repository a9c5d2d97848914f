"""mxcp-site.yml and the user config: formats, errors that point at file/line/key, profiles, value references."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from mxcp_core.config import SiteConfig, read_user_file, structure_user_config
from mxcp_core.database import Database
from mxcp_core.errors import ConfigError
from mxcp_core.project import open_project

FULL_SITE = """\
mxcp: 1
project: demo
profile: default
description: every key of the original format
secrets: [db, api]
extensions: [httpfs, {name: h3, repo: community}]
plugin:
  - {name: str_secret, module: my_plugin, config: rot1}
sql_tools: {enabled: false}
paths: {tools: tools, python: python, plugins: plugins}
profiles:
  default:
    duckdb: {path: null, readonly: false}
    audit: {enabled: false, path: null}
    drift: {path: null}
dbt: {enabled: true, model_paths: [models]}
"""

FULL_USER = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - name: api_key
            type: api
            parameters: {value: "plain"}
          - name: api_service
            type: http
            parameters: {BEARER_TOKEN: "t", EXTRA_HTTP_HEADERS: {X-Team: data}}
        plugin:
          config:
            rot1: {rotation: "1"}
        auth: {provider: none}
transport:
  provider: streamable-http
  http: {host: localhost, port: 8000, stateless: false}
"""


def error_of(root: Path, **options) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        open_project(root, **options)
    return caught.value


# -- existing projects load unchanged ------------------------------------------------------------
def test_full_original_formats_load(make_project, user_config, tmp_path, caplog):
    user_config(FULL_USER)
    project = open_project(make_project(tmp_path / "p", {"mxcp-site.yml": FULL_SITE}))
    context = project.context
    assert isinstance(context.site, SiteConfig)
    # Each section belongs to the plugin that reads it, structured into that plugin's own classes.
    extensions = context.plugin_config("extensions")
    assert extensions[0] == "httpfs" and extensions[1].repo == "community"
    assert context.plugin_config("plugin")[0].module == "my_plugin"
    assert context.plugin_config("sql_tools").enabled is False
    assert context.plugin_config("audit", scope="site_profile").enabled is False
    assert context.plugin_config("plugin", scope="user_profile").config == {"rot1": {"rotation": "1"}}
    assert context.secret("api_service")["EXTRA_HTTP_HEADERS"] == {"X-Team": "data"}
    assert context.user.transport.http.port == 8000
    # `dbt:` is the original's and nothing here implements it: loaded with one warning, not an error.
    assert [r.getMessage() for r in caplog.records if "dbt" in r.getMessage()] == [
        f"{context.site_file}:16: dbt: section 'dbt' (dbt integration) is not implemented in this version and is "
        "ignored"
    ]


# -- errors name the file, line and key path -------------------------------------------------------
def test_bad_yaml_reports_file_and_line(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: [default\n"})
    error = error_of(root)
    assert error.file == str(root / "mxcp-site.yml")
    assert error.line == 4  # the unclosed flow sequence is detected at end of input
    assert "invalid YAML" in str(error)


def test_bad_yaml_in_user_config_reports_line(make_project, user_config, tmp_path):
    path = user_config("mxcp: 1\nprojects:\n  demo:\n    profiles: {\n  x: : y\n")
    error = error_of(make_project(tmp_path / "p"))
    assert error.file == str(path)
    assert error.line is not None and 4 <= error.line <= 6
    assert str(error).startswith(f"{path}:{error.line}: invalid YAML")


def test_unknown_site_key_suggests_closest(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nprofils: {}\n"})
    error = error_of(root)
    assert (error.line, error.key_path) == (4, "profils")
    assert "unknown key 'profils' (did you mean 'profiles'?)" in error.message


def test_unknown_nested_site_key_has_key_path(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    duckdb:\n      readonyl: true\n"
    error = error_of(make_project(tmp_path / "p", {"mxcp-site.yml": site}))
    assert error.key_path == "profiles.default.duckdb.readonyl"
    assert error.line == 7
    assert "(did you mean 'readonly'?)" in error.message


def test_unknown_user_config_key_names_full_key_path(make_project, user_config, tmp_path):
    path = user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              dev:
                secrets:
                  - name: first
                    parameters: {a: b}
                  - name: second
                    parameterz: {a: b}
        """
    )
    root = make_project(tmp_path / "p")
    error = error_of(root, profile="dev")
    assert error.file == str(path)
    assert error.key_path == "projects.demo.profiles.dev.secrets[1].parameterz"
    assert error.line == 10
    assert "(did you mean 'parameters'?)" in error.message
    assert str(error).startswith(f"{path}:10: projects.demo.profiles.dev.secrets[1].parameterz: unknown key")


def test_wrong_type_in_site_says_what_was_expected(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\nsql_tools:\n  enabled: sometimes\n"
    error = error_of(make_project(tmp_path / "p", {"mxcp-site.yml": site}))
    assert (error.key_path, error.line) == ("sql_tools.enabled", 5)
    assert "expected true or false" in error.message and "sometimes" in error.message


def test_wrong_type_in_user_config(make_project, user_config, tmp_path):
    user_config("mxcp: 1\ntransport:\n  http:\n    port: eighty\n")
    error = error_of(make_project(tmp_path / "p"))
    assert error.key_path == "transport.http.port"
    assert error.line == 4
    assert "expected an integer" in error.message


def test_missing_required_site_key(make_project, tmp_path):
    error = error_of(make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\n"}))
    assert error.key_path == "profile"
    assert "required key 'profile' is missing" in error.message


def test_unsupported_version(make_project, tmp_path):
    error = error_of(make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 2\nproject: demo\nprofile: default\n"}))
    assert (error.key_path, error.line) == ("mxcp", 1)


# -- ${VAR} interpolation ---------------------------------------------------------------------------
def test_site_variables_are_interpolated(make_project, tmp_path, monkeypatch):
    monkeypatch.setenv("DB_DIR", str(tmp_path / "dbs"))
    site = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    duckdb: {path: '${DB_DIR}/x.duckdb'}\n"
    project = open_project(make_project(tmp_path / "p", {"mxcp-site.yml": site}))
    assert project.context.duckdb_path == str(tmp_path / "dbs" / "x.duckdb")


def test_unset_variable_in_active_profile_names_variable_and_file(make_project, user_config, tmp_path):
    path = user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - name: api
                    parameters: {value: "${MXCP_TEST_UNSET_VAR}"}
        """
    )
    error = error_of(make_project(tmp_path / "p"))
    assert error.file == str(path)
    assert "'MXCP_TEST_UNSET_VAR' is not set" in error.message
    assert error.key_path == "projects.demo.profiles.default.secrets[0].parameters.value"
    assert error.line == 8


def test_unset_variable_in_active_site_profile_is_an_error(make_project, tmp_path):
    site = ("mxcp: 1\nproject: demo\nprofile: default\n"
            "profiles:\n  default:\n    duckdb: {path: '${MXCP_TEST_UNSET_VAR}'}\n")
    error = error_of(make_project(tmp_path / "p", {"mxcp-site.yml": site}))
    assert error.file.endswith("mxcp-site.yml")
    assert "MXCP_TEST_UNSET_VAR" in error.message


def test_unset_variable_in_unused_profile_or_project_is_fine(make_project, user_config, tmp_path):
    """The original resolved every profile, so one unset variable anywhere broke every command."""
    user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {name: api, parameters: {value: plain}}
              prod:
                secrets:
                  - {name: api, parameters: {value: "${MXCP_TEST_UNSET_VAR}"}}
                  - {name: token, parameters: {value: "vault://secret/x#y"}}
          other:
            profiles:
              default:
                secrets:
                  - {name: api, parameters: {value: "${MXCP_TEST_UNSET_VAR}"}}
        """
    )
    site = (
        "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default: {}\n"
        "  prod:\n    duckdb: {path: '${MXCP_TEST_UNSET_VAR}'}\n"
    )
    project = open_project(make_project(tmp_path / "p", {"mxcp-site.yml": site}))
    assert project.context.secret("api") == {"value": "plain"}
    with pytest.raises(ConfigError, match="MXCP_TEST_UNSET_VAR"):
        open_project(tmp_path / "p", profile="prod")


def test_profile_given_as_variable(make_project, tmp_path, monkeypatch):
    monkeypatch.setenv("MXCP_TEST_PROFILE", "staging")
    project = open_project(
        make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: ${MXCP_TEST_PROFILE}\n"})
    )
    assert project.context.profile == "staging"


# -- profiles ---------------------------------------------------------------------------------------
def test_profile_precedence_flag_then_env_then_site(make_project, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: from_site\n"})
    assert open_project(root).context.profile == "from_site"
    monkeypatch.setenv("MXCP_PROFILE", "from_env")
    assert open_project(root).context.profile == "from_env"
    assert open_project(root, profile="from_flag").context.profile == "from_flag"


def test_default_duckdb_path_follows_profile(make_project, tmp_path):
    root = make_project(tmp_path / "p")
    assert open_project(root, profile="dev").context.duckdb_path == str((root / "data" / "db-dev.duckdb").resolve())


# -- finding the files ------------------------------------------------------------------------------
def test_site_file_found_by_walking_up(make_project, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", {"tools/deep/er/.keep": ""})
    monkeypatch.chdir(root / "tools" / "deep" / "er")
    project = open_project()
    assert project.root == root.resolve()


def test_no_site_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no mxcp-site.yml found"):
        open_project()


def test_missing_user_config_is_empty(make_project, tmp_path, isolated_environment):
    assert not (isolated_environment / ".mxcp").exists()
    project = open_project(make_project(tmp_path / "p"))
    assert project.context.user.projects == {}
    assert project.context.secret("anything") is None


def test_user_config_from_home(make_project, tmp_path, isolated_environment):
    (isolated_environment / ".mxcp").mkdir()
    (isolated_environment / ".mxcp" / "config.yml").write_text(
        "mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
        "          - {name: s, parameters: {k: from-home}}\n"
    )
    assert open_project(make_project(tmp_path / "p")).context.secret("s") == {"k": "from-home"}


def test_mxcp_config_naming_a_missing_file_is_an_error(make_project, tmp_path, monkeypatch):
    monkeypatch.setenv("MXCP_CONFIG", str(tmp_path / "nope.yml"))
    error = error_of(make_project(tmp_path / "p"))
    assert error.file == str(tmp_path / "nope.yml")


def test_empty_user_config_file_is_empty(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("")
    assert structure_user_config(*read_user_file(path)).projects == {}


# -- duckdb settings --------------------------------------------------------------------------------
def test_readonly_is_honoured(make_project, tmp_path):
    """The original ignored `duckdb.readonly: true`."""
    site = "mxcp: 1\nproject: demo\nprofile: default\nprofiles:\n  default:\n    duckdb: {readonly: true}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site})
    project = open_project(root)
    assert project.context.readonly is True
    database = Database(project.context, project.hooks)
    database.open()
    try:
        with database.cursor() as cursor, pytest.raises(duckdb.Error, match="read-only"):
            cursor.execute("CREATE TABLE t (x INTEGER)")
    finally:
        database.close()
    assert open_project(root, readonly=False).context.readonly is False


def test_readonly_from_environment(make_project, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    monkeypatch.setenv("MXCP_READONLY", "1")
    assert open_project(root).context.readonly is True


# -- value references through resolve_secret -----------------------------------------------------------
def test_file_and_env_references_resolve(make_project, user_config, tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", {"token.txt": "  s3cr3t\n"})
    absolute = tmp_path / "abs.txt"
    absolute.write_text("absolute-value\n")
    monkeypatch.setenv("MXCP_TEST_KEY", "from-env")
    user_config(
        f"""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - name: api
                    parameters:
                      token: "file://token.txt"
                      absolute: "file://{absolute}"
                      key: "env://MXCP_TEST_KEY"
                      url: "https://example.com/keep-as-is"
        """
    )
    assert open_project(root).context.secret("api") == {
        "token": "s3cr3t",
        "absolute": "absolute-value",
        "key": "from-env",
        "url": "https://example.com/keep-as-is",
    }


def test_unresolvable_reference_names_the_secret(make_project, user_config, tmp_path):
    path = user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - name: vaulted
                    parameters: {password: "vault://secret/db#password"}
        """
    )
    error = error_of(make_project(tmp_path / "p"))
    assert error.file == str(path)
    assert "secret 'vaulted'" in error.message and "vault://" in error.message
    assert error.key_path == "projects.demo.profiles.default.secrets[0].parameters.password"


def test_missing_reference_file_is_an_error_without_content(make_project, user_config, tmp_path):
    user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {name: s, parameters: {v: "file://missing.txt"}}
        """
    )
    error = error_of(make_project(tmp_path / "p"))
    assert "missing.txt" in error.message and error.line == 7


def test_duplicate_secret_names_are_an_error(make_project, user_config, tmp_path):
    user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {name: s, parameters: {}}
                  - {name: s, parameters: {}}
        """
    )
    error = error_of(make_project(tmp_path / "p"))
    assert (error.line, error.key_path) == (8, "projects.demo.profiles.default.secrets[1].name")
    assert error.message == "secret 's' is defined twice"


def test_failing_provider_error_gets_file_line_and_key_path(make_project, user_config, tmp_path):
    path = user_config(
        """\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {name: s, parameters: {v: "env://MXCP_TEST_UNSET_VAR"}}
        """
    )
    error = error_of(make_project(tmp_path / "p"))
    assert (error.file, error.line) == (str(path), 7)
    assert error.key_path == "projects.demo.profiles.default.secrets[0].parameters.v"
    assert "secret 's'" in error.message and "MXCP_TEST_UNSET_VAR" in error.message
