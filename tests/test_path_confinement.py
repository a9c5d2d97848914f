"""Paths the project names stay inside the project folder unless mxcp-site.yml's `allowed_paths:` allows them.

Covered: endpoint `source.file` (`../`, a leading `/`, symlinks out), endpoint files and folders linking out,
`file://` references (confined when they come from the project, free in the user's own config), and UDF plugin
modules (a plugins/ file linking out, `paths.plugins` outside). Each refusal names the file, the reference and
the `allowed_paths:` key; nothing outside is ever read.
"""
from __future__ import annotations

import json

import pytest

from mxcp_core.errors import ConfigError
from mxcp_core.execution import Runtime
from mxcp_core.project import confined_path, open_project

MARKER = "OUTSIDE-MARKER-7f3a"


def sql_tool(name: str, source: str) -> str:
    return f"mxcp: 1\ntool:\n  name: {name}\n  return: {{type: string}}\n  source: {{file: {source}}}\n"


def site(extra: str = "") -> str:
    return "mxcp: 1\nproject: demo\nprofile: default\n" + extra


@pytest.fixture
def outside(tmp_path):
    """A folder next to the project holding a SQL file, an endpoint file and a secret."""
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "hello.sql").write_text(f"SELECT '{MARKER}'", encoding="utf-8")
    (folder / "ep.yml").write_text(sql_tool("linked_ep", "../sql/ok.sql"), encoding="utf-8")
    (folder / "token.txt").write_text(f"{MARKER}\n", encoding="utf-8")
    return folder


def invalid_by_origin(root) -> dict[str, str]:
    return {item.origin: item.message for item in open_project(root).endpoints().invalid}


def validate_json(run_mxcp, root) -> dict:
    done = run_mxcp("validate", "--json-output", cwd=root)
    assert MARKER not in done.stdout + done.stderr  # nothing outside was read into any message
    return json.loads(done.stdout)


# -- endpoint sources ---------------------------------------------------------------------------------
def test_dotdot_source_is_refused_naming_file_line_and_the_key(make_project, tmp_path, outside, run_mxcp):
    root = make_project(tmp_path / "p", {
        "tools/escape.yml": sql_tool("escape", "../../shared/hello.sql"),
        "tools/passwd.yml": sql_tool("passwd", "../../../../../../../../etc/passwd"),
        "tools/fine.yml": sql_tool("fine", "../sql/ok.sql"),
        "sql/ok.sql": "SELECT 'ok'",
    })
    payload = validate_json(run_mxcp, root)
    problems = {p["file"]: p["message"] for p in payload["result"]["problems"]}
    assert set(problems) == {"tools/escape.yml", "tools/passwd.yml"}
    escape = problems["tools/escape.yml"]
    assert "line 5" in escape and "tool.source.file" in escape
    assert "source file '../../shared/hello.sql' is outside the project folder" in escape
    assert f"it resolves to {outside / 'hello.sql'}" in escape
    assert "allowed_paths:" in escape and "mxcp-site.yml" in escape
    assert "'../../../../../../../../etc/passwd' is outside the project folder" in problems["tools/passwd.yml"]


def test_leading_slash_means_the_project_root_never_the_filesystem_root(make_project, tmp_path, outside):
    root = make_project(tmp_path / "p", {
        "tools/rooted.yml": sql_tool("rooted", "/etc/passwd"),
        "tools/climb.yml": sql_tool("climb", "/../shared/hello.sql"),
        "tools/inside.yml": sql_tool("inside", "/sql/ok.sql"),
        "sql/ok.sql": "SELECT 'ok'",
    })
    invalid = invalid_by_origin(root)
    assert "source file '/etc/passwd' does not exist" in invalid["tools/rooted.yml"]  # <root>/etc/passwd
    assert "source file '/../shared/hello.sql' is outside the project folder" in invalid["tools/climb.yml"]
    assert "tools/inside.yml" not in invalid
    with Runtime(open_project(root), skip_invalid=True) as runtime:
        assert runtime.call("tool", "inside", {}) == "ok"


