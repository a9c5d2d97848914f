"""The plugin host: entry point discovery, disabling, broken plugins, strict mode, and every hook in use."""
from __future__ import annotations

import json
import time

import pluggy
import pytest
import typer
from typer.testing import CliRunner

from mxcp_core import hookimpl
from mxcp_core.cli import build_app
from mxcp_core.errors import ConfigError, PluginLoadError
from mxcp_core.execution import Runtime
from mxcp_core.plugin_manager import CorePlugin
from mxcp_core.plugin_manager import PluginHost
from mxcp_core.project import open_project
from mxcp_core.records import SecretValue

BUILTINS = {"endpoint_discovery", "executor_python", "executor_sql", "secrets_env", "secrets_file"}

GOOD_PLUGIN = """\
from mxcp_core import hookimpl

@hookimpl
def provide_executor(project):
    return []
"""

COMMAND_PLUGIN = """\
import typer
from mxcp_core import hookimpl

def hello(name: str = "world") -> None:
    \"\"\"Say hello from a plugin.\"\"\"
    typer.echo(f"hello {name} from acme")

@hookimpl
def register_commands(cli):
    cli.command("acme-hello")(hello)
"""


def loaded_host(**options) -> PluginHost:
    host = PluginHost(**options)
    host.register(CorePlugin(), "core")
    host.load_entry_points()
    return host


# -- discovery of entry points ---------------------------------------------------------------------
def test_builtins_are_ordinary_entry_points():
    host = loaded_host()
    infos = {info.name: info for info in host.plugins()}
    assert BUILTINS | {"core"} <= set(infos)
    assert infos["endpoint_discovery"].distribution == "mxcp-pluggy"
    assert infos["endpoint_discovery"].hooks == ("provide_prompt", "provide_resource", "provide_tool")
    assert infos["core"].builtin and infos["core"].distribution is None
    assert host.failures == []


def test_entry_point_of_a_test_distribution_is_found(make_dist):
    make_dist("acme-tools", {"acme_plugin": GOOD_PLUGIN}, {"acme": "acme_plugin"}, version="1.2.3")
    host = loaded_host()
    info = {i.name: i for i in host.plugins()}["acme"]
    assert (info.distribution, info.version, info.hooks) == ("acme-tools", "1.2.3", ("provide_executor",))
    assert info.builtin is False


def test_mxcp_plugins_lists_a_test_distribution(make_dist, make_project, run_mxcp, tmp_path):
    folder = make_dist("acme-tools", {"acme_plugin": GOOD_PLUGIN}, {"acme": "acme_plugin"}, version="1.2.3")
    root = make_project(tmp_path / "p")
    done = run_mxcp("plugins", "--json-output", cwd=root, pythonpath=[folder])
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    acme = [p for p in payload["result"]["plugins"] if p["name"] == "acme"]
    assert acme == [{"name": "acme", "distribution": "acme-tools", "version": "1.2.3",
                     "hooks": ["provide_executor"], "builtin": False}]
    assert payload["result"]["failed"] == []


# -- broken plugins ----------------------------------------------------------------------------------
def test_plugin_raising_on_import_is_reported_and_the_rest_work(make_dist, make_project, run_mxcp, tmp_path):
    folder = make_dist(
        "acme-broken",
        {"acme_broken": "raise RuntimeError('acme needs a licence key')\n", "acme_plugin": GOOD_PLUGIN},
        {"acme_broken": "acme_broken", "acme": "acme_plugin"},
    )
    host = loaded_host()
    [failure] = host.failures
    assert (failure.name, failure.distribution) == ("acme_broken", "acme-broken")
    assert failure.reason == "import failed: RuntimeError: acme needs a licence key"
    assert host.plugin("acme") is not None and host.plugin("endpoint_discovery") is not None

    root = make_project(tmp_path / "p", {"tools/t.yml": "mxcp: 1\ntool:\n  name: t\n  source: {code: SELECT 1}\n"})
    listed = run_mxcp("list", "--json-output", cwd=root, pythonpath=[folder])
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)["result"]["endpoints"]] == ["t"]
    assert "acme_broken" in listed.stderr and "licence key" in listed.stderr
    plugins = json.loads(run_mxcp("plugins", "--json-output", cwd=root, pythonpath=[folder]).stdout)["result"]
    assert plugins["failed"] == [{"name": "acme_broken", "distribution": "acme-broken",
                                  "reason": "import failed: RuntimeError: acme needs a licence key"}]


