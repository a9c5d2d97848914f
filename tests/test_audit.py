"""The audit plugin: an intent record before each call, a completion record after, sensitive values redacted.

When the file cannot be written the call is refused before it runs; when only the completion record fails, the
client still gets the real result and later calls are refused until the file works again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client

from mxcp_core.errors import ConfigError, MxcpError
from mxcp_core.execution import Runtime
from mxcp_core.project import open_project
from mxcp_plugins import audit_log
from server_helpers import mxcp_command, serve_env, stop_process

SITE = """\
mxcp: 1
project: audited
profile: default
profiles:
  default:
    audit: {enabled: true}
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

SECRET = "s3cr3t-token-value"


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No user config at all: a missing ~/.mxcp/config.yml is an empty config.
    monkeypatch.delenv("MXCP_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MXCP_AUDIT_ENABLED", raising=False)
    monkeypatch.delenv("MXCP_DISABLE_PLUGINS", raising=False)
    (tmp_path / "mxcp-site.yml").write_text(SITE)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "login.yml").write_text(textwrap.dedent(LOGIN_TOOL))
    return tmp_path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def records(root: Path) -> list[dict]:
    return read_records(root / "audit" / "logs-default.jsonl")


def pair(found: list[dict]) -> tuple[dict, dict]:
    """The one call's intent and completion records, checked to belong together."""
    intent, completion = found
    assert intent["operation_status"] == "started" and completion["operation_status"] != "started"
    assert intent["call_id"] == completion["call_id"] and intent["trace_id"] == completion["trace_id"]
    assert intent["record_id"] != completion["record_id"]
    assert intent["timestamp"] <= completion["timestamp"]
    return intent, completion


def test_intent_and_completion_records_redact_sensitive_input_and_output(audited: Path) -> None:
    with Runtime(open_project(audited)) as runtime:
        result = runtime.call("tool", "login", {"user": "ann", "password": "correct-horse-battery"})
    assert result == {"user": "ann", "token": "tok-correct-horse-battery"}
    intent, record = pair(records(audited))
    assert intent["input_data"] == {"user": "ann", "password": "[REDACTED]"}
    assert intent["output_data"] is None and intent["duration_ms"] is None and intent["error"] is None
    assert record["operation_type"] == "tool" and record["operation_name"] == "login"
    assert record["operation_status"] == "success" and record["caller_type"] == "cli"
    assert record["input_data"] == {"user": "ann", "password": "[REDACTED]"}
    assert record["output_data"] == {"user": "ann", "token": "[REDACTED]"}
    assert "correct-horse" not in (audited / "audit" / "logs-default.jsonl").read_text()
    assert record["schema_name"] == "mxcp.audit" and record["schema_version"] == 3 and record["duration_ms"] >= 0


def test_error_record_and_disabling_by_name(audited: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Runtime(open_project(audited)) as runtime:
        _, call = runtime.prepare_call("tool", "login", {"user": "bob", "password": "a-long-password"})
        # Force an execution error after validation: the wrapper records it and re-raises.
        call.endpoint = type(call.endpoint)(name="login", origin="test", language="sql",
                                            source=type(call.endpoint.source)(code="SELECT nope"))
        runtime.compiled[("tool", "login")].definition = call.endpoint
        with pytest.raises(MxcpError):
            runtime.invoke(call)
    _, record = pair(records(audited))
    assert record["operation_status"] == "error"
    assert "nope" in record["error"] and "a-long-password" not in json.dumps(record)

    (audited / "audit" / "logs-default.jsonl").unlink()
    # Disabling the plugin while the site asks for an audit log is refused, never silently unaudited.
    monkeypatch.setenv("MXCP_DISABLE_PLUGINS", "audit")
    with pytest.raises(ConfigError, match="section 'audit' .* is read by plugin 'audit', which is disabled") as caught:
        open_project(audited)
    assert (caught.value.key_path, caught.value.line) == ("profiles.default.audit", 6)
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "1")
    (audited / "mxcp-site.yml").write_text(SITE.replace("enabled: true", "enabled: false"))
    with pytest.raises(ConfigError, match="MXCP_AUDIT_ENABLED .* plugin 'audit', which is disabled"):
        open_project(audited)
    # Off in the file and the environment: the plugin's absence changes nothing, and nothing is written.
    monkeypatch.delenv("MXCP_AUDIT_ENABLED")
    with Runtime(open_project(audited)) as runtime:
        runtime.call("tool", "login", {"user": "ann", "password": "correct-horse-battery"})
    assert not (audited / "audit" / "logs-default.jsonl").exists()


