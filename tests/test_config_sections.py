"""Plugins own their configuration: `config_sections` declares a section, the core structures and checks it."""
from __future__ import annotations

import logging

import attrs
import pytest

from mxcp_core import ConfigError, ConfigSection, hookimpl, open_project
from mxcp_core.execution import Runtime


@attrs.define
class CacheSettings:
    ttl_seconds: int = 60
    folders: list[str] = attrs.Factory(list)


@attrs.define
class Budget:
    calls_per_minute: int = 10


@attrs.define
class Owner:
    team: str = "data"


class CachePlugin:
    """Declares a section in every scope."""

    @hookimpl
    def config_sections(self):
        return [
            ConfigSection("cache", CacheSettings),
            ConfigSection("budget", Budget, scope="site_profile"),
            ConfigSection("cache_server", CacheSettings, scope="user"),
            ConfigSection("owner", Owner, scope="user_profile"),
            ConfigSection("cache", CacheSettings, scope="endpoint"),
        ]


SITE = """\
mxcp: 1
project: demo
profile: default
cache:
  ttl_seconds: 5
  folders: [a, b]
profiles:
  default:
    budget: {calls_per_minute: 99}
  other:
    budget: {calls_per_minute: "${NOT_SET_ANYWHERE}"}
"""
USER = """\
mxcp: 1
cache_server: {ttl_seconds: 7}
projects:
  demo:
    profiles:
      default:
        owner: {team: finance}
"""


def opened(root, **options):
    return open_project(root, extra_plugins=[("cache", CachePlugin())], **options)


def test_sections_in_every_scope_are_structured_into_the_plugins_classes(make_project, user_config, tmp_path):
    user_config(USER)
    context = opened(make_project(tmp_path / "p", {"mxcp-site.yml": SITE})).context
    assert context.plugin_config("cache") == CacheSettings(ttl_seconds=5, folders=["a", "b"])
    assert context.plugin_config("budget", scope="site_profile") == Budget(99)  # the active profile's, only
    assert context.plugin_config("cache_server", scope="user") == CacheSettings(ttl_seconds=7)
    assert context.plugin_config("owner", scope="user_profile") == Owner("finance")


def test_absent_sections_give_the_defaults(make_project, tmp_path):
    context = opened(make_project(tmp_path / "p")).context
    assert context.plugin_config("cache") == CacheSettings()
    assert context.plugin_config("owner", scope="user_profile") == Owner()
    with pytest.raises(Exception, match="no loaded plugin declares the site section 'nope'"):
        context.plugin_config("nope")


@pytest.mark.parametrize(
    ("site_tail", "key_path", "line", "message"),
    [
        ("cache:\n  ttl_secnds: 5\n", "cache.ttl_secnds", 5, "unknown key 'ttl_secnds' (did you mean 'ttl_seconds'?)"),
        ("cache:\n  ttl_seconds: soon\n", "cache.ttl_seconds", 5, "expected an integer"),
        ("cache:\n  folders: tmp\n", "cache.folders", 5, "expected a list, got str 'tmp'"),
        ("cache: [1]\n", "cache", 4, "expected a mapping, got a list"),
        ("cahce: {}\n", "cahce", 4, "unknown key 'cahce' (did you mean 'cache'?)"),
        ("profiles:\n  default:\n    budgte: {}\n", "profiles.default.budgte", 6, "(did you mean 'budget'?)"),
    ],
)
def test_errors_name_file_line_and_key_path(make_project, tmp_path, site_tail, key_path, line, message):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n" + site_tail})
    with pytest.raises(ConfigError) as caught:
        opened(root)
    error = caught.value
    assert (error.file, error.key_path, error.line) == (str(root / "mxcp-site.yml"), key_path, line)
    assert message in error.message


def test_a_section_declared_twice_names_both_plugins(make_project, tmp_path):
    class Rival:
        @hookimpl
        def config_sections(self):
            return [ConfigSection("cache", dict)]

    with pytest.raises(ConfigError, match="section 'cache' is declared by plugin '(cache|rival)' and by plugin "
                                          "'(cache|rival)'"):
        open_project(make_project(tmp_path / "p"), extra_plugins=[("cache", CachePlugin()), ("rival", Rival())])


def test_a_plugin_cannot_take_a_core_key(make_project, tmp_path):
    class Greedy:
        @hookimpl
        def config_sections(self):
            return [ConfigSection("paths", dict)]

    with pytest.raises(ConfigError, match="plugin 'greedy' declares the site section 'paths', which belongs to the core"):
        open_project(make_project(tmp_path / "p"), extra_plugins=[("greedy", Greedy())])