def test_strict_mode_makes_a_broken_plugin_fatal(make_dist, make_project, run_mxcp, tmp_path, monkeypatch):
    folder = make_dist("acme-broken", {"acme_broken": "import not_installed_module_xyz\n"},
                       {"acme_broken": "acme_broken"})
    with pytest.raises(PluginLoadError, match="plugin 'acme_broken' failed to load: import failed: "
                                              "ModuleNotFoundError"):
        loaded_host(strict=True)
    root = make_project(tmp_path / "p")
    monkeypatch.setenv("MXCP_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError):
        open_project(root)
    done = run_mxcp("list", cwd=root, pythonpath=[folder])
    assert done.returncode == 1
    assert "plugin 'acme_broken' failed to load" in done.stderr
    assert "Traceback" not in done.stderr
    monkeypatch.delenv("MXCP_STRICT_PLUGINS")
    flagged = run_mxcp("--strict-plugins", "list", "--json-output", cwd=root, pythonpath=[folder])
    assert flagged.returncode == 1
    assert "acme_broken" in json.loads(flagged.stdout)["error"]


def test_misspelled_hook_is_reported_with_a_suggestion(make_dist):
    make_dist("acme-typo", {"acme_typo": "from mxcp_core import hookimpl\n\n@hookimpl\ndef provide_tols(project):\n"
                                         "    return []\n"}, {"acme_typo": "acme_typo"})
    host = loaded_host()
    [failure] = host.failures
    assert failure.name == "acme_typo"
    assert failure.reason == "implements unknown hook(s): provide_tols (did you mean 'provide_tool'?)"
    assert host.plugin("acme_typo") is None
    host.check_pending()  # nothing half-registered is left behind


def test_check_pending_catches_a_plugin_registered_behind_the_hosts_back(make_project, tmp_path):
    class Typo:
        @hookimpl
        def on_int(self, runtime):
            pass

    host = loaded_host()
    host.pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="on_int"):
        open_project(make_project(tmp_path / "p"), host=host)


def test_hook_with_wrong_arguments_fails_registration():
    class WrongArguments:
        @hookimpl
        def provide_tool(self, project, colour):
            return []

    host = PluginHost()
    assert host.register(WrongArguments(), "wrong") is False
    assert host.failures[0].name == "wrong"
    assert "registration failed" in host.failures[0].reason and "colour" in host.failures[0].reason
    with pytest.raises(PluginLoadError, match="plugin 'wrong'"):
        PluginHost(strict=True).register(WrongArguments(), "wrong")


def test_duplicate_plugin_name_from_two_distributions(make_dist):
    make_dist("acme-one", {"acme_one": GOOD_PLUGIN}, {"acme": "acme_one"})
    make_dist("acme-two", {"acme_two": GOOD_PLUGIN}, {"acme": "acme_two"})
    host = loaded_host()
    [failure] = host.failures
    assert failure.name == "acme"
    assert "duplicate plugin name 'acme'" in failure.reason
    assert "acme-one" in failure.reason and "acme-two" in failure.reason


# -- disabling ------------------------------------------------------------------------------------------
TOOL = "mxcp: 1\ntool:\n  name: t\n  source: {code: SELECT 1}\n"


def test_disable_plugin_by_environment(make_project, tmp_path, monkeypatch, third_party_plugins):
    root = make_project(tmp_path / "p", {"tools/t.yml": TOOL})
    monkeypatch.setenv("MXCP_DISABLE_PLUGINS", ",".join([" endpoint_discovery , secrets_file", *third_party_plugins]))
    project = open_project(root)
    assert project.host.plugin("endpoint_discovery") is None and project.host.plugin("secrets_file") is None
    assert set(project.host.skipped) == {"endpoint_discovery", "secrets_file", *third_party_plugins}
    assert project.endpoints().tools == {}


def test_disable_plugin_by_site_config(make_project, tmp_path):
    site = "mxcp: 1\nproject: demo\nprofile: default\ndisable_plugins: [endpoint_discovery]\n"
    project = open_project(make_project(tmp_path / "p", {"mxcp-site.yml": site, "tools/t.yml": TOOL}))
    assert project.host.plugin("endpoint_discovery") is None
    assert project.endpoints().tools == {}


