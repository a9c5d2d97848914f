"""Files that could hang or crash a command: YAML alias bombs, FIFOs and devices, binary content.

Each is one clear error naming the file (and the line where YAML has one); `mxcp validate` and `mxcp list` go on
with the other files. Commands that could hang run in a subprocess with a timeout, so a regression fails the
test instead of stalling the suite.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from mxcp_core.errors import ConfigError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_core.yamlfile import MAX_ALIAS_EXPANSION, load_yaml_file

GOOD_TOOL = "mxcp: 1\ntool:\n  name: good\n  return: {type: integer}\n  source: {code: 'SELECT 1'}\n"


def alias_bomb(indent: str = "  ", levels: int = 9, width: int = 9) -> str:
    """"Billion laughs" as YAML list items: each level lists the previous one `width` times (9**9 nodes)."""
    lines = [f"{indent}- &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"{indent}- &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


# A bomb in a key that is used (tags are turned into strings): without the limit, `mxcp list` never ends.
BOMB_TOOL = "mxcp: 1\ntool:\n  name: bomb\n  source: {code: 'SELECT 1'}\n  tags:\n" + alias_bomb("    ")


def user_config_with_secret(value: str) -> str:
    return ("mxcp: 1\nprojects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
            f"          - {{name: s, parameters: {{v: \"{value}\"}}}}\n")


def json_of(done) -> dict:
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


# -- YAML alias bombs ---------------------------------------------------------------------------------
def test_alias_bomb_endpoint_is_one_fast_error_and_list_shows_the_rest(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {"tools/good.yml": GOOD_TOOL, "tools/bomb.yml": BOMB_TOOL})
    started = time.monotonic()
    listed = json_of(run_mxcp("list", "--json-output", cwd=root, timeout=60))
    assert time.monotonic() - started < 30  # generous: it took > 40 s before, well under 1 s now
    result = listed.get("result", listed)
    assert [e["name"] for e in result["endpoints"] if e["origin"].startswith("tools/")] == ["good"]
    [bomb] = [i for i in result["invalid"] if i["origin"] == "tools/bomb.yml"]
    # Line 11 holds the first alias that pushes the expansion past the limit (9 + 90 + ... nodes before it).
    assert bomb["error"].startswith(f"line 11: invalid YAML: aliases expand to more than {MAX_ALIAS_EXPANSION} nodes")


def test_alias_bomb_in_site_file_names_it_and_the_line(make_project, tmp_path, run_mxcp):
    # An unknown key, but the whole file is interpolated first: without the limit this never ends either.
    root = make_project(tmp_path / "p", {"mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\nx:\n" + alias_bomb()})
    done = run_mxcp("validate", cwd=root, timeout=60)
    assert done.returncode == 1
    assert "mxcp-site.yml:10: invalid YAML: aliases expand to more than" in done.stderr
    assert "Traceback" not in done.stderr


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path):
    path = tmp_path / "a.yml"
    path.write_text("base: &base {a: 1, b: [1, 2]}\nx: {<<: *base, c: 3}\ny: *base\n", encoding="utf-8")
    assert load_yaml_file(path) == {"base": {"a": 1, "b": [1, 2]}, "x": {"a": 1, "b": [1, 2], "c": 3},
                                    "y": {"a": 1, "b": [1, 2]}}


def test_recursive_alias_and_deep_nesting_are_clear_errors(tmp_path):
    recursive = tmp_path / "r.yml"
    recursive.write_text("a: 1\nb: &loop [1, *loop]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_yaml_file(recursive)
    assert (info.value.file, info.value.line) == (str(recursive), 2)
    assert "recursive alias" in info.value.message
    deep = tmp_path / "d.yml"
    deep.write_text("[" * 50_000, encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml_file(deep)


# -- FIFOs, devices, folders ---------------------------------------------------------------------------
def test_fifo_secret_file_is_refused_without_hanging(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {"tools/good.yml": GOOD_TOOL})
    os.mkfifo(root / "pipe.txt")
    config = tmp_path / "config.yml"
    config.write_text(user_config_with_secret("file://pipe.txt"), encoding="utf-8")
    done = run_mxcp("validate", cwd=root, env={"MXCP_CONFIG": str(config)}, timeout=30)  # a hang fails here
    assert done.returncode == 1
    assert f"file:// reference {root / 'pipe.txt'}: not a regular file (a named pipe (FIFO))" in done.stderr
    assert f"{config}:7" in done.stderr and "Traceback" not in done.stderr


def test_device_reference_in_the_user_config_is_refused(make_project, user_config, tmp_path):
    """The user config may point anywhere, but only at a regular file: /dev/zero would never end."""
    user_config(user_config_with_secret("file:///dev/zero"))
    with pytest.raises(ConfigError) as info:
        open_project(make_project(tmp_path / "p"))
    assert "file:// reference /dev/zero: not a regular file (a character device)" in info.value.message


def test_fifo_and_folder_endpoint_files_and_fifo_source(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {
        "tools/good.yml": GOOD_TOOL,
        "tools/piped_source.yml": "mxcp: 1\ntool:\n  name: piped\n  source: {file: ../sql/pipe.sql}\n",
    })
    os.mkfifo(root / "tools" / "pipe.yml")
    (root / "tools" / "folder.yml").mkdir()
    (root / "sql").mkdir()
    os.mkfifo(root / "sql" / "pipe.sql")
    payload = json_of(run_mxcp("validate", "--json-output", cwd=root, timeout=30))
    problems = {p["file"]: p["message"] for p in payload["result"]["problems"]}
    assert "not a regular file (a named pipe (FIFO))" in problems["tools/pipe.yml"]
    assert "not a regular file (a folder)" in problems["tools/folder.yml"]
    assert "source file '../sql/pipe.sql': not a regular file (a named pipe (FIFO))" in problems["tools/piped_source.yml"]
    assert "tools/good.yml" not in problems


# -- binary content -----------------------------------------------------------------------------------
def test_binary_yml_among_good_endpoints_is_one_error_and_the_others_validate(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p", {
        "tools/good.yml": GOOD_TOOL,
        "tools/also_good.yml": GOOD_TOOL.replace("good", "also_good"),
        "tools/bad_sql.yml": "mxcp: 1\ntool:\n  name: bad_sql\n  source: {code: 'SELECT $nope'}\n",
    })
    (root / "tools" / "binary.yml").write_bytes(b"mxcp: 1\n\x89PNG\r\n\x1a\n\x00\x00")
    done = run_mxcp("validate", "--json-output", cwd=root, timeout=60)
    payload = json_of(done)
    problems = {p["file"]: p["message"] for p in payload["result"]["problems"]}
    assert problems["tools/binary.yml"] == "not UTF-8 text (byte 0x89 at offset 8)"
    assert "$nope" in problems["tools/bad_sql.yml"]  # validation went on past the binary file
    assert set(problems) == {"tools/binary.yml", "tools/bad_sql.yml"}
    human = run_mxcp("validate", cwd=root, timeout=60)
    assert "tools/binary.yml: not UTF-8 text (byte 0x89 at offset 8)" in human.stdout + human.stderr


def test_binary_source_file_is_an_error_of_its_endpoint(make_project, tmp_path):
    root = make_project(tmp_path / "p", {
        "tools/good.yml": GOOD_TOOL,
        "tools/bin.yml": "mxcp: 1\ntool:\n  name: bin\n  source: {file: ../sql/bin.sql}\n",
    })
    (root / "sql").mkdir()
    (root / "sql" / "bin.sql").write_bytes(b"SELECT '\xe9t\xe9'")  # latin-1, not UTF-8
    [bad] = open_project(root).endpoints().invalid
    assert bad.origin == "tools/bin.yml"
    assert bad.message == "line 4: tool.source.file: source file '../sql/bin.sql': not UTF-8 text (byte 0xe9 at offset 8)"
    with Runtime(open_project(root), skip_invalid=True) as runtime:
        assert runtime.call("tool", "good", {}) == 1


def test_binary_secret_file_is_a_clear_error_without_its_content(make_project, user_config, tmp_path):
    root = make_project(tmp_path / "p")
    (root / "secret.bin").write_bytes(b"s3cr3t-prefix\xff\xfe")
    path = user_config(user_config_with_secret("file://secret.bin"))
    with pytest.raises(ConfigError) as info:
        open_project(root)
    assert (info.value.file, info.value.line) == (str(path), 7)
    assert f"file:// reference {root / 'secret.bin'}: not UTF-8 text (byte 0xff at offset 13)" in info.value.message
    assert "s3cr3t" not in str(info.value)


def test_binary_site_file_is_one_error_naming_it(make_project, tmp_path, run_mxcp):
    root = make_project(tmp_path / "p")
    (root / "mxcp-site.yml").write_bytes(b"mxcp: 1\nproject: \xc3\x28\n")
    done = run_mxcp("list", cwd=root, timeout=30)
    assert done.returncode == 1
    assert f"{root / 'mxcp-site.yml'}: not UTF-8 text (byte 0xc3 at offset 17)" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_null_device_reads_as_an_empty_user_config(make_project, tmp_path, monkeypatch):
    monkeypatch.setenv("MXCP_CONFIG", os.devnull)
    root = make_project(tmp_path / "p", {})
    assert open_project(root).context.name == "demo"