def test_source_symlinked_out_of_the_project_is_refused(make_project, tmp_path, outside):
    root = make_project(tmp_path / "p", {"tools/linked.yml": sql_tool("linked", "../sql/linked.sql")})
    (root / "sql").mkdir()
    (root / "sql" / "linked.sql").symlink_to(outside / "hello.sql")
    message = invalid_by_origin(root)["tools/linked.yml"]
    assert "source file '../sql/linked.sql' is outside the project folder" in message
    assert f"it resolves to {outside / 'hello.sql'}" in message


def test_symlink_inside_the_project_is_fine(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"tools/alias.yml": sql_tool("alias", "../sql/alias.sql"),
                                         "sql/real.sql": "SELECT 'real'"})
    (root / "sql" / "alias.sql").symlink_to(root / "sql" / "real.sql")
    with Runtime(open_project(root)) as runtime:
        assert runtime.call("tool", "alias", {}) == "real"


def test_endpoint_file_and_folder_linking_out_are_refused(make_project, tmp_path, outside):
    root = make_project(tmp_path / "p", {"sql/ok.sql": "SELECT 'ok'", "tools/good.yml": sql_tool("good", "../sql/ok.sql")})
    (root / "tools" / "linked.yml").symlink_to(outside / "ep.yml")
    invalid = invalid_by_origin(root)
    assert "endpoint file 'tools/linked.yml' is outside the project folder" in invalid["tools/linked.yml"]
    assert "tools/good.yml" not in invalid

    other = make_project(tmp_path / "q", {"mxcp-site.yml": site("paths: {tools: ../shared}\n")})
    message = invalid_by_origin(other)["../shared/"]
    assert "mxcp-site.yml: paths.tools: the tools folder '../shared' is outside the project folder" in message


def test_allowed_paths_allows_a_folder_relative_or_absolute(make_project, tmp_path, outside, run_mxcp):
    tool = sql_tool("shared_hello", "../../shared/hello.sql")
    relative = make_project(tmp_path / "p", {"mxcp-site.yml": site("allowed_paths: [../shared]\n"),
                                             "tools/hello.yml": tool})
    done = run_mxcp("run", "tool", "shared_hello", "--json-output", cwd=relative)
    assert json.loads(done.stdout) == {"status": "ok", "result": MARKER}, done.stderr

    absolute = make_project(tmp_path / "q", {"mxcp-site.yml": site(f"allowed_paths: ['{outside}']\n"),
                                             "tools/hello.yml": tool})
    assert invalid_by_origin(absolute) == {}
    # Allowing one folder allows nothing beside it.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.sql").write_text("SELECT 1", encoding="utf-8")
    beside = make_project(tmp_path / "r", {"mxcp-site.yml": site("allowed_paths: [../shared]\n"),
                                           "tools/x.yml": sql_tool("x", "../../elsewhere/x.sql")})
    assert "is outside the project folder" in invalid_by_origin(beside)["tools/x.yml"]


def test_allowed_paths_must_be_a_list_of_strings(make_project, tmp_path):
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site("allowed_paths: 3\n")})
    with pytest.raises(ConfigError) as info:
        open_project(root)
    assert info.value.key_path and info.value.key_path.startswith("allowed_paths")


def test_confined_path_helper(make_project, tmp_path, outside):
    root = make_project(tmp_path / "p", {"data/a.txt": "a"})
    context = open_project(root).context
    assert confined_path(context, "data/a.txt", what="thing") == (root / "data" / "a.txt").resolve()
    with pytest.raises(ConfigError) as info:
        confined_path(context, "../shared/token.txt", what="thing", file="x.yml", line=3, key_path="k")
    assert (info.value.file, info.value.line, info.value.key_path) == ("x.yml", 3, "k")
    assert "thing '../shared/token.txt' is outside the project folder" in info.value.message