def test_disable_plugin_by_cli_flag(make_project, run_mxcp, tmp_path, third_party_plugins):
    root = make_project(tmp_path / "p", {"tools/t.yml": TOOL})
    listed = run_mxcp("--disable-plugin", "endpoint_discovery", "list", "--json-output", cwd=root)
    assert json.loads(listed.stdout)["result"]["endpoints"] == []
    shown = json.loads(run_mxcp("--disable-plugin", "executor_sql", "plugins", "--json-output", cwd=root).stdout)
    assert shown["result"]["disabled"] == sorted(["executor_sql", *third_party_plugins])
    assert "executor_sql" not in {p["name"] for p in shown["result"]["plugins"]}


def test_disabled_secret_provider_makes_its_references_unresolvable(make_project, user_config, tmp_path):
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
                "          - {name: s, parameters: {v: 'file://x.txt'}}\n")
    root = make_project(tmp_path / "p", {"x.txt": "value"})
    assert open_project(root).context.secret("s") == {"v": "value"}
    with pytest.raises(ConfigError, match="no plugin resolves references of scheme 'file://'"):
        open_project(root, disabled_plugins=["secrets_file"])


def test_the_core_plugin_cannot_be_disabled(make_project, tmp_path):
    project = open_project(make_project(tmp_path / "p", {"tools/t.yml": TOOL}), disabled_plugins=["core"])
    assert project.host.plugin("core") is not None
    with Runtime(project) as runtime:
        assert runtime.call("tool", "t") == [{"1": 1}]


# -- every hook in use -------------------------------------------------------------------------------------
class Lifecycle:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def on_init(self, runtime):
        with runtime.database.cursor() as cursor:
            cursor.execute("CREATE OR REPLACE TABLE started AS SELECT 'yes' AS flag")
        self.events.append("init")

    @hookimpl
    def on_shutdown(self, runtime):
        with runtime.database.cursor() as cursor:  # the database is still open
            self.events.append("shutdown:" + cursor.execute("SELECT flag FROM started").fetchone()[0])


class FailingShutdown:
    @hookimpl
    def on_shutdown(self, runtime):
        raise RuntimeError("cleanup broke")


def test_on_init_and_on_shutdown_run_around_the_runtime(make_project, tmp_path):
    tool = "mxcp: 1\ntool:\n  name: flag\n  return: {type: string}\n  source: {code: SELECT flag FROM started}\n"
    lifecycle = Lifecycle()
    project = open_project(
        make_project(tmp_path / "p", {"tools/flag.yml": tool}),
        extra_plugins=[("lifecycle", lifecycle), ("failing", FailingShutdown())],
    )
    runtime = Runtime(project)
    runtime.start()
    assert lifecycle.events == ["init"]
    assert runtime.call("tool", "flag") == "yes"
    runtime.stop()  # the failing on_shutdown does not stop the others
    assert lifecycle.events == ["init", "shutdown:yes"]
    assert not runtime.database.is_open


class UpperExecutor:
    """A new language: the source text, upper-cased."""

    language = "upper"
    file_suffixes = (".up",)

    def __init__(self) -> None:
        self.started = False

    def start(self, runtime):
        self.started = True

    def validate(self, endpoint, runtime):
        return [] if endpoint.source.read().strip() else ["nothing to shout"]

    def execute(self, call):
        return call.endpoint.source.read().strip().upper()

    def stop(self):
        self.started = False


class UpperPlugin:
    @hookimpl
    def provide_executor(self, project):
        return [UpperExecutor()]


def test_third_party_executor_runs_a_new_language(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/loud.yml": "mxcp: 1\ntool:\n  name: loud\n  language: upper\n  return: {type: string}\n"
                          "  source: {code: hello}\n",
        "tools/inferred.yml": "mxcp: 1\ntool:\n  name: inferred\n  source: {file: ../sql/x.up}\n",
        "sql/x.up": "from a file\n",
    })
    project = open_project(root, extra_plugins=[("upper", UpperPlugin())])
    assert project.endpoints().tools["inferred"].language == "upper"
    with Runtime(project) as runtime:
        assert runtime.call("tool", "loud") == "HELLO"
        assert runtime.call("tool", "inferred") == "FROM A FILE"


