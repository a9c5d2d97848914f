"""The hostile-client probes of the hardening issue, re-run in one session against a served project.

One `mxcp serve` over streamable HTTP with the built-in SQL tools, an audit log and a secret in the user config.
A client throws every attack at it; afterwards the secret appears nowhere (answers, server log, audit file),
every call got an answer, the server still runs, and an ordinary call works.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp
import pytest

from server_helpers import http_server

SECRET = "pem-line-one-XYZ'\\\"quoted\nsecond-line-of-the-secret-123"
USER = """\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - name: pem
            type: custom
            parameters: {value: "pem-line-one-XYZ'\\\\\\"quoted\\nsecond-line-of-the-secret-123"}
"""

SITE = """\
mxcp: 1
project: demo
profile: default
secrets: [pem]
sql_tools: {enabled: true, max_rows: 100, timeout: 1}
limits: {max_rows: 1000}
profiles:
  default:
    audit: {enabled: true}
"""

PYTHON = """\
import sys
from mxcp.runtime import config


def leak(how: str) -> str:
    value = config.get_secret("pem")["value"]
    if how == "repr":
        raise ValueError(f"cannot use {value!r}")
    if how == "line":
        raise ValueError("bad line: " + value.splitlines()[1])
    if how == "exit":
        sys.exit(1)
    return value


def echo(password: str) -> str:
    raise ValueError(f"wrong password {password!r}")
"""

FILES = {
    "mxcp-site.yml": SITE,
    "python/probe.py": PYTHON,
    "tools/leak.yml": ("mxcp: 1\ntool:\n  name: leak\n  parameters: [{name: how, type: string}]\n"
                       "  return: {type: string}\n  source: {file: ../python/probe.py}\n"),
    "tools/echo.yml": ("mxcp: 1\ntool:\n  name: echo\n  parameters: [{name: password, type: string, sensitive: true}]\n"
                       "  return: {type: string}\n  source: {file: ../python/probe.py}\n"),
    "tools/many.yml": ("mxcp: 1\ntool:\n  name: many\n  return: {type: array, items: {type: object}}\n"
                       "  source: {code: \"SELECT range AS i FROM range(100000000)\"}\n"),
    "tools/outside.yml": "mxcp: 1\ntool:\n  name: outside\n  source: {file: ../../../../../../etc/passwd}\n",
}

SQL_ATTACKS = [
    "SELECT * FROM read_text('~/.mxcp/config.yml')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "COPY (SELECT 1) TO '/tmp/mxcp-hostile-copy.csv'",
    "ATTACH '/tmp/mxcp-hostile.duckdb' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SET memory_limit = '1MB'",
    "CREATE TABLE pwned AS SELECT 1",
    "SELECT count(*) FROM range(100000000000) a WHERE a.range % 7 = 3",
]


@pytest.fixture
def served(make_project, user_config, tmp_path):
    user_config(USER)
    root = make_project(tmp_path / "proj", FILES)
    with http_server(root, "--ignore-errors") as (base, process):
        yield root, base, process


def test_every_probe_is_answered_and_nothing_leaks(served):
    root, base, process = served
    answers: list[Any] = []

    async def body(client):
        for sql in SQL_ATTACKS:
            answers.append(await client.call_tool("execute_sql_query", {"sql": sql}))
        for how in ("repr", "line", "plain", "exit"):
            answers.append(await client.call_tool("leak", {"how": how}))
        answers.append(await client.call_tool("echo", {"password": "hunter2-very-secret"}))
        answers.append(await client.call_tool("many", {}))
        answers.append(await client.call_tool("execute_sql_query", {"sql": "SELECT current_setting('threads') AS t"}))
        return await client.call_tool("execute_sql_query", {"sql": "SELECT 42 AS answer"})

    last = anyio.run(lambda: _client(f"{base}/mcp", body))

    # Raw HTTP: a foreign Host, a foreign Origin, malformed JSON-RPC: refused or answered, never a hang.
    with httpx2.Client(timeout=10) as raw:
        foreign_host = raw.post(f"{base}/mcp", headers={"Host": "evil.example"}, content=b"{}")
        foreign_origin = raw.post(f"{base}/mcp", headers={"Origin": "http://evil.example"}, content=b"{}")
    assert foreign_host.status_code == 421 and foreign_origin.status_code == 403

    assert last.structured_content == {"result": [{"answer": 42}]}
    assert process.poll() is None
    sql_answers, leak_answers = answers[:len(SQL_ATTACKS)], answers[len(SQL_ATTACKS):]
    for sql, answer in zip(SQL_ATTACKS, sql_answers):
        assert answer.is_error, sql
    assert not Path("/tmp/mxcp-hostile-copy.csv").exists() and not Path("/tmp/mxcp-hostile.duckdb").exists()
    repr_error, line_error, plain, exited, echoed, many, threads = leak_answers
    assert repr_error.is_error and line_error.is_error and exited.is_error and echoed.is_error
    assert "called sys.exit(1)" in exited.content[0].text
    # A tool returning the secret: the client asked for it and gets it (the tool's own choice); the audit masks it.
    assert plain.content[0].text == SECRET
    assert many.meta["mxcp/truncated"]["rows_returned"] == 1000
    assert threads.structured_content["result"][0]["t"] not in ("1",)

    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"
    process.terminate()
    process.wait(timeout=10)
    log = process.stderr.read().decode()
    audit = "\n".join(path.read_text() for path in (root / "audit").glob("*.jsonl"))
    seen = [a.content[0].text for a in answers if a.is_error]
    for where, text in (("answers", "\n".join(seen)), ("server log", log), ("audit", audit)):
        for needle in ("second-line-of-the-secret-123", "pem-line-one-XYZ", "hunter2-very-secret",
                       json.dumps(SECRET)[1:-1], repr(SECRET)[1:-1]):
            assert needle not in text, (where, needle)
    assert "Traceback" not in "\n".join(seen)
    # Every call left its intent and its outcome in the audit.
    records = [json.loads(line) for line in audit.splitlines()]
    started = [r for r in records if r["operation_status"] == "started"]
    assert len(started) == len(answers) + 1 == len(records) - len(started)
    # The endpoint reading outside the project was refused and named, not served.
    assert "outside" in log and "outside the project" in log


async def _client(url: str, body: Any) -> Any:
    async with mcp.Client(url) as client:
        return await body(client)
