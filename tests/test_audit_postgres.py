"""The PostgreSQL audit sink, against a real PostgreSQL server: records of real calls in a table, chained exactly as
the JSONL sink chains its lines; `mxcp log`, `log verify` and `log-cleanup` reading it; many writers; failures.
"""
from __future__ import annotations

import json
import shutil
import logging
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from server_helpers import free_port

from mxcp_core import hookimpl
from mxcp_core.errors import ExecutionError, MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_plugins import audit, audit_log

SITE = """\
mxcp: 1
project: audited
profile: default
profiles:
  default:
    audit: {enabled: true, sink: postgres, secret: pg_audit%s}
"""

LOGIN_TOOL = """\
mxcp: 1
tool:
  name: login
  description: Check a password.
  parameters:
    - {name: user, type: string}
    - {name: password, type: string, sensitive: true, minLength: 12}
  return:
    type: object
    properties:
      user: {type: string}
      token: {type: string, sensitive: true}
  source:
    code: "SELECT $user AS user, 'tok-' || $password AS token"
"""

# A tool with an effect outside the call, to tell whether a refused call ran.
TOUCH_TOOL = """\
mxcp: 1
tool:
  name: touch
  language: python
  parameters: [{name: path, type: string}]
  return: {type: string}
  source: {file: ../python/touch.py}
"""
TOUCH_CODE = "from pathlib import Path\n\ndef touch(path: str) -> str:\n    Path(path).write_text('ran')\n    return 'ran'\n"

FAILING_TOOL = """\
mxcp: 1
tool:
  name: broken
  return: {type: array}
  source:
    code: "SELECT * FROM no_such_table"
"""


def write_config(root: Path, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, Any]) -> None:
    config = root / "config.yml"
    config.write_text(json.dumps({"mxcp": 1, "projects": {"audited": {"profiles": {"default": {"secrets": [
        {"name": "pg_audit", "type": "postgres", "parameters": parameters}]}}}}}))
    monkeypatch.setenv("MXCP_CONFIG", str(config))