# -- file:// references -------------------------------------------------------------------------------
def test_file_reference_from_the_project_is_confined(make_project, tmp_path, outside):
    """Any resolution not done for the user's own config (a plugin resolving its site section) is confined."""
    root = make_project(tmp_path / "p", {"inside.txt": "inside-value\n"})
    project = open_project(root)
    resolve = project.hooks.resolve_secret
    assert resolve(reference="file://inside.txt", project=project.context).value == "inside-value"
    for reference in ("file://../shared/token.txt", f"file://{outside / 'token.txt'}"):
        with pytest.raises(ConfigError) as info:
            resolve(reference=reference, project=project.context)
        assert "file:// reference" in info.value.message and "outside the project folder" in info.value.message
        assert "allowed_paths:" in info.value.message and MARKER not in info.value.message
    (root / "link.txt").symlink_to(outside / "token.txt")
    with pytest.raises(ConfigError, match="outside the project folder"):
        resolve(reference="file://link.txt", project=project.context)

    allowed = open_project(make_project(tmp_path / "q", {"mxcp-site.yml": site("allowed_paths: [../shared]\n")}))
    found = allowed.hooks.resolve_secret(reference="file://../shared/token.txt", project=allowed.context)
    assert found.value == MARKER


def test_file_reference_in_site_file_is_never_read(make_project, tmp_path, outside):
    """mxcp-site.yml interpolates ${VAR} only: a file:// string there stays the string, the file unread."""
    root = make_project(tmp_path / "p", {"mxcp-site.yml": site("description: 'file://../shared/token.txt'\n")})
    assert open_project(root).context.site.description == "file://../shared/token.txt"


def test_file_reference_in_the_user_config_may_point_anywhere(make_project, user_config, tmp_path, outside):
    """The user config is the user's own file: its paths are the user's choice (relative: from the project)."""
    user_config(f"""\
        mxcp: 1
        projects:
          demo:
            profiles:
              default:
                secrets:
                  - {{name: s, parameters: {{relative: "file://../shared/token.txt", absolute: "file://{outside}/token.txt"}}}}
        """)
    root = make_project(tmp_path / "p")
    assert open_project(root).context.secret("s") == {"relative": MARKER, "absolute": MARKER}


# -- UDF plugin modules -------------------------------------------------------------------------------
SEED_PLUGIN = "def register_functions(conn):\n    conn.create_function('shout', lambda s: s.upper(), ['VARCHAR'], 'VARCHAR')\n"


def test_plugin_module_linking_out_is_refused_before_import(make_project, tmp_path, outside):
    (outside / "evil.py").write_text("raise SystemExit('imported!')\n" + SEED_PLUGIN, encoding="utf-8")
    root = make_project(tmp_path / "p", {"tools/q.yml": "mxcp: 1\ntool:\n  name: q\n  source: {code: 'SELECT 1'}\n"})
    (root / "plugins").mkdir()
    (root / "plugins" / "evil.py").symlink_to(outside / "evil.py")
    runtime = Runtime(open_project(root))
    with pytest.raises(ConfigError) as info:
        runtime.start()
    assert info.value.file == "plugins/evil.py"
    assert "plugin module" in info.value.message and "outside the project folder" in info.value.message


def test_plugins_folder_outside_needs_allowed_paths(make_project, tmp_path, outside):
    (outside / "loud.py").write_text(SEED_PLUGIN, encoding="utf-8")
    tool = "mxcp: 1\ntool:\n  name: q\n  return: {type: string}\n  source: {code: \"SELECT shout('hi')\"}\n"
    refused = make_project(tmp_path / "p", {"mxcp-site.yml": site("paths: {plugins: ../shared}\n"), "tools/q.yml": tool})
    with pytest.raises(ConfigError) as info:
        Runtime(open_project(refused)).start()
    assert (info.value.file, info.value.key_path) == ("mxcp-site.yml", "paths.plugins")
    assert "the plugins folder '../shared' is outside the project folder" in info.value.message

    allowed = make_project(tmp_path / "q", {
        "mxcp-site.yml": site("paths: {plugins: ../shared}\nallowed_paths: [../shared]\n"), "tools/q.yml": tool})
    with Runtime(open_project(allowed)) as runtime:
        assert runtime.call("tool", "q", {}) == "HI"
