"""Every builtin plugin can be switched off: only its own feature goes, and a project using it is told which plugin.

Each builtin is disabled in turn, and the bootstrap project and the example projects are opened, validated and
tested in-process. Either everything still passes, or every problem names the disabled plugin (a test may fail
only when its endpoint's problem names it). The facts the core keeps about the builtins (mxcp_core.features) are
checked against the real plugins here too, so those messages cannot go stale.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from mxcp_core import ConfigError, MxcpError, Phase, Runtime, SecretLoad, open_project, run_tests, validate_project
from mxcp_core import features
from mxcp_core.plugin_manager import load_plugins
from mxcp_core.testing import build_project

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BUILTINS = sorted(ep.name for ep in metadata.entry_points(group="mxcp") if ep.value.startswith("mxcp_plugins."))

# A project using the features no example does: policies, sql_tools, audit, drift, extensions, seed SQL.
ALL_FEATURES = {
    "mxcp-site.yml": """\
        mxcp: 1
        project: features
        profile: default
        extensions: [json]
        sql_tools: {enabled: true}
        profiles:
          default:
            audit: {enabled: true}
            drift: {path: drift/snapshot.json}
        """,
    "tools/guarded.yml": """\
        mxcp: 1
        tool:
          name: guarded
          return: {type: integer}
          source: {code: "SELECT 1"}
          policies:
            input: [{condition: "false", action: deny, reason: never}]
        """,
    "tools/recent.yml": """\
        mxcp: 1
        tool:
          name: recent
          return: {type: boolean}
          source: {code: "SELECT datetime('now', '-1 hour') < now()::TIMESTAMP"}
          tests: [{name: an_hour_ago_is_earlier, result: true}]
        """,
}

PROJECTS = {
    "all-features": {"env": {}},
    "bootstrap": {"env": {}},
    "seed-patterns": {"env": {"SEED_API_KEY": "demo-key-12345"}},
    "original-style": {"env": {"WEATHER_API_KEY": "demo-weather-key"}},
}

# Where a builtin's feature is used, so switching it off must produce its name (the check is not vacuous).
USED_BY = {
    "endpoint_discovery": {"all-features", "bootstrap", "seed-patterns", "original-style"},
    "executor_sql": {"all-features", "bootstrap", "original-style"},
    "executor_python": {"seed-patterns", "original-style"},
    "udf_plugins": {"original-style"},
    "secrets_file": {"seed-patterns"},
    "policies": {"all-features"},
    "seed_compat": {"all-features"},
    "sql_tools": {"all-features"},
    "audit": {"all-features"},
    "drift": {"all-features"},
    "duckdb_setup": {"all-features"},
}


@pytest.fixture(scope="module")
def project_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("deletable")
    copies = {}
    for name in PROJECTS:
        if name == "all-features":
            copies[name] = build_project(base / name, ALL_FEATURES)
        elif name == "bootstrap":
            done = subprocess.run([sys.executable, "-c", "from mxcp_core.cli import main; main()", "init",
                                   "--bootstrap", str(base / name)], capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            copies[name] = base / name
        else:
            copies[name] = build_project(base / name, EXAMPLES / name)
    return copies


def outcome(root: Path, disabled: str) -> list[str]:
    """Every problem of opening, validating and testing the project with one plugin disabled."""
    try:
        project = open_project(root, disabled_plugins=[disabled])
    except MxcpError as exc:
        return [str(exc)]
    problems = [p for p in validate_project(project) if p.severity == "error"]
    messages = [p.format() for p in problems]
    explained = {p.endpoint for p in problems if f"plugin '{disabled}'" in p.message}
    with Runtime(project, skip_invalid=True) as runtime:
        for test in run_tests(runtime):
            if not test.passed and test.endpoint not in explained:
                messages.append(f"test {test.endpoint}/{test.name}: {test.message}")
    return messages


@pytest.mark.parametrize("plugin", BUILTINS)
@pytest.mark.parametrize("project_name", sorted(PROJECTS))
def test_disabling_a_builtin_removes_only_its_feature(plugin, project_name, project_copies, monkeypatch, tmp_path):
    root = project_copies[project_name]
    monkeypatch.setenv("HOME", str(tmp_path))
    for key, value in PROJECTS[project_name]["env"].items():
        monkeypatch.setenv(key, value)
    if (root / "config.yml").exists():
        monkeypatch.setenv("MXCP_CONFIG", str(root / "config.yml"))
    messages = outcome(root, plugin)
    unexplained = [m for m in messages if f"plugin '{plugin}'" not in m]
    assert unexplained == [], f"with {plugin} disabled, problems that do not name it"
    if project_name in USED_BY.get(plugin, ()):
        assert messages, f"{project_name} uses {plugin}'s feature, yet disabling it changed nothing"


def test_every_builtin_is_covered():
    assert len(BUILTINS) >= 14 and "core" not in BUILTINS


def test_a_disabled_builtins_command_names_the_plugin(run_mxcp, project_copies):
    done = run_mxcp("--disable-plugin", "drift", "drift-check", cwd=project_copies["bootstrap"])
    assert done.returncode == 2
    assert "command 'drift-check' is provided by plugin 'drift', which is disabled" in done.stderr


# -- the core's facts about the builtins match the builtins ------------------------------------------------
@pytest.fixture(scope="module")
def host():
    return load_plugins(entry_points=[ep for ep in metadata.entry_points(group="mxcp") if ep.name in BUILTINS])


def test_original_sections_are_declared_by_the_plugin_named(host):
    declared = host.hooks.config_sections()
    for section in features.ORIGINAL_SECTIONS:
        if section.plugin is not None:
            assert declared[(section.scope, section.name)][0] == section.plugin, section
        else:
            assert (section.scope, section.name) not in declared, f"{section.name} is implemented now: say which plugin"


def test_languages_schemes_keys_commands_and_functions_belong_to_the_plugins_named(host, make_project, tmp_path):
    import typer

    for language, plugin in features.LANGUAGE_PLUGINS.items():
        executors = host.pm.subset_hook_caller(
            "provide_executor", remove_plugins=[p for n, p in host.pm.list_name_plugin() if n != plugin and p])
        assert language in {e.language for found in executors(project=None) for e in found}, plugin
    context = open_project(make_project(tmp_path / "p")).context
    for scheme, plugin in features.SCHEME_PLUGINS.items():
        resolve = host.pm.subset_hook_caller(
            "resolve_secret", remove_plugins=[p for n, p in host.pm.list_name_plugin() if n != plugin and p])
        try:
            assert resolve(reference=f"{scheme}://x/y/z", project=context, load=SecretLoad()) is not None
        except ConfigError:
            pass  # owned, and not resolvable here: either way the scheme is this plugin's
        assert resolve(reference="other-scheme://x", project=context, load=SecretLoad()) is None
    for key, plugin in features.ENDPOINT_KEY_PLUGINS.items():
        assert host.hooks.config_sections()[("endpoint", key)][0] == plugin
    for provider, plugin in features.SIGN_IN_PROVIDER_PLUGINS.items():
        assert provider in {p.name for p in host.plugin(plugin).sign_in_providers(project=context)}, plugin
    for command, plugin in features.COMMAND_PLUGINS.items():
        cli = typer.Typer()
        host.plugin(plugin).register_commands(cli=cli)
        assert command in {info.name for info in cli.registered_commands}
    with Runtime(open_project(tmp_path / "p"), phase=Phase.DATABASE) as runtime, runtime.cursor() as cursor:
        for function, plugin in features.FUNCTION_PLUGINS.items():
            found = cursor.execute(
                "SELECT count(*) FROM duckdb_functions() WHERE function_name = $name", {"name": function}).fetchone()
            assert found == (1,), (function, plugin)
    for folder, plugin in features.FOLDER_PLUGINS.items():
        assert host.plugin(plugin) is not None, (folder, plugin)