def test_core_keys_have_strict_types(make_project, tmp_path):
    """`secrets: api_key` became ['a', 'p', 'i', ...] and `disable_plugins: audit` five letters."""
    for tail, key_path in [("secrets: api_key\n", "secrets"), ("disable_plugins: audit\n", "disable_plugins"),
                           ("profiles: []\n", "profiles")]:
        root = make_project(tmp_path / key_path, {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n" + tail})
        with pytest.raises(ConfigError) as caught:
            open_project(root)
        assert caught.value.key_path == key_path and caught.value.line == 4
        assert "expected a" in caught.value.message


# -- sections of the original format --------------------------------------------------------------------
def test_a_section_whose_builtin_is_disabled_is_refused_unless_it_configures_nothing(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\nsql_tools: {enabled: true}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site})
    with pytest.raises(ConfigError) as caught:
        open_project(root, disabled_plugins=["sql_tools"])
    assert caught.value.key_path == "sql_tools" and caught.value.line == 4
    assert "section 'sql_tools' (the built-in SQL tools) is read by plugin 'sql_tools', which is disabled" in str(
        caught.value)
    (root / "mxcp-site.yml").write_text(site.replace("true", "false"))
    assert open_project(root, disabled_plugins=["sql_tools"]).endpoints().tools == {}


def test_sections_of_inactive_profiles_are_not_held_against_a_disabled_plugin(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: dev\nprofiles:\n  dev: {}\n  prod:\n    audit: {enabled: true}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site})
    assert open_project(root, disabled_plugins=["audit"]).context.profile == "dev"
    with pytest.raises(ConfigError, match="plugin 'audit', which is disabled"):
        open_project(root, profile="prod", disabled_plugins=["audit"])


def test_unimplemented_sections_warn_once_and_security_ones_are_refused(
        make_project, user_config, tmp_path, caplog, monkeypatch):
    from mxcp_core import features

    # Every security section of the original has a builtin now; one without stands for a future one.
    sentry = features.OriginalSection("user", "sentry", None, features._disabled, security=True,
                                      purpose="a guard of the original's")
    monkeypatch.setattr(features, "ORIGINAL_SECTIONS", (*features.ORIGINAL_SECTIONS, sentry))
    root = make_project(tmp_path / "p")
    user_config("mxcp: 1\nmodels: {default: gpt}\nlogging: {enabled: true}\nsentry: {enabled: false}\n"
                "projects:\n  demo:\n    profiles:\n      default:\n        auth: {provider: none}\n")
    with caplog.at_level(logging.WARNING):
        open_project(root)
    warned = [r.getMessage() for r in caplog.records if "not implemented in this version" in r.getMessage()]
    assert len(warned) == 2 and "section 'models'" in warned[0] and "section 'logging'" in warned[1]

    path = user_config("mxcp: 1\nsentry: {enabled: true, address: 'http://127.0.0.1:8200'}\n")
    with pytest.raises(ConfigError) as caught:
        open_project(root)
    assert (caught.value.file, caught.value.line, caught.value.key_path) == (str(path), 2, "sentry")
    assert "section 'sentry'" in caught.value.message
    assert "guards access, so it is refused rather than ignored" in caught.value.message
    # `auth` is the sign_in plugin's now: a project with it loads, and its sign-in is enforced when serving.
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                "        auth: {provider: github, github: {client_id: x}}\n")
    assert open_project(root).context.plugin_config("auth", scope="user_profile")["provider"] == "github"


# -- endpoint keys ---------------------------------------------------------------------------------------
def test_an_endpoint_key_a_plugin_declares_reaches_it_structured(make_project, tmp_path):
    tool = ("mxcp: 1\ntool:\n  name: t\n  return: {type: integer}\n  source: {code: SELECT 1}\n"
            "  cache: {ttl_seconds: 30}\n")
    root = make_project(tmp_path / "p", {"tools/t.yml": tool})
    definition = opened(root).endpoints().tools["t"]
    assert definition.extras == {"cache": CacheSettings(ttl_seconds=30)}
    (bad,) = open_project(root).endpoints().invalid  # without the plugin, an unknown key of the endpoint
    assert "unknown key 'cache'" in bad.message
    (root / "tools" / "t.yml").write_text(tool.replace("30", "soon"))
    (bad,) = opened(root).endpoints().invalid
    assert "line 6" in bad.message and "tool.cache.ttl_seconds" in bad.message and "expected an integer" in bad.message