def test_aggregating_hooks_refuse_wrappers(make_project, tmp_path):
    class WrappedTools:
        @hookimpl(wrapper=True)
        def provide_tool(self, project):
            return (yield)

    project = open_project(make_project(tmp_path / "p"), extra_plugins=[("wrapped", WrappedTools())])
    with pytest.raises(ConfigError, match="plugin 'wrapped': provide_tool cannot be a wrapper"):
        project.endpoints()


def test_two_executors_for_one_language_name_both_plugins(make_project, tmp_path):
    project = open_project(make_project(tmp_path / "p"),
                           extra_plugins=[("upper", UpperPlugin()), ("upper_too", UpperPlugin())])
    with pytest.raises(ConfigError, match="two executors for language 'upper': plugin '.*' and plugin '.*'"):
        project.executors()


class Timing:
    def __init__(self) -> None:
        self.seen: list[tuple[str, object, float]] = []

    @hookimpl(wrapper=True)
    def call_endpoint(self, call):
        started = time.perf_counter()
        try:
            result = yield
        except Exception as exc:
            self.seen.append((call.endpoint.name, f"error: {exc}", time.perf_counter() - started))
            raise
        self.seen.append((call.endpoint.name, result, time.perf_counter() - started))
        return result


class Cache:
    """A plain (non-wrapper) implementation: firstresult, so its answer replaces the core's."""

    @hookimpl
    def call_endpoint(self, call):
        return "cached" if call.arguments.get("x") == 0 else None


def test_call_endpoint_wrapper_sees_every_call_and_result(make_project, tmp_path):
    tool = ("mxcp: 1\ntool:\n  name: double\n  parameters: [{name: x, type: integer}]\n  return: {type: integer}\n"
            "  source: {code: SELECT $x * 2}\n")
    timing = Timing()
    project = open_project(make_project(tmp_path / "p", {"tools/d.yml": tool}), extra_plugins=[("timing", timing)])
    with Runtime(project) as runtime:
        assert runtime.call("tool", "double", {"x": 21}) == 42
        with pytest.raises(Exception, match="(?i)out of range"):
            runtime.call("tool", "double", {"x": 2**62})
    assert [(name, result) for name, result, _ in timing.seen][0] == ("double", 42)
    assert timing.seen[1][1].startswith("error: ")
    assert all(elapsed >= 0 for _, _, elapsed in timing.seen)


def test_call_endpoint_first_result_short_circuits_the_core(make_project, tmp_path):
    tool = "mxcp: 1\ntool:\n  name: echo\n  parameters: [{name: x, type: integer}]\n  source: {code: SELECT $x AS x}\n"
    project = open_project(make_project(tmp_path / "p", {"tools/e.yml": tool}), extra_plugins=[("cache", Cache())])
    with Runtime(project) as runtime:
        assert runtime.call("tool", "echo", {"x": 0}) == "cached"
        assert runtime.call("tool", "echo", {"x": 5}) == [{"x": 5}]


class Greetings:
    @hookimpl
    def configure_database(self, conn, project):
        conn.execute("CREATE OR REPLACE TABLE greetings AS SELECT * FROM (VALUES ('hi'), ('yo')) AS t(word)")

    @hookimpl
    def register_functions(self, conn, project):
        conn.create_function("shout", lambda text: text.upper() + "!", ["VARCHAR"], "VARCHAR")


def test_configure_database_and_register_functions_are_visible_in_sql(make_project, tmp_path):
    tool = ("mxcp: 1\ntool:\n  name: loud_greetings\n  return: {type: array, items: {type: object}}\n"
            "  source: {code: SELECT shout(word) AS w FROM greetings ORDER BY word}\n")
    root = make_project(tmp_path / "p", {"tools/g.yml": tool})
    project = open_project(root, extra_plugins=[("greetings", Greetings())])
    with Runtime(project) as runtime:
        assert runtime.call("tool", "loud_greetings") == [{"w": "HI!"}, {"w": "YO!"}]


class Vault:
    def __init__(self) -> None:
        self.asked: list[str] = []

    @hookimpl
    def resolve_secret(self, reference, project):
        self.asked.append(reference)
        if reference.startswith("vault://"):
            return SecretValue(f"from-vault:{reference.split('#')[-1]}")
        return None


