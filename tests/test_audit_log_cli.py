"""`mxcp log`, `mxcp log verify` and `mxcp log-cleanup` on real projects: records from real calls (in-process,
`mxcp run` and `mxcp serve` over HTTP), each filter, the table, CSV and DuckDB exports read back, clear errors.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from mxcp_core.cli import build_app
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_plugins import audit
from server_helpers import http_server, run_http
from test_audit_log import body, raw_lines

SITE = """\
mxcp: 1
project: demo
profile: default
profiles:
  default:
    audit: {enabled: true, max_segment_mb: 0.0015}
"""

FILES = {
    "mxcp-site.yml": SITE,
    "tools/hello.yml": """\
        mxcp: 1
        tool:
          name: hello
          parameters: [{name: name, type: string}]
          return: {type: string}
          source: {code: "SELECT 'hi ' || $name"}
        """,
    "tools/broken.yml": """\
        mxcp: 1
        tool:
          name: broken
          return: {type: string}
          source: {code: "SELECT error('boom')"}
        """,
    "resources/settings.yml": """\
        mxcp: 1
        resource:
          uri: "config://settings"
          return: {type: object, properties: {mode: {type: string}}}
          source: {code: "SELECT 'fast' AS mode"}
        """,
    "prompts/greet.yml": """\
        mxcp: 1
        prompt:
          name: greet
          parameters: [{name: who, type: string}]
          messages:
            - {role: user, type: text, prompt: "Greet {{ who }}."}
        """,
}


@pytest.fixture
def project(make_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with real calls in its audit log (rotated over several segments), and the commands run there."""
    root = make_project(tmp_path / "proj", FILES)
    with Runtime(open_project(root)) as runtime:
        runtime.call("tool", "hello", {"name": "ann"}, user={"user_id": "ann"})
        runtime.call("tool", "hello", {"name": "bob"}, user={"user_id": "bob"})
        with pytest.raises(Exception, match="boom"):
            runtime.call("tool", "broken", {}, user={"user_id": "ann"})
        runtime.call("resource", "config://settings", {})
        runtime.call("prompt", "greet", {"who": "eve"})
    monkeypatch.chdir(root)
    return root


def active(root: Path) -> Path:
    return root / "audit" / "logs-default.jsonl"


def append(root: Path, **fields: Any) -> None:
    audit.Sink(active(root)).write(body(**fields), fsync=False)


def cli(*args: str) -> Any:
    return CliRunner().invoke(build_app(list(args)), list(args))


def listed(*args: str) -> list[dict[str, Any]]:
    result = cli("log", *args, "--json-output")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok"
    return payload["result"]


def names(found: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["operation_type"], r["operation_name"], r["operation_status"]) for r in found]


def test_log_lists_completions_newest_first_across_segments(project: Path) -> None:
    assert len(list((project / "audit").glob("logs-default.0*.jsonl"))) >= 2  # rotated: every segment is read
    assert names(listed()) == [
        ("prompt", "greet", "success"), ("resource", "config://settings", "success"),
        ("tool", "broken", "error"), ("tool", "hello", "success"), ("tool", "hello", "success"),
    ]
    # Intent records are paired with those completions, so only `--status started` lists them.
    assert names(listed("--status", "started")) == [
        ("prompt", "greet", "started"), ("resource", "config://settings", "started"),
        ("tool", "broken", "started"), ("tool", "hello", "started"), ("tool", "hello", "started"),
    ]


def test_an_intent_without_completion_is_listed_as_started(project: Path) -> None:
    append(project, operation_name="crashed", operation_status="started", call_id="c1")
    found = listed("--tool", "crashed")
    assert names(found) == [("tool", "crashed", "started")] and found[0]["call_id"] == "c1"
    append(project, operation_name="crashed", operation_status="success", call_id="c1")
    assert names(listed("--tool", "crashed")) == [("tool", "crashed", "success")]