def disable_plugins(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    monkeypatch.setenv("MXCP_DISABLE_PLUGINS", ",".join([*THIRD_PARTY, *names]))


THIRD_PARTY: list[str] = []


@pytest.fixture
def project(tmp_path: Path, postgres: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch,
            third_party_plugins: list[str]) -> Path:
    THIRD_PARTY[:] = third_party_plugins
    disable_plugins(monkeypatch)
    root = tmp_path / "p"
    (root / "tools").mkdir(parents=True)
    (root / "python").mkdir()
    (root / "mxcp-site.yml").write_text(SITE % "")
    (root / "tools" / "login.yml").write_text(LOGIN_TOOL)
    (root / "tools" / "touch.yml").write_text(TOUCH_TOOL)
    (root / "tools" / "broken.yml").write_text(FAILING_TOOL)
    (root / "python" / "touch.py").write_text(TOUCH_CODE)
    write_config(root, monkeypatch, postgres.parameters(pg_database))
    return root


def rows(postgres: Any, db: str) -> list[dict[str, Any]]:
    found = postgres.sql("SELECT seq, line, record_hash, prev_hash, record_id, call_id, timestamp, operation_type, "
                         "operation_name, operation_status, user_id FROM mxcp_audit ORDER BY seq", db)
    names = ("seq", "line", "record_hash", "prev_hash", "record_id", "call_id", "timestamp", "operation_type",
             "operation_name", "operation_status", "user_id")
    return [dict(zip(names, row)) for row in found]


def login(runtime: Runtime, user: str = "ann") -> Any:
    return runtime.call("tool", "login", {"user": user, "password": "correct-horse-battery"})


def test_records_of_real_calls_land_in_the_table_once_each_chained_like_jsonl_lines(
    project: Path, postgres: Any, pg_database: str, run_mxcp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Runtime(open_project(project)) as runtime:
        assert login(runtime) == {"user": "ann", "token": "tok-correct-horse-battery"}
        login(runtime, "bob")
    found = rows(postgres, pg_database)
    assert [r["seq"] for r in found] == [1, 2, 3, 4]  # once each: an intent and a completion per call
    records = [json.loads(r["line"]) for r in found]
    assert [r["operation_status"] for r in records] == ["started", "success", "started", "success"]
    assert records[0]["call_id"] == records[1]["call_id"] != records[2]["call_id"]
    assert records[1]["input_data"] == {"user": "ann", "password": "[REDACTED]"}
    assert records[1]["output_data"] == {"user": "ann", "token": "[REDACTED]"}
    # The line is exactly what audit.chain_line makes of the record's body after the row before.
    previous = None
    for row, record in zip(found, records):
        body = {key: value for key, value in record.items() if key not in ("prev_hash", "record_hash")}
        line, digest = audit.chain_line(audit.record_body(body), previous)
        assert line.decode("utf-8").rstrip("\n") == row["line"]
        assert (row["record_hash"], row["prev_hash"]) == (digest, previous) == (record["record_hash"], previous)
        assert (row["record_id"], row["call_id"], row["operation_type"], row["operation_name"],
                row["operation_status"]) == (record["record_id"], record["call_id"], "tool", "login",
                                             record["operation_status"])
        assert row["timestamp"] == datetime.fromisoformat(record["timestamp"])
        previous = digest
    # The same fields, in the same order, as the JSONL sink writes.
    jsonl = tmp_path / "j"
    jsonl.mkdir()
    (jsonl / "mxcp-site.yml").write_text(SITE.replace(", sink: postgres, secret: pg_audit%s", ""))
    (jsonl / "tools").mkdir()
    (jsonl / "tools" / "login.yml").write_text(LOGIN_TOOL)
    with Runtime(open_project(jsonl)) as runtime:
        login(runtime)
    written = [json.loads(line) for line in (jsonl / "audit" / "logs-default.jsonl").read_text().splitlines()]
    assert [list(r) for r in written] == [list(r) for r in records[:2]]
    assert "correct-horse" not in "".join(r["line"] for r in found)
    assert postgres.password not in "".join(r["line"] for r in found)

    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    result = json.loads(verified.stdout)["result"]
    assert result["ok"] and result["chained"] == 4 and result["head_hash"] == found[-1]["record_hash"]
    assert result["segments"][0]["segment"] == "mxcp_audit"
    assert postgres.password not in verified.stdout + verified.stderr


def verify_failure(run_mxcp: Any, project: Path) -> dict[str, Any]:
    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    return json.loads(verified.stdout)["result"]["failure"]


def test_verify_names_the_row_changed_removed_or_inserted(
    project: Path, postgres: Any, pg_database: str, run_mxcp
) -> None:
    with Runtime(open_project(project)) as runtime:
        for user in ("ann", "bob", "cy"):
            login(runtime, user)
    found = rows(postgres, pg_database)
    assert len(found) == 6 and run_mxcp("log", "verify", cwd=project).returncode == 0

    # A changed line: its bytes no longer match its record_hash.
    postgres.sql("UPDATE mxcp_audit SET line = replace(line, '\"bob\"', '\"eve\"') WHERE seq = 4", pg_database)
    failure = verify_failure(run_mxcp, project)
    assert (failure["kind"], failure["line"], failure["unit"], failure["record_id"]) == (
        "changed", 4, "seq", found[3]["record_id"])
    text = run_mxcp("log", "verify", cwd=project)
    assert "mxcp_audit seq 4" in text.stderr and "NOT intact" in text.stderr
    postgres.sql(f"UPDATE mxcp_audit SET line = $${found[3]['line']}$$ WHERE seq = 4", pg_database)
    assert run_mxcp("log", "verify", cwd=project).returncode == 0

    # A removed row: the next one names a record that is not there.
    postgres.sql("DELETE FROM mxcp_audit WHERE seq = 3", pg_database)
    failure = verify_failure(run_mxcp, project)
    assert (failure["kind"], failure["line"], failure["record_id"]) == ("removed", 4, found[3]["record_id"])
    postgres.sql(f"INSERT INTO mxcp_audit (seq, line) VALUES (3, $${found[2]['line']}$$)", pg_database)
    assert run_mxcp("log", "verify", cwd=project).returncode == 0

    # A forged row slipped in after seq 2, hashed correctly and chained to it: the row after no longer follows.
    forged = json.loads(found[2]["line"])
    forged.update(record_id="f" * 32, user_id="mallory")
    body = audit.record_body({k: v for k, v in forged.items() if k not in ("prev_hash", "record_hash")})
    line, _ = audit.chain_line(body, found[1]["record_hash"])
    postgres.sql("UPDATE mxcp_audit SET seq = seq + 100 WHERE seq > 2", pg_database)
    postgres.sql(f"INSERT INTO mxcp_audit (seq, line) VALUES (3, $${line.decode().rstrip()}$$)", pg_database)
    failure = verify_failure(run_mxcp, project)
    assert (failure["kind"], failure["line"], failure["record_id"]) == ("inserted", 3, "f" * 32)


WRITER = """\
import sys, threading
from mxcp_core.project import open_project
from mxcp_plugins import audit

from pathlib import Path
project = open_project(Path(sys.argv[1]))
settings = project.context.plugin_config("audit", scope="site_profile")
sink = audit.open_sink(project.hooks, project.context, settings)
process, threads, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def write(thread):
    for n in range(count):
        sink.write(audit.record_body({"schema_name": "mxcp.audit", "schema_version": 3,
            "record_id": f"{process}-{thread}-{n}", "call_id": f"{process}-{thread}-{n}",
            "timestamp": "2026-01-01T00:00:00+00:00", "operation_type": "tool", "operation_name": "w",
            "operation_status": "success", "user_id": process}), fsync=False)

workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
sink.close()
"""


def test_two_processes_of_several_threads_keep_one_chain(
    project: Path, postgres: Any, pg_database: str, run_mxcp, tmp_path: Path
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    threads, count = 4, 40
    writers = [subprocess.Popen([sys.executable, str(script), str(project), name, str(threads), str(count)],
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    found = rows(postgres, pg_database)
    assert len(found) == 2 * threads * count
    assert len({r["record_id"] for r in found}) == len(found)
    assert {r["user_id"] for r in found} == {"a", "b"}
    previous = None
    for row in found:  # each row chains to the row before it in seq order
        assert row["prev_hash"] == previous
        previous = row["record_hash"]
    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["result"]["chained"] == len(found)


def test_mxcp_log_filters_and_json_output_read_the_table(
    project: Path, postgres: Any, pg_database: str, run_mxcp, tmp_path: Path
) -> None:
    with Runtime(open_project(project)) as runtime:
        login(runtime, "ann")
        login(runtime, "bob")
        with pytest.raises(MxcpError):
            runtime.call("tool", "broken", {})
    ran = run_mxcp("run", "tool", "login", "-p", "user=dan", "-p", "password=correct-horse-battery", cwd=project)
    assert ran.returncode == 0, ran.stderr

    def listed(*args: str) -> list[dict[str, Any]]:
        done = run_mxcp("log", "--json-output", *args, cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)["result"]

    everything = listed()
    # Newest first; intent records hidden when their call completed.
    assert [(r["operation_name"], r["operation_status"]) for r in everything] == [
        ("login", "success"), ("broken", "error"), ("login", "success"), ("login", "success")]
    assert [r["input_data"]["user"] for r in everything if r["operation_name"] == "login"] == ["dan", "bob", "ann"]
    assert [r["operation_name"] for r in listed("--status", "error")] == ["broken"]
    assert [r["input_data"]["user"] for r in listed("--tool", "login", "--limit", "1")] == ["dan"]
    assert len(listed("--status", "started")) == 4
    assert listed("--since", "1h") == everything and listed("--until", "2000-01-01") == []
    assert listed("--user", "nobody") == [] and listed("--policy", "deny") == []
    exported = run_mxcp("log", "--export-csv", str(tmp_path / "a.csv"), cwd=project)
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 1 + 4
    table = run_mxcp("log", cwd=project)
    assert table.returncode == 0 and "broken" in table.stdout and "login" in table.stdout


def test_unreachable_server_refuses_the_call_before_it_runs_or_only_logs(
    project: Path, postgres: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    secret = "unreachable-secret-password"
    write_config(project, monkeypatch, {"host": "127.0.0.1", "port": free_port(), "database": "x",
                                        "user": "u", "password": secret})
    marker = tmp_path / "ran.txt"
    with Runtime(open_project(project)) as runtime, pytest.raises(ExecutionError) as caught:
        runtime.call("tool", "touch", {"path": str(marker)})
    message = str(caught.value)
    # (The secret's host and port are masked too: every value of a secret's parameters is.)
    assert message.startswith("call refused: the audit log table mxcp_audit on PostgreSQL ")
    assert "Connection refused" in message and "nothing was run" in message and secret not in message
    assert not marker.exists()

    (project / "mxcp-site.yml").write_text(SITE % ", on_failure: log")
    with caplog.at_level(logging.ERROR), Runtime(open_project(project)) as runtime:
        assert runtime.call("tool", "touch", {"path": str(marker)}) == "ran"
    assert marker.exists()
    assert "runs unaudited (on_failure: log)" in caplog.text and "AUDIT RECORD NOT WRITTEN" in caplog.text
    assert secret not in caplog.text


KILL_TOOL = """\
mxcp: 1
tool:
  name: kill
  language: python
  return: {type: integer}
  source: {file: ../python/kill.py}
"""
# Ends every other session of the database, the sink's among them, and refuses new ones: as a server going down
# would. (A session ended between records alone is replaced, and the record written: see the test after.)
KILL_CODE = """\
import os
import psycopg

def kill() -> int:
    database = os.environ["KILL_DATABASE"]
    with psycopg.connect(os.environ["KILL_CONNINFO"], autocommit=True) as conn:  # to another database
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                [database]).fetchall())
"""


def test_a_dropped_connection_keeps_the_completion_record_and_the_next_call_writes_it_first(
    project: Path, postgres: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch, run_mxcp,
    caplog: pytest.LogCaptureFixture
) -> None:
    (project / "tools" / "kill.yml").write_text(KILL_TOOL)
    (project / "python" / "kill.py").write_text(KILL_CODE)
    monkeypatch.setenv("KILL_CONNINFO", postgres.conninfo("postgres"))
    monkeypatch.setenv("KILL_DATABASE", pg_database)
    with Runtime(open_project(project)) as runtime:
        login(runtime, "ann")
        with caplog.at_level(logging.CRITICAL):
            assert runtime.call("tool", "kill", {}) >= 1  # the caller still gets the result
        assert "AUDIT RECORD NOT WRITTEN: tool 'kill'" in caplog.text
        sink = runtime.context.state[audit._STATE_KEY][1]
        assert len(sink.pending) == 1
        postgres.sql(f"ALTER DATABASE {pg_database} ALLOW_CONNECTIONS true")  # the server is back
        login(runtime, "bob")  # a new connection: the kept record goes first, then this call's
        assert sink.pending == []
    found = [json.loads(r["line"]) for r in rows(postgres, pg_database)]
    assert [(r["operation_name"], r["operation_status"]) for r in found] == [
        ("login", "started"), ("login", "success"), ("kill", "started"), ("kill", "success"), ("login", "started"),
        ("login", "success")]
    assert run_mxcp("log", "verify", cwd=project).returncode == 0


def test_a_sink_no_plugin_opens_stops_the_start_naming_the_key(
    project: Path, postgres: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_mxcp
) -> None:
    """Not a server that passes its health checks while refusing every call: the start itself stops."""
    marker = tmp_path / "ran.txt"
    disable_plugins(monkeypatch, "audit_postgres")
    with pytest.raises(MxcpError) as caught, Runtime(open_project(project)) as runtime:
        runtime.call("tool", "touch", {"path": str(marker)})
    assert "no loaded plugin provides the audit sink 'postgres'" in str(caught.value)
    assert "profiles.default.audit.sink" in str(caught.value) and not marker.exists()
    ran = run_mxcp("run", "tool", "touch", "--param", f"path={marker}", cwd=project,
                   env={"MXCP_DISABLE_PLUGINS": "audit_postgres"})
    assert ran.returncode != 0 and "profiles.default.audit.sink" in ran.stderr and not marker.exists()
    disable_plugins(monkeypatch)

    (project / "mxcp-site.yml").write_text(SITE.replace("sink: postgres", "sink: kafka") % ", on_failure: log")
    with pytest.raises(MxcpError) as caught, Runtime(open_project(project)) as runtime:
        runtime.call("tool", "touch", {"path": str(marker)})
    assert "audit sink 'kafka' named by profiles.default.audit.sink" in str(caught.value) and not marker.exists()
    listed = run_mxcp("log", cwd=project)
    assert listed.returncode == 1 and "profiles.default.audit.sink" in listed.stdout + listed.stderr


def test_a_missing_or_wrong_secret_refuses_calls_without_showing_the_password(
    project: Path, postgres: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, run_mxcp
) -> None:
    marker = tmp_path / "ran.txt"
    (project / "mxcp-site.yml").write_text(SITE.replace("pg_audit", "pg_other") % "")
    with pytest.raises(MxcpError) as caught, Runtime(open_project(project)) as runtime:
        runtime.call("tool", "touch", {"path": str(marker)})
    assert "profiles.default.audit.secret" in str(caught.value) and "pg_other" in str(caught.value)
    (project / "mxcp-site.yml").write_text(SITE % "")
    wrong = "wrong-password-for-audit"
    write_config(project, monkeypatch, {**postgres.parameters(pg_database), "password": wrong})
    with caplog.at_level(logging.DEBUG), Runtime(open_project(project)) as runtime, \
            pytest.raises(ExecutionError) as caught:
        runtime.call("tool", "touch", {"path": str(marker)})
    assert "password authentication failed" in str(caught.value) and wrong not in str(caught.value)
    assert wrong not in caplog.text and not marker.exists()
    shown = run_mxcp("log", "verify", cwd=project)
    assert shown.returncode == 1 and "password authentication failed" in shown.stdout + shown.stderr
    assert wrong not in shown.stdout + shown.stderr


def old_body(days: int, n: int) -> bytes:
    moment = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat()
    return audit.record_body({"schema_name": "mxcp.audit", "schema_version": 3, "record_id": f"old{n}",
                              "call_id": f"old{n}", "timestamp": moment, "operation_type": "tool",
                              "operation_name": "old", "operation_status": "success", "user_id": None})


def test_log_cleanup_deletes_the_oldest_rows_after_a_chained_record_naming_them(
    project: Path, postgres: Any, pg_database: str, run_mxcp
) -> None:
    opened = open_project(project)
    settings = opened.context.plugin_config("audit", scope="site_profile")
    sink = audit.open_sink(opened.hooks, opened.context, settings)
    for n, days in enumerate((200, 150, 120)):
        sink.write(old_body(days, n), fsync=False)
    with Runtime(open_project(project)) as runtime:
        login(runtime)
    sink.write(old_body(300, 9), fsync=False)  # older, but after a recent one: it stays (the chain's run stops)
    before = rows(postgres, pg_database)

    dry = run_mxcp("log-cleanup", "--dry-run", "--json-output", cwd=project)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = json.loads(dry.stdout)["result"]
    assert planned["records"] == 3 and planned["segments"][0]["segment"] == "mxcp_audit seq 1-3"
    assert len(rows(postgres, pg_database)) == len(before)

    done = run_mxcp("log-cleanup", "--json-output", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    after = rows(postgres, pg_database)
    assert [r["seq"] for r in after] == [r["seq"] for r in before[3:]] + [before[-1]["seq"] + 1]
    cleanup = json.loads(after[-1]["line"])
    assert (cleanup["operation_type"], cleanup["operation_name"]) == ("audit", "log-cleanup")
    removed = cleanup["output_data"]["removed_segments"]
    assert removed[0]["last_record_hash"] == before[2]["record_hash"] == after[0]["prev_hash"]
    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 0, verified.stdout
    assert json.loads(verified.stdout)["result"]["verified_from"]["anchor"] == "segments removed by log-cleanup"
    assert json.loads(run_mxcp("log-cleanup", "--json-output", cwd=project).stdout)["result"]["records"] == 0

    # Deleting recent rows by hand is no cleanup: verify names the row left without its predecessor.
    postgres.sql(f"DELETE FROM mxcp_audit WHERE seq = {after[0]['seq']}", pg_database)
    assert verify_failure(run_mxcp, project)["kind"] == "removed"


class MemorySink:
    """A sink kept in memory, for the test of a plugin providing its own kind."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.pending: list[bytes] = []
        self.where = "memory"

    def write(self, body: bytes, *, fsync: bool, max_segment_bytes: int = 0) -> None:
        self.records.append(json.loads(body))

    def keep(self, body: bytes) -> None:
        self.pending.append(body)

    def flush(self, *, fsync: bool) -> None:
        self.pending.clear()

    def close(self) -> None:
        pass


def test_a_plugin_provides_its_own_sink_kind(project: Path, tmp_path: Path) -> None:
    memory = MemorySink()

    class MemoryPlugin:
        @hookimpl
        def open_audit_sink(self, settings, project):
            return memory if settings.sink == "memory" else None

    (project / "mxcp-site.yml").write_text(SITE.replace("sink: postgres", "sink: memory") % "")
    with Runtime(open_project(project, extra_plugins=[("memory_sink", MemoryPlugin())])) as runtime:
        login(runtime)
    assert [r["operation_status"] for r in memory.records] == ["started", "success"]
    assert memory.records[1]["output_data"] == {"user": "ann", "token": "[REDACTED]"}
    assert "prev_hash" not in memory.records[0]  # the body as given: a sink chains (or not) as it writes


def test_a_runtime_stopping_flushes_and_closes_its_own_sinks_only(project: Path, tmp_path: Path) -> None:
    """Sinks are shared per process; one runtime's shutdown (or a reload of it) must not close another's, nor try
    to flush its records (a test saw every later runtime retry a dead server's sink at each shutdown)."""
    sinks = {"mine": MemorySink(), "theirs": MemorySink()}
    closed: list[str] = []
    for name, sink in sinks.items():
        sink.close = lambda name=name: closed.append(name)  # type: ignore[method-assign]

    class MemoryPlugin:
        @hookimpl
        def open_audit_sink(self, settings, project):
            return sinks.get(settings.table)

    site = SITE.replace("sink: postgres", "sink: memory")
    other = tmp_path / "other"
    shutil.copytree(project, other)
    (project / "mxcp-site.yml").write_text(site % ", table: mine")
    (other / "mxcp-site.yml").write_text(site % ", table: theirs")
    theirs = Runtime(open_project(other, extra_plugins=[("memory_sink", MemoryPlugin())]))
    theirs.start()
    try:
        sinks["theirs"].pending.append(b"{}")
        with Runtime(open_project(project, extra_plugins=[("memory_sink", MemoryPlugin())])) as runtime:
            login(runtime)
            runtime.reload(description="test")
            runtime.wait_for_reloads(timeout=30)
            assert closed == []  # a reload keeps the sinks open
        assert closed == ["mine"] and sinks["theirs"].pending == [b"{}"]
    finally:
        theirs.stop()
    assert closed == ["mine", "theirs"] and sinks["theirs"].pending == []


def test_the_server_hashes_any_text_as_python_does(postgres: Any, pg_database: str) -> None:
    from mxcp_plugins import audit_postgres
    from mxcp_plugins.postgres_connect import parameters_from

    sink = audit_postgres.PostgresSink(parameters_from(postgres.parameters(pg_database), secret_name="s", where={}),
                                       "Audit.Trail")
    postgres.sql("CREATE SCHEMA \"Audit\"", pg_database)
    bodies = [audit.record_body({"schema_name": "mxcp.audit", "schema_version": 3, "record_id": str(n),
                                 "timestamp": "2026-01-01T00:00:00+00:00", "input_data": text})
              for n, text in enumerate(["plain", "é ü 漢字 🙂", "bad\udcff", "nul\x00tab\t\"quote\\", ""])]
    for body in bodies:
        sink.write(body, fsync=False)
    sink.close()
    lines = [row[0] for row in postgres.sql("SELECT line FROM \"Audit\".\"Trail\" ORDER BY seq", pg_database)]
    previous = None
    for body, line in zip(bodies, lines):
        expected, previous = audit.chain_line(body, previous)
        assert expected.decode("utf-8").rstrip("\n") == line
    assert '"bad\\udcff"' in lines[2] and '"nul\\u0000tab\\t\\"quote\\\\"' in lines[3]
    assert audit_log.verify(sink.reader()).ok


def test_a_role_that_may_only_insert_and_select_writes_but_cannot_clean_up(
    project: Path, postgres: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch, run_mxcp
) -> None:
    owner = open_project(project)
    sink = audit.open_sink(owner.hooks, owner.context, owner.context.plugin_config("audit", "site_profile"))
    sink.write(old_body(400, 1), fsync=False)  # creates the table, as the owner
    sink.close()
    role = f"writer_{pg_database}"
    postgres.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'writer-password-1234'", pg_database)
    postgres.sql(f"GRANT SELECT, INSERT ON mxcp_audit TO {role}", pg_database)
    postgres.sql(f"GRANT USAGE ON SEQUENCE mxcp_audit_seq_seq TO {role}", pg_database)
    write_config(project, monkeypatch, {**postgres.parameters(pg_database), "user": role,
                                        "password": "writer-password-1234"})
    with Runtime(open_project(project)) as runtime:
        login(runtime, "bob")
    assert len(rows(postgres, pg_database)) == 3
    update = "import psycopg, sys; psycopg.connect(sys.argv[1]).execute('UPDATE mxcp_audit SET line = line')"
    as_writer = postgres.conninfo(pg_database).replace(f"user={postgres.user} password={postgres.password}",
                                                       f"user={role} password=writer-password-1234")
    changed = subprocess.run([sys.executable, "-c", update, as_writer], capture_output=True, text=True, check=False)
    assert changed.returncode == 1 and "permission denied for table mxcp_audit" in changed.stderr
    done = run_mxcp("log-cleanup", cwd=project)
    assert done.returncode == 1
    assert "permission denied for table mxcp_audit" in done.stdout + done.stderr
    assert "nothing was removed and nothing recorded" in done.stdout + done.stderr
    assert len(rows(postgres, pg_database)) == 3
    assert run_mxcp("log", "verify", cwd=project).returncode == 0


def test_the_table_setting_must_be_a_table_name(project: Path) -> None:
    from mxcp_core.errors import ConfigError

    (project / "mxcp-site.yml").write_text(SITE % ", table: 'x; DROP TABLE y'")
    with pytest.raises(ConfigError) as caught:
        open_project(project)
    assert caught.value.key_path.startswith("profiles.default.audit") and "table" in str(caught.value)


def test_a_session_the_server_ended_between_calls_is_not_used_so_no_call_is_refused(
    project: Path, postgres: Any, pg_database: str, run_mxcp
) -> None:
    # A server restart, pg_terminate_backend or idle_session_timeout ends the kept connections while idle; the
    # next call must get a new one, not be refused (on_failure: refuse) or lose its intent record (log).
    with Runtime(open_project(project)) as runtime:
        login(runtime, "ann")
        ended = postgres.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                             f"'{pg_database}' AND pid <> pg_backend_pid()", pg_database)
        assert ended  # the sink's kept connection was there, and is gone
        time.sleep(0.2)  # the server's goodbye reaches the socket
        login(runtime, "bob")
    found = [json.loads(r["line"]) for r in rows(postgres, pg_database)]
    assert [(r["operation_status"], r["input_data"]["user"]) for r in found] == [
        ("started", "ann"), ("success", "ann"), ("started", "bob"), ("success", "bob")]
    assert run_mxcp("log", "verify", cwd=project).returncode == 0


def test_a_caller_whose_id_holds_a_nul_is_audited_and_blocks_no_record_after_it(
    project: Path, postgres: Any, pg_database: str, run_mxcp, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL text cannot hold NUL. The line escapes it (JSON), but the user_id column took the raw text: the
    # record failed, and kept (a completion) it failed every record after it: one crafted identity ended auditing.
    (project / "mxcp-site.yml").write_text(SITE % ", on_failure: log")
    with caplog.at_level(logging.ERROR), Runtime(open_project(project)) as runtime:
        runtime.call("tool", "login", {"user": "x", "password": "correct-horse-battery"},
                     user={"user_id": "mal\x00lory", "username": "mallory"})
        login(runtime, "bob")
    assert "cannot be written" not in caplog.text and "NOT WRITTEN" not in caplog.text
    found = rows(postgres, pg_database)
    assert [json.loads(r["line"])["user_id"] for r in found] == ["mal\x00lory"] * 2 + [None] * 2
    assert found[0]["user_id"] == "mal\\u0000lory"  # the column, for queries: NUL as its JSON escape
    assert run_mxcp("log", "verify", cwd=project).returncode == 0


def test_the_chain_holds_when_the_database_defaults_to_repeatable_read(
    project: Path, postgres: Any, pg_database: str, run_mxcp, tmp_path: Path
) -> None:
    # Each append must read the last row after the writers' lock is granted. Under a default of REPEATABLE READ
    # (set by a DBA on the database or role) the snapshot was taken by the lock's statement, before the wait:
    # concurrent writers chained to the same stale row and the table forked.
    postgres.sql(f"ALTER DATABASE {pg_database} SET default_transaction_isolation = 'repeatable read'")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writers = [subprocess.Popen([sys.executable, str(script), str(project), name, "4", "30"],
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    found = rows(postgres, pg_database)
    assert len(found) == 2 * 4 * 30
    assert [r["prev_hash"] for r in found] == [None] + [r["record_hash"] for r in found[:-1]]
    verified = run_mxcp("log", "verify", "--json-output", cwd=project)
    assert verified.returncode == 0, verified.stdout


SPELLED_WRITER = """\
import sys, threading
from mxcp_plugins import audit, audit_postgres
from mxcp_plugins.postgres_connect import parameters_from
import json
sink = audit_postgres.PostgresSink(parameters_from(json.loads(sys.argv[1]), secret_name="s", where={}), sys.argv[2])

def write(thread):
    for n in range(30):
        sink.write(audit.record_body({"schema_name": "mxcp.audit", "schema_version": 3,
            "record_id": f"{sys.argv[2]}-{thread}-{n}", "timestamp": "2026-01-01T00:00:00+00:00"}), fsync=False)

workers = [threading.Thread(target=write, args=(t,)) for t in range(4)]
for w in workers: w.start()
for w in workers: w.join()
sink.close()
"""


def test_writers_naming_one_table_two_ways_share_its_lock(
    project: Path, postgres: Any, pg_database: str, tmp_path: Path
) -> None:
    # `mxcp_audit` and `public.mxcp_audit` are one table: a lock derived from the setting's text gave them two
    # locks, and their appends forked the chain.
    postgres.sql("CREATE TABLE mxcp_audit (seq bigserial PRIMARY KEY, line text NOT NULL, record_hash text, "
                 "prev_hash text, record_id text, call_id text, \"timestamp\" timestamptz, operation_type text, "
                 "operation_name text, operation_status text, user_id text)", pg_database)
    script = tmp_path / "spelled.py"
    script.write_text(SPELLED_WRITER)
    parameters = json.dumps(postgres.parameters(pg_database))
    writers = [subprocess.Popen([sys.executable, str(script), parameters, table], stderr=subprocess.PIPE,
                                text=True) for table in ("mxcp_audit", "public.mxcp_audit")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    found = rows(postgres, pg_database)
    assert len(found) == 2 * 4 * 30
    assert [r["prev_hash"] for r in found] == [None] + [r["record_hash"] for r in found[:-1]]


@pytest.mark.parametrize(("sink", "extra", "key"), [
    ("jsonl", "", "profiles.default.audit.secret"),  # the template names a secret
    ("postgres", ", path: audit/calls.jsonl", "profiles.default.audit.path"),
])
def test_another_sinks_setting_stops_the_start_rather_than_being_ignored(
    project: Path, tmp_path: Path, sink: str, extra: str, key: str
) -> None:
    """Records would not be where the user looks: a file path with the table sink, a secret with the file sink."""
    marker = tmp_path / "ran.txt"
    (project / "mxcp-site.yml").write_text((SITE % extra).replace("sink: postgres", f"sink: {sink}"))
    with pytest.raises(MxcpError) as caught, Runtime(open_project(project)) as runtime:
        runtime.call("tool", "touch", {"path": str(marker)})
    assert key in str(caught.value) and not marker.exists()