def test_third_party_resolve_secret_owns_its_scheme(make_project, user_config, tmp_path, monkeypatch):
    monkeypatch.setenv("MXCP_TEST_KEY", "env-value")
    user_config("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
                "          - name: db\n"
                "            parameters: {password: 'vault://secret/db#password', key: 'env://MXCP_TEST_KEY'}\n")
    vault = Vault()
    project = open_project(make_project(tmp_path / "p"), extra_plugins=[("vault", vault)])
    assert project.context.secret("db") == {"password": "from-vault:password", "key": "env-value"}
    assert sorted(vault.asked) == ["env://MXCP_TEST_KEY", "vault://secret/db#password"]


def test_register_commands_adds_a_command(make_dist, make_project, run_mxcp, tmp_path, monkeypatch):
    folder = make_dist("acme-cli", {"acme_cli": COMMAND_PLUGIN}, {"acme_cli": "acme_cli"})
    result = CliRunner().invoke(build_app(), ["acme-hello", "--name", "duck"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello duck from acme\n"

    root = make_project(tmp_path / "p")
    done = run_mxcp("acme-hello", cwd=root, pythonpath=[folder])
    assert (done.returncode, done.stdout) == (0, "hello world from acme\n")
    help_text = run_mxcp("--help", cwd=root, pythonpath=[folder]).stdout
    assert "acme-hello" in help_text
    disabled = run_mxcp("--disable-plugin", "acme_cli", "acme-hello", cwd=root, pythonpath=[folder])
    assert disabled.returncode != 0 and "No such command 'acme-hello'" in disabled.stderr
    site_disabled = make_project(tmp_path / "q", {"mxcp-site.yml": "mxcp: 1\nproject: q\nprofile: default\n"
                                                                    "disable_plugins: [acme_cli]\n"})
    done = run_mxcp("acme-hello", cwd=site_disabled, pythonpath=[folder])
    assert done.returncode != 0 and "No such command 'acme-hello'" in done.stderr


def test_register_commands_through_the_facade():
    app = typer.Typer()

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            cli.command("ping")(lambda: typer.echo("pong"))

    host = PluginHost()
    host.register(Commands(), "commands")
    from mxcp_core.hooks import Hooks

    Hooks(host.pm).register_commands(cli=app)
    assert CliRunner().invoke(app, []).output == "pong\n"


BROKEN_COMMANDS = """\
from mxcp_core import hookimpl

@hookimpl
def register_commands(cli):
    raise RuntimeError("acme cannot add its command")
"""


def test_a_plugin_whose_register_commands_raises_is_named_and_the_rest_work(make_dist, make_project, run_mxcp,
                                                                             tmp_path):
    folder = make_dist("acme-broken-cli", {"acme_broken_cli": BROKEN_COMMANDS}, {"acme_broken_cli": "acme_broken_cli"})
    root = make_project(tmp_path / "p")
    helped = run_mxcp("--help", cwd=root, pythonpath=[folder])
    assert helped.returncode == 0 and "validate" in helped.stdout and "Traceback" not in helped.stderr
    assert "plugin 'acme_broken_cli' failed to load and was skipped: register_commands failed: RuntimeError: " \
           "acme cannot add its command" in helped.stderr
    listed = json.loads(run_mxcp("plugins", "--json-output", cwd=root, pythonpath=[folder]).stdout)["result"]
    assert {"name": "acme_broken_cli", "distribution": "acme-broken-cli",
            "reason": "register_commands failed: RuntimeError: acme cannot add its command"} in listed["failed"]
    strict = run_mxcp("--strict-plugins", "list", "--json-output", cwd=root, pythonpath=[folder])
    assert strict.returncode == 1 and "acme_broken_cli" in json.loads(strict.stdout)["error"]


def test_one_host_per_invocation_and_the_core_commands_come_from_register_commands(make_project, tmp_path,
                                                                                      monkeypatch):
    from mxcp_core.cli.options import GlobalState, load

    monkeypatch.chdir(make_project(tmp_path / "p"))
    app = build_app(["list"])
    host = GlobalState.host
    assert load().host is host  # the command's project opens on the host that gave the commands
    core_commands = {"init", "list", "validate", "plugins", "run", "query", "serve", "test"}
    assert core_commands <= {info.name for info in app.registered_commands}
    host.unregister("core")
    bare = typer.Typer()
    host.hooks.register_commands(cli=bare)
    assert not core_commands & {info.name for info in bare.registered_commands}


def test_disabled_names_are_blocked_in_pluggy_itself(make_project, tmp_path):
    project = open_project(make_project(tmp_path / "p"), disabled_plugins=["audit"])
    pm = project.host.pm
    assert pm.is_blocked("audit") and not pm.has_plugin("audit")

    class Late:
        @hookimpl
        def provide_executor(self, project):
            return []

    assert project.host.register(Late(), "audit") is False  # whoever registers it later
    assert "audit" not in {info.name for info in project.host.plugins()}


def test_every_hook_call_is_visible_to_pluggy_monitoring(make_project, tmp_path):
    """The facade calls per plugin through pluggy (subset callers), so tracing sees aggregating hooks too."""
    seen: list[tuple[str, list[str]]] = []
    root = make_project(tmp_path / "p", {"tools/t.yml": TOOL})
    host = loaded_host()
    undo = host.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append((name, [impl.plugin_name for impl in impls])),
        lambda outcome, name, impls, kwargs: None,
    )
    try:
        project = open_project(root, host=host)
        with Runtime(project) as runtime:
            runtime.call("tool", "t")
        host.hooks.register_commands(cli=typer.Typer())
    finally:
        undo()
    names = {name for name, _ in seen}
    assert {"config_sections", "provide_tool", "provide_executor", "configure_database", "register_functions",
            "on_init", "call_endpoint", "on_shutdown", "register_commands"} <= names
    # Aggregating hooks run one plugin per call, so each result is attributed to its plugin.
    assert ("provide_tool", ["endpoint_discovery"]) in seen


def test_a_replacement_builtin_under_another_name_is_not_mistaken_for_a_missing_one(make_project, tmp_path,
                                                                                        monkeypatch):
    from mxcp_core import ConfigSection, ToolDefinition, parse_type

    class MyDiscovery:
        @hookimpl
        def provide_tool(self, project):
            return [ToolDefinition(name="t", origin="tools/t.yml", return_type=parse_type({"type": "integer"}),
                                   function=lambda: 1)]

    class MyAudit:
        @hookimpl
        def config_sections(self):
            return [ConfigSection("audit", dict, scope="site_profile")]

    root = make_project(tmp_path / "p", {"tools/t.yml": TOOL})
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    project = open_project(root, disabled_plugins=["endpoint_discovery", "audit"],
                           extra_plugins=[("my_discovery", MyDiscovery()), ("my_audit", MyAudit())])
    assert project.endpoints().invalid == []
    with Runtime(project) as runtime:
        assert runtime.call("tool", "t") == 1


def test_one_host_cannot_serve_two_projects_that_disable_different_plugins(make_project, tmp_path):
    first = make_project(tmp_path / "a", {"mxcp-site.yml": site_with("disable_plugins: [sql_tools]\n")})
    second = make_project(tmp_path / "b", {"mxcp-site.yml": site_with("sql_tools: {enabled: true}\n")})
    host = loaded_host()
    open_project(first, host=host)
    with pytest.raises(ConfigError, match="plugin host was loaded for a project that disables sql_tools; this one "
                                          "disables none"):
        open_project(second, host=host)


def site_with(tail: str) -> str:
    return "mxcp: 1\nproject: demo\nprofile: default\n" + tail


def test_global_options_given_to_the_app_are_honoured(make_project, tmp_path, monkeypatch):
    """Callers whose arguments are not sys.argv (CliRunner, embedding) still get --disable-plugin applied."""
    site = site_with("profiles:\n  default:\n    audit: {enabled: false}\n")
    monkeypatch.chdir(make_project(tmp_path / "p", {"mxcp-site.yml": site, "tools/t.yml": TOOL}))
    result = CliRunner().invoke(build_app([]), ["--disable-plugin", "executor_sql", "run", "tool", "t"])
    assert result.exit_code == 1
    assert "tool 't' is not served: language 'sql' is run by plugin 'executor_sql', which is disabled" in result.output