def test_each_filter_and_their_combination(project: Path) -> None:
    assert names(listed("--tool", "hello")) == [("tool", "hello", "success")] * 2
    assert names(listed("--resource", "config://settings")) == [("resource", "config://settings", "success")]
    assert names(listed("--prompt", "greet")) == [("prompt", "greet", "success")]
    assert names(listed("--status", "error")) == [("tool", "broken", "error")]
    assert [r["user_id"] for r in listed("--user", "ann")] == ["ann", "ann"]
    assert names(listed("--user", "ann", "--status", "success")) == [("tool", "hello", "success")]
    assert listed("--tool", "hello", "--status", "error") == []
    assert [r["input_data"] for r in listed("--tool", "hello", "--limit", "1")] == [{"name": "bob"}]

    append(project, operation_name="guarded", policy_decision="deny", operation_status="error")
    append(project, operation_name="guarded", policy_decision="allow")
    append(project, operation_name="guarded", policy_decision="warn")
    assert [r["policy_decision"] for r in listed("--policy", "deny")] == ["deny"]
    assert [r["policy_decision"] for r in listed("--tool", "guarded", "--policy", "warn")] == ["warn"]


def test_since_and_until_take_durations_and_timestamps(project: Path) -> None:
    now = datetime.now(timezone.utc)
    append(project, operation_name="old", timestamp=(now - timedelta(days=3)).isoformat())
    append(project, operation_name="older", timestamp=(now - timedelta(days=5)).isoformat())
    recent = {r["operation_name"] for r in listed("--since", "1d")}
    assert "hello" in recent and not recent & {"old", "older"}
    assert [r["operation_name"] for r in listed("--until", "2d")] == ["older", "old"]
    assert [r["operation_name"] for r in listed("--since", "4d", "--until", "48h")] == ["old"]
    day = (now - timedelta(days=3)).date().isoformat()
    assert [r["operation_name"] for r in listed("--since", day, "--until", f"{day}T23:59:59.999999Z")] == ["old"]
    assert listed("--since", "10m", "--tool", "old") == []


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "--since 'yesterday' is neither a duration (30s, 10m, 2h, 1d, 1w) nor an ISO"),
    (["--until", "5y"], "--until '5y' is neither a duration"),
    (["--status", "ok"], "--status 'ok' is not one of success, error, started"),
    (["--policy", "block"], "--policy 'block' is not one of allow, deny, warn"),
    (["--tool", "a", "--prompt", "b"], "give one of --tool, --resource and --prompt"),
    (["--limit", "-1"], "--limit must be 0 (all) or more"),
])
def test_bad_values_are_one_clear_error(project: Path, args: list[str], message: str) -> None:
    result = cli("log", *args, "--json-output")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["status"] == "error" and payload["error"].startswith(message)
    plain = cli("log", *args)
    assert plain.exit_code == 1 and message in " ".join(plain.stderr.split()) and "Traceback" not in plain.output