def test_on_failure_accepts_only_refuse_or_log(audited: Path) -> None:
    (audited / "mxcp-site.yml").write_text(SITE.replace("enabled: true", "enabled: true, on_failure: ignore"))
    with pytest.raises(ConfigError, match="on_failure") as caught:
        open_project(audited)
    assert caught.value.line == 6


def test_error_text_in_the_record_masks_secrets_and_sensitive_arguments(
    audited: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (audited / "python").mkdir()
    (audited / "python" / "leak.py").write_text(
        "from mxcp.runtime import get_secret\n\n"
        "def leak(creds: dict) -> dict:\n"
        "    raise RuntimeError(f\"rejected {get_secret('api')['value']} pin={creds['pin']}\")\n"
    )
    (audited / "tools" / "leak.yml").write_text(textwrap.dedent("""\
        mxcp: 1
        tool:
          name: leak
          language: python
          parameters:
            - name: creds
              type: object
              properties: {pin: {type: string, sensitive: true}}
          return: {type: object}
          source: {file: ../python/leak.py}
        """))
    use_secret_config(audited, monkeypatch)
    with Runtime(open_project(audited)) as runtime, pytest.raises(MxcpError):
        runtime.call("tool", "leak", {"creds": {"pin": "918273"}})
    _, record = pair(records(audited))
    assert record["error"] == "rejected [REDACTED] pin=[REDACTED]"
    assert record["input_data"] == {"creds": {"pin": "[REDACTED]"}}


def use_secret_config(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = root / "config.yml"
    config.write_text(
        "mxcp: 1\nprojects:\n  audited:\n    profiles:\n      default:\n        secrets:\n"
        f"          - {{name: api, type: api, parameters: {{value: {SECRET}}}}}\n"
    )
    monkeypatch.setenv("MXCP_CONFIG", str(config))


def test_a_returned_secret_and_an_echoed_sensitive_argument_are_masked_in_output_data(
    audited: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (audited / "python").mkdir()
    (audited / "python" / "echo.py").write_text(
        "from mxcp.runtime import get_secret\n\n"
        "def echo(pin: str) -> dict:\n"
        "    token = get_secret('api')['value']\n"
        "    return {'token': token, 'items': [f'auth={token!r}', 'plain'], 'said': f'pin was {pin}'}\n"
    )
    (audited / "tools" / "echo.yml").write_text(textwrap.dedent("""\
        mxcp: 1
        tool:
          name: echo
          language: python
          parameters: [{name: pin, type: string, sensitive: true}]
          return: {type: object}
          source: {file: ../python/echo.py}
        """))
    use_secret_config(audited, monkeypatch)
    with Runtime(open_project(audited)) as runtime:
        result = runtime.call("tool", "echo", {"pin": "918273"})
    # The caller gets the real value; only the record is masked.
    assert result["token"] == SECRET
    _, record = pair(records(audited))
    assert record["output_data"] == {
        "token": "[REDACTED]", "items": ["auth='[REDACTED]'", "plain"], "said": "pin was [REDACTED]"}
    text = (audited / "audit" / "logs-default.jsonl").read_text()
    assert SECRET not in text and "918273" not in text


# -- the file cannot be written --------------------------------------------------------------------------------

MARKED_TOOL = """\
mxcp: 1
tool:
  name: work
  language: python
  return: {type: string}
  source: {file: ../python/work.py}
"""

# Appends to a marks file, so a test sees whether the body ran; `break_audit` replaces the audit file by a
# link to /dev/full mid-call (disk full from here on), keeping the original aside for the test to restore.
WORK_CODE = """\
import os

def work() -> str:
    with open(os.environ["MARKS"], "a") as f:
        f.write("ran\\n")
    return "done"

def break_audit() -> str:
    path = os.environ["AUDIT_FILE"]
    os.rename(path, path + ".aside")
    os.symlink("/dev/full", path)
    return "committed"
"""

BREAK_TOOL = """\
mxcp: 1
tool:
  name: break_audit
  language: python
  return: {type: string}
  source: {file: ../python/work.py}
"""


@pytest.fixture
def sink_project(make_project, tmp_path: Path) -> dict[str, Any]:
    audit_file = tmp_path / "proj" / "audit.jsonl"
    root = make_project(tmp_path / "proj", {
        "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n"
                         "profiles:\n  default:\n    audit: {enabled: true, path: audit.jsonl}\n",
        "tools/work.yml": MARKED_TOOL,
        "tools/break_audit.yml": BREAK_TOOL,
        "python/work.py": WORK_CODE,
    })
    marks = tmp_path / "marks.txt"
    marks.write_text("")
    env = {"MARKS": str(marks), "AUDIT_FILE": str(audit_file)}
    return {"root": root, "audit": audit_file, "marks": marks, "env": env}


def test_cli_refuses_the_call_when_the_audit_file_cannot_be_written(sink_project, run_mxcp) -> None:
    root, audit, marks = sink_project["root"], sink_project["audit"], sink_project["marks"]
    # A directory where the file should be, and a full disk: both fail for root too, unlike permissions.
    audit.mkdir()
    refused = run_mxcp("run", "tool", "work", cwd=root, env=sink_project["env"])
    assert refused.returncode == 1
    assert f"call refused: the audit log {audit} cannot be written (Is a directory); nothing was run" in refused.stderr
    audit.rmdir()
    audit.symlink_to("/dev/full")
    full = run_mxcp("run", "tool", "work", "--json-output", cwd=root, env=sink_project["env"])
    assert full.returncode == 1
    assert json.loads(full.stdout)["error"] == (
        f"call refused: the audit log {audit} cannot be written (No space left on device); nothing was run")
    assert marks.read_text() == ""  # the body never ran

    audit.unlink()  # the sink is fixed: the next call runs and is recorded
    ok = run_mxcp("run", "tool", "work", "--json-output", cwd=root, env=sink_project["env"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["result"] == "done"
    assert marks.read_text() == "ran\n"
    _, completion = pair(read_records(audit))
    assert completion["output_data"] == "done"
    assert audit_log.verify(audit).ok


def test_on_failure_log_runs_the_call_unaudited_and_says_so(sink_project, run_mxcp) -> None:
    root, audit = sink_project["root"], sink_project["audit"]
    site = root / "mxcp-site.yml"
    site.write_text(site.read_text().replace("path: audit.jsonl", "path: audit.jsonl, on_failure: log"))
    audit.symlink_to("/dev/full")
    result = run_mxcp("run", "tool", "work", "--json-output", cwd=root, env=sink_project["env"])
    assert result.returncode == 0 and json.loads(result.stdout)["result"] == "done"
    assert "No space left on device): tool 'work' runs unaudited (on_failure: log)" in result.stderr
    assert "AUDIT RECORD NOT WRITTEN: tool 'work'" in result.stderr and "further calls run unaudited" in result.stderr
    # At exit the record gets a last chance, and its loss is said out loud.
    assert "1 completion records lost at shutdown (No space left on device)" in result.stderr
    assert sink_project["marks"].read_text() == "ran\n"


def run_stdio(root: Path, env: dict[str, str], errlog: Path, body: Any) -> Any:
    command = mxcp_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--transport", "stdio"],
                                   cwd=root, env=serve_env(env))

    async def main() -> Any:
        with open(errlog, "w") as log:
            async with mcp.Client(stdio_client(params, errlog=log)) as client:
                return await body(client)

    return anyio.run(main)


def test_served_client_is_refused_until_the_sink_works_and_a_lost_completion_is_not_an_error(
    sink_project, tmp_path: Path
) -> None:
    audit, marks = sink_project["audit"], sink_project["marks"]
    aside = Path(f"{audit}.aside")
    audit.mkdir()

    async def body(client):
        refused = await client.call_tool("work", {})
        audit.rmdir()
        ok = await client.call_tool("work", {})
        # The tool commits its work, then the file breaks before the completion record is written.
        committed = await client.call_tool("break_audit", {})
        blocked = await client.call_tool("work", {})
        audit.unlink()
        aside.rename(audit)
        recovered = await client.call_tool("work", {})
        return refused, ok, committed, blocked, recovered

    errlog = tmp_path / "stderr.txt"
    refused, ok, committed, blocked, recovered = run_stdio(sink_project["root"], sink_project["env"], errlog, body)
    assert refused.is_error and refused.content[0].text == (
        "call refused: the audit log <project>/audit.jsonl cannot be written (Is a directory); nothing was run")
    assert not ok.is_error and ok.structured_content == {"result": "done"}
    # The work was done: the client hears so, and will not retry it.
    assert not committed.is_error and committed.structured_content == {"result": "committed"}
    assert blocked.is_error and "cannot be written (No space left on device); nothing was run" in blocked.content[0].text
    assert not recovered.is_error and recovered.structured_content == {"result": "done"}
    assert marks.read_text() == "ran\nran\n"  # the refused calls never ran

    found = read_records(audit)
    assert [(r["operation_name"], r["operation_status"]) for r in found] == [
        ("work", "started"), ("work", "success"),
        ("break_audit", "started"), ("break_audit", "success"),  # kept in memory, written once the file worked
        ("work", "started"), ("work", "success"),
    ]
    for index in (0, 2, 4):
        pair(found[index:index + 2])
    assert audit_log.verify(audit).ok  # the kept record was chained where it landed
    stderr = errlog.read_text()
    assert "AUDIT RECORD NOT WRITTEN: tool 'break_audit'" in stderr and "further calls are refused" in stderr
    assert f"audit log {audit} cannot be written (Is a directory): tool 'work' refused" in stderr


SLEEPY_TOOL = """\
mxcp: 1
tool:
  name: sleepy
  parameters: [{name: seconds, type: number}]
  return: {type: number}
  source: {code: "SELECT coalesce(CAST(sleep_ms(CAST($seconds * 1000 AS BIGINT)) AS DOUBLE), 0) + $seconds"}
"""


def test_sigkill_during_a_call_leaves_its_intent_record(make_project, tmp_path: Path) -> None:
    root = make_project(tmp_path / "proj", {"tools/sleepy.yml": SLEEPY_TOOL})
    audit = root / "audit" / "logs-default.jsonl"
    process = subprocess.Popen([*mxcp_command(), "serve", "--transport", "stdio"], cwd=root,
                               env=serve_env({"MXCP_AUDIT_ENABLED": "1"}), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for message in (
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
             "params": {"name": "sleepy", "arguments": {"seconds": 60}}},
        ):
            process.stdin.write((json.dumps(message) + "\n").encode())
            process.stdin.flush()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (audit.exists() and audit.read_text()):
            time.sleep(0.05)
        time.sleep(0.2)  # well into the call: nothing else must be written before the kill
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        stop_process(process)
    (intent,) = read_records(audit)
    assert (intent["operation_name"], intent["operation_status"]) == ("sleepy", "started")
    assert intent["input_data"] == {"seconds": 60} and intent["call_id"] and intent["caller_type"] == "stdio"


def test_a_malformed_switch_is_refused_not_read_as_off(make_project, tmp_path, run_mxcp, monkeypatch):
    """`MXCP_AUDIT_ENABLED=ture` once read as false: it switched off an audit log the site config turns on."""
    from mxcp_core import ConfigError
    from mxcp_core.environment import env_flag

    for value, expected in (("1", True), ("Yes", True), ("off", False), ("0", False), ("", None)):
        monkeypatch.setenv("MXCP_AUDIT_ENABLED", value)
        assert env_flag("MXCP_AUDIT_ENABLED") is expected
    monkeypatch.setenv("MXCP_AUDIT_ENABLED", "ture")
    with pytest.raises(ConfigError, match="MXCP_AUDIT_ENABLED='ture' is not a boolean"):
        env_flag("MXCP_AUDIT_ENABLED")
    root = make_project(tmp_path / "p", {"tools/one.yml": "mxcp: 1\ntool:\n  name: one\n  return: {type: integer}\n"
                                                           "  source: {code: \"SELECT 1\"}\n"})
    done = run_mxcp("run", "tool", "one", cwd=root, env={"MXCP_AUDIT_ENABLED": "ture"})
    assert done.returncode == 1 and "MXCP_AUDIT_ENABLED='ture' is not a boolean" in done.stderr