def test_python_endpoints_see_plugin_sections_in_the_site_config(make_project, tmp_path):
    files = {
        "mxcp-site.yml": SITE,
        "tools/ttl.yml": "mxcp: 1\ntool:\n  name: ttl\n  return: {type: integer}\n  source: {file: ../python/ttl.py}\n",
        "python/ttl.py": "from mxcp.runtime import config\n\n"
                         "def ttl() -> int:\n    return config.get_setting('cache.ttl_seconds') + "
                         "config.get_setting('profiles.default.budget.calls_per_minute')\n",
    }
    with Runtime(opened(make_project(tmp_path / "p", files))) as runtime:
        assert runtime.call("tool", "ttl") == 5 + 99


def test_readme_config_section_example_runs_as_written(make_project, tmp_path):
    import types
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    code = next(block.split("```", 1)[0] for block in readme.split("```python")[1:] if "ConfigSection(" in block)
    module = types.ModuleType("readme_shout")
    exec(compile(code, "README.md", "exec"), module.__dict__)  # noqa: S102 - our own README
    tool = "mxcp: 1\ntool:\n  name: loud\n  return: {type: string}\n  source: {code: \"SELECT shout('hi')\"}\n"
    site = "mxcp: 1\nproject: demo\nprofile: default\nshout: {suffix: '!!'}\n"
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site, "tools/loud.yml": tool})
    with Runtime(open_project(root, extra_plugins=[("shout", module)])) as runtime:
        assert runtime.call("tool", "loud") == "HI!!"


# -- found in review ---------------------------------------------------------------------------------------
def test_a_type_error_never_quotes_a_resolved_secret(make_project, user_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WEATHER_KEY", "sk-live-abcdef123456")
    monkeypatch.setenv("PORT_TOKEN", "tok-0987654321")
    root = make_project(tmp_path / "p")
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n"
                "        plugin: {config: {weather: 'env://WEATHER_KEY'}}\n")
    with pytest.raises(ConfigError) as caught:
        open_project(root)
    assert "sk-live" not in str(caught.value) and "expected a mapping, got a str" in str(caught.value)
    user_config("mxcp: 1\ncache_server: {ttl_seconds: '${PORT_TOKEN}'}\n")
    with pytest.raises(ConfigError) as caught:
        opened(root)
    assert "tok-0987654321" not in str(caught.value) and caught.value.key_path == "cache_server.ttl_seconds"


def test_numeric_profile_and_project_names_keep_their_sections(make_project, user_config, tmp_path):
    site = ("mxcp: 1\nproject: 2024\nprofile: 7\nprofiles:\n  7:\n    duckdb: {path: ':memory:'}\n"
            "    budget: {calls_per_minute: 3}\n")
    user_config("mxcp: 1\nprojects:\n  2024:\n    profiles:\n      7:\n        owner: {team: numbers}\n")
    context = opened(make_project(tmp_path / "p", {"mxcp-site.yml": site})).context
    assert context.plugin_config("budget", scope="site_profile") == Budget(3)
    assert context.plugin_config("owner", scope="user_profile") == Owner("numbers")
    with pytest.raises(ConfigError, match="budgte"):
        opened(make_project(tmp_path / "q", {"mxcp-site.yml": site.replace("budget", "budgte")}))


def test_site_config_lists_every_declared_section_with_its_default(make_project, tmp_path):
    files = {
        "tools/keys.yml": "mxcp: 1\ntool:\n  name: keys\n  return: {type: array}\n  source: {file: ../python/keys.py}\n",
        "python/keys.py": "from mxcp.runtime import config\n\n"
                          "def keys() -> list:\n    site = config.site_config\n"
                          "    return [site['sql_tools'], site['cache'], site['profiles']['default']['audit']]\n",
    }
    with Runtime(opened(make_project(tmp_path / "p", files))) as runtime:
        sql_tools, cache, audit = runtime.call("tool", "keys")
    assert sql_tools["enabled"] is False and sql_tools["max_rows"] == 1000
    assert cache == {"ttl_seconds": 60, "folders": []}
    assert audit["enabled"] is False and audit["path"] is None and audit["on_failure"] == "refuse"


def test_an_empty_profile_is_empty_and_a_scalar_one_says_what_was_expected(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: dev\nprofiles:\n  dev:\n"})
    assert open_project(root).context.profile == "dev"
    (root / "mxcp-site.yml").write_text("mxcp: 1\nproject: demo\nprofile: dev\nprofiles:\n  dev: 5\n")
    with pytest.raises(ConfigError) as caught:
        open_project(root)
    assert (caught.value.key_path, caught.value.line) == ("profiles.dev", 5)
    assert caught.value.message == "expected a mapping, got int 5"


def test_disabling_a_plugin_that_does_not_exist_is_said(make_project, tmp_path, caplog):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: d\ndisable_plugins: [adit]\n"})
    with caplog.at_level(logging.WARNING):
        open_project(root)
    assert "plugin 'adit' is disabled, but no plugin has that name (did you mean 'audit'?)" in caplog.text