def test_the_default_view_is_a_table(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # Rich's width when not on a terminal: no cell wraps
    result = cli("log", "--limit", "2")
    assert result.exit_code == 0
    assert "2 records, newest first" in result.stdout and "greet" in result.stdout
    assert "config://settings" in result.stdout and "hello" not in result.stdout
    assert "the newest 2 shown; --limit 0 for all" in result.stdout


def test_audit_off_or_no_log_yet_is_a_clear_message(make_project, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path / "quiet", {"tools/hello.yml": FILES["tools/hello.yml"]})
    monkeypatch.chdir(root)
    for command in (["log"], ["log", "verify"], ["log-cleanup"]):
        result = cli(*command, "--json-output")
        assert result.exit_code == 1, command
        assert json.loads(result.stdout)["error"].startswith(
            "the audit log is off for profile 'default': set profiles.default.audit.enabled: true in")
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    assert listed() == []
    plain = cli("log")
    assert plain.exit_code == 0 and "no audit records yet" in plain.stdout
    verified = cli("log", "verify", "--json-output")
    assert verified.exit_code == 0
    assert json.loads(verified.stdout)["result"]["warnings"][0]["kind"] == "missing"


def test_csv_export_of_the_filtered_records(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "calls.csv"
    result = cli("log", "--tool", "hello", "--export-csv", str(target), "--json-output")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["result"] == {"records": 2, "exported": [{"format": "csv", "path": str(target)}]}
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [json.loads(row["input_data"]) for row in rows] == [{"name": "bob"}, {"name": "ann"}]
    assert list(rows[0]) == list(audit_log_columns())
    assert rows[0]["error"] == "" and rows[0]["schema_version"] == "3" and len(rows[0]["record_hash"]) == 64
    assert json.loads(rows[0]["policies_evaluated"]) == []


def audit_log_columns() -> list[str]:
    from mxcp_plugins.audit_log import COLUMNS

    return list(COLUMNS)


def test_duckdb_export_has_typed_columns_and_json(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "audit.duckdb"
    result = cli("log", "--export-duckdb", str(target), "--limit", "0")
    assert result.exit_code == 0 and f"5 records exported to {target} (table logs)" in result.stdout
    with duckdb.connect(str(target), read_only=True) as db:
        types = dict(db.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'logs'").fetchall())
        assert (types["timestamp"], types["duration_ms"], types["schema_version"]) == (
            "TIMESTAMP WITH TIME ZONE", "DOUBLE", "INTEGER")
        assert types["input_data"] == types["output_data"] == types["policies_evaluated"] == "JSON"
        rows = db.execute("SELECT operation_name, input_data->>'name', output_data->>'mode', error "
                          "FROM logs ORDER BY timestamp").fetchall()
    assert rows == [("hello", "ann", None, None), ("hello", "bob", None, None), ("broken", None, None, rows[2][3]),
                    ("config://settings", None, "fast", None), ("greet", None, None, None)]
    assert "boom" in rows[2][3]
    # Exporting again replaces the table.
    assert cli("log", "--tool", "hello", "--export-duckdb", str(target)).exit_code == 0
    with duckdb.connect(str(target), read_only=True) as db:
        assert db.execute("SELECT count(*) FROM logs").fetchone() == (2,)


def test_verify_through_the_real_cli(project: Path, run_mxcp) -> None:
    done = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    assert result["ok"] and result["records"] == 10 and len(result["segments"]) >= 3
    text = run_mxcp("log", "verify", cwd=project)
    assert text.returncode == 0 and "✓ audit log intact:" in text.stdout and "10 records" in text.stdout

    segment = project / "audit" / "logs-default.000001.jsonl"
    lines = raw_lines(segment)
    record_id = json.loads(lines[1])["record_id"]
    lines[1] = lines[1].replace(b'"ann"', b'"mallory"', 1)
    segment.write_bytes(b"\n".join(lines) + b"\n")
    done = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert done.returncode == 1
    payload = json.loads(done.stdout)
    assert payload["status"] == "error"
    assert payload["error"] == (f"logs-default.000001.jsonl line 2 (record_id {record_id}): changed: its content "
                                "does not match its record_hash")
    text = run_mxcp("log", "verify", cwd=project)
    assert text.returncode == 1 and "NOT intact" in text.stderr and "line 2" in text.stderr


def test_a_torn_last_line_is_a_warning_in_the_cli(project: Path, run_mxcp) -> None:
    append(project, operation_name="last")
    log = active(project)
    log.write_bytes(log.read_bytes()[:-20])
    done = run_mxcp("log", "verify", cwd=project)
    assert done.returncode == 0 and "✓ audit log intact" in done.stdout
    assert "warning: logs-default.jsonl line" in done.stderr and "torn" in done.stderr
    assert listed("--tool", "last") == []  # not a record


def test_log_cleanup_dry_run_then_for_real_then_verify(project: Path, run_mxcp) -> None:
    old = (datetime.now(timezone.utc) - timedelta(days=200)).isoformat()
    # A log that starts with old records: three sealed segments of one record each, then a recent call.
    folder = project / "audit"
    for p in folder.iterdir():
        p.unlink()
    sink = audit.Sink(active(project))
    for _ in range(3):
        sink.write(body(operation_name="ancient", timestamp=old), fsync=False, max_segment_bytes=1)
    with Runtime(open_project(project)) as runtime:
        runtime.call("tool", "hello", {"name": "zed"})

    dry = run_mxcp("log-cleanup", "--dry-run", "--json-output", cwd=project)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["result"]
    assert planned["dry_run"] and planned["retention_days"] == 90 and planned["records"] == 3
    assert [s["segment"] for s in planned["segments"]] == [f"logs-default.00000{n}.jsonl" for n in (1, 2, 3)]
    assert all((folder / s["segment"]).exists() for s in planned["segments"])
    text = run_mxcp("log-cleanup", "--dry-run", cwd=project)
    assert "would remove 3 segments (3 records) older than 90 days" in text.stdout

    done = run_mxcp("log-cleanup", cwd=project)
    assert done.returncode == 0 and "removed 3 segments (3 records) older than 90 days" in done.stdout
    assert not any((folder / s["segment"]).exists() for s in planned["segments"])
    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 0, verified.stdout
    start = json.loads(verified.stdout)["result"]["verified_from"]
    assert start["anchor"] == "segments removed by log-cleanup" and start["segment"] == "logs-default.jsonl"
    assert names(listed("--limit", "1")) == [("audit", "log-cleanup", "success")]
    again = run_mxcp("log-cleanup", "--json-output", cwd=project)
    assert json.loads(again.stdout)["result"]["segments"] == []


def test_retention_comes_from_the_settings_and_is_checked(project: Path) -> None:
    site = project / "mxcp-site.yml"
    site.write_text(SITE.replace("max_segment_mb: 0.0015", "max_segment_mb: 0.0015, retention_days: 0"))
    result = cli("log-cleanup", "--json-output")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "retention_days" in error and "mxcp-site.yml" in error


def test_served_calls_show_in_mxcp_log(make_project, tmp_path: Path, run_mxcp) -> None:
    root = make_project(tmp_path / "served", FILES)

    async def calls(client: Any) -> None:
        await client.call_tool("hello", {"name": "http"})
        await client.call_tool("broken", {})

    with http_server(root) as (base, _):
        run_http(f"{base}/mcp", calls)
        done = run_mxcp("log", "--json-output", cwd=root)  # while the server holds the log open
        verified = run_mxcp("log", "verify", "--json-output", cwd=root)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)["result"]
    assert [(r["operation_name"], r["operation_status"], r["caller_type"]) for r in found] == [
        ("broken", "error", "http"), ("hello", "success", "http")]
    assert found[1]["input_data"] == {"name": "http"}
    assert verified.returncode == 0 and json.loads(verified.stdout)["result"]["records"] == 4


def test_options_before_verify_apply_to_it_and_filters_do_not(project: Path) -> None:
    (project / "mxcp-site.yml").write_text(SITE + "  quiet: {}\n")
    result = cli("log", "--profile", "quiet", "--json-output", "verify")
    assert result.exit_code == 1 and json.loads(result.stdout)["error"].startswith(
        "the audit log is off for profile 'quiet'")
    assert json.loads(cli("log", "--json-output", "verify").stdout)["result"]["ok"] is True
    refused = cli("log", "--tool", "hello", "--json-output", "verify")
    assert refused.exit_code == 1 and json.loads(refused.stdout)["error"] == "`mxcp log verify` takes no --tool"


def append_line(root: Path, line: str) -> None:
    with active(root).open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def test_a_line_with_fields_of_the_wrong_type_is_skipped_not_a_traceback(project: Path, run_mxcp) -> None:
    append_line(project, '{"call_id": [1], "operation_status": "success"}')
    done = run_mxcp("log", "--json-output", cwd=project)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["result"]) == 5
    table = run_mxcp("log", cwd=project)
    assert table.returncode == 0 and "Traceback" not in table.stderr and "5 records" in table.stdout
    verified = run_mxcp("log", "verify", cwd=project)
    assert verified.returncode == 1 and "not an audit record" in verified.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "100000000w"], "--since '100000000w' reaches before the year 1"),
    (["--expect-hash", "abc"], "--expect-hash 'abc' is not a record_hash (64 hexadecimal digits)"),
    (["--profile", "nope"], "profile 'nope' is not in"),
])
def test_more_bad_values_are_one_clear_error(project: Path, run_mxcp, args: list[str], message: str) -> None:
    command = ["log", "verify", *args] if args[0] == "--expect-hash" else ["log", *args]
    done = run_mxcp(*command, cwd=project)
    assert done.returncode == 1 and message in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr


def test_a_saved_head_is_accepted_in_capitals(project: Path) -> None:
    head = json.loads(cli("log", "verify", "--json-output").stdout)["result"]["head_hash"]
    result = cli("log", "verify", "--expect-hash", head.upper(), "--json-output")
    assert result.exit_code == 0, result.stdout


def test_a_huge_retention_is_refused_naming_the_key(project: Path) -> None:
    site = project / "mxcp-site.yml"
    site.write_text(SITE.replace("max_segment_mb: 0.0015", "max_segment_mb: 0.0015, retention_days: 100000000"))
    result = cli("log-cleanup", "--json-output")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "retention_days" in error and "36500" in error and "Traceback" not in result.output


def test_until_a_bare_date_includes_that_day(project: Path) -> None:
    now = datetime.now(timezone.utc)
    day = now - timedelta(days=3)
    append(project, operation_name="evening", timestamp=day.replace(hour=22).isoformat())
    assert [r["operation_name"] for r in listed("--until", day.date().isoformat())] == ["evening"]


def test_a_bad_timestamp_exports_as_null_and_csv_cells_cannot_be_formulas(project: Path, tmp_path: Path) -> None:
    append(project, operation_name="=HYPERLINK(\"http://x\")", timestamp="garbage")
    target = tmp_path / "audit.duckdb"
    result = cli("log", "--export-duckdb", str(target), "--json-output")
    assert result.exit_code == 0, result.stdout
    with duckdb.connect(str(target), read_only=True) as db:
        assert db.execute("SELECT count(*), count(timestamp) FROM logs").fetchone() == (6, 5)
    sheet = tmp_path / "audit.csv"
    assert cli("log", "--export-csv", str(sheet)).exit_code == 0
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["operation_name"] == "'=HYPERLINK(\"http://x\")" and rows[0]["timestamp"] == ""


def test_records_removed_under_a_running_server_show_as_removed(make_project, tmp_path: Path, run_mxcp) -> None:
    root = make_project(tmp_path / "served", {**FILES, "mxcp-site.yml": SITE.replace("0.0015", "null")})

    async def call(client: Any) -> None:
        await client.call_tool("hello", {"name": "http"})

    with http_server(root) as (base, _):
        run_http(f"{base}/mcp", call)
        run_http(f"{base}/mcp", call)
        log = active(root)
        kept = raw_lines(log)[:-2]  # the last call's two records removed while the server runs
        log.write_bytes(b"\n".join(kept) + b"\n")
        assert run_mxcp("log", "verify", cwd=root).returncode == 0  # a shorter log alone looks like a log
        run_http(f"{base}/mcp", call)
        verified = run_mxcp("log", "verify", "--json-output", cwd=root)
    assert verified.returncode == 1
    failure = json.loads(verified.stdout)["result"]["failure"]
    assert (failure["kind"], failure["line"]) == ("removed", len(kept) + 1)


def test_an_argument_that_is_not_valid_unicode_is_logged_listed_and_exported(project: Path, run_mxcp,
                                                                                tmp_path: Path) -> None:
    done = run_mxcp("run", "tool", "hello", "-p", "name=bad\udcff", cwd=project)  # the byte 0xff in argv
    assert "cannot be written" not in done.stderr and "codec" not in done.stderr.split("SQL error")[0], done.stderr
    assert run_mxcp("log", "verify", cwd=project).returncode == 0
    found = [r for r in listed("--tool", "hello") if r["input_data"] == {"name": "bad\\udcff"}]
    assert found, listed("--tool", "hello")
    assert cli("log", "--export-csv", str(tmp_path / "a.csv")).exit_code == 0
    assert cli("log", "--export-duckdb", str(tmp_path / "a.duckdb")).exit_code == 0
    with duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True) as db:
        assert ("bad\\udcff",) in db.execute("SELECT input_data->>'name' FROM logs").fetchall()
