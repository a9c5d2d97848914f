"""A project exercising every endpoint kind, and helpers to serve it in a subprocess (stdio and HTTP)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SECRET_VALUE = "s3cr3t-token-98765"

USER_CONFIG = f"""\
mxcp: 1
projects:
  demo:
    profiles:
      default:
        secrets:
          - name: api
            type: api
            parameters: {{value: "{SECRET_VALUE}"}}
"""

# A query DuckDB needs many seconds for, and that it can interrupt at any time.
SLOW_SQL = "SELECT count(*) AS n FROM range(1000000000000) t(x) WHERE x % 7 = 3"

PROJECT = {
    "mxcp-site.yml": "mxcp: 1\nproject: demo\nprofile: default\n",
    "tools/hello.yml": """\
        mxcp: 1
        tool:
          name: hello_world
          description: Greets someone.
          parameters:
            - {name: name, type: string, description: Who to greet, minLength: 1, pattern: "^[A-Za-z ]+$"}
          return: {type: string}
          annotations: {title: Hello, readOnlyHint: true, idempotentHint: true}
          source: {code: "SELECT 'Hello, ' || $name || '!'"}
        """,
    "tools/get_user.yml": """\
        mxcp: 1
        tool:
          name: get_user
          parameters:
            - {name: id, type: integer, minimum: 1}
          return:
            type: object
            properties:
              id: {type: integer}
              name: {type: string}
          source: {code: "SELECT id, name FROM users WHERE id = $id"}
        """,
    "tools/numbers.yml": """\
        mxcp: 1
        tool:
          name: numbers
          parameters:
            - {name: n, type: integer}
          return: {type: array, items: {type: object, properties: {i: {type: integer}}}}
          source: {code: "SELECT range AS i FROM range($n)"}
        """,
    "tools/slow.yml": f"""\
        mxcp: 1
        tool:
          name: slow
          return: {{type: integer}}
          source: {{code: "{SLOW_SQL}"}}
        """,
    "tools/slow_limited.yml": f"""\
        mxcp: 1
        tool:
          name: slow_limited
          timeout: 0.5
          return: {{type: integer}}
          source: {{code: "{SLOW_SQL}"}}
        """,
    "tools/sleepy.yml": """\
        mxcp: 1
        tool:
          name: sleepy
          parameters: [{name: seconds, type: number}]
          return: {type: number}
          source: {code: "SELECT coalesce(CAST(sleep_ms(CAST($seconds * 1000 AS BIGINT)) AS DOUBLE), 0) + $seconds"}
        """,
    "tools/shout.yml": """\
        mxcp: 1
        tool:
          name: shout
          parameters: [{name: text, type: string}]
          return: {type: string}
          source: {file: ../python/endpoints.py}
        """,
    "tools/fail.yml": """\
        mxcp: 1
        tool:
          name: fail
          parameters: [{name: password, type: string, sensitive: true}]
          return: {type: string}
          source: {file: ../python/endpoints.py}
        """,
    "tools/notify.yml": """\
        mxcp: 1
        tool:
          name: notify
          parameters: [{name: steps, type: integer}]
          return: {type: integer}
          source: {file: ../python/endpoints.py}
        """,
    "tools/users_count.yml": """\
        mxcp: 1
        tool:
          name: users_count
          return: {type: integer}
          source: {code: "SELECT count(*) FROM users"}
        """,
    "tools/reload.yml": """\
        mxcp: 1
        tool:
          name: reload_data
          parameters: [{name: rows, type: integer}]
          return: {type: string}
          source: {file: ../python/endpoints.py}
        """,
    "resources/settings.yml": """\
        mxcp: 1
        resource:
          uri: "config://settings"
          name: settings
          description: App settings.
          mime_type: application/json
          return: {type: object, properties: {mode: {type: string}}}
          source: {code: "SELECT 'fast' AS mode"}
        """,
    "resources/user.yml": """\
        mxcp: 1
        resource:
          uri: "users://{id}"
          name: user
          parameters: [{name: id, type: integer}]
          return: {type: object, properties: {id: {type: integer}, name: {type: string}}}
          source: {code: "SELECT id, name FROM users WHERE id = $id"}
        """,
    "prompts/greet.yml": """\
        mxcp: 1
        prompt:
          name: greet
          description: A greeting prompt.
          parameters:
            - {name: who, type: string, description: Person}
            - {name: times, type: integer, default: 1}
          messages:
            - {role: assistant, type: text, prompt: "I am friendly."}
            - {role: user, type: text, prompt: "Greet {{ who }} {{ times }} time(s)."}
        """,
    "python/endpoints.py": """\
        import os
        from mxcp.runtime import db, get_secret, on_init, on_shutdown, reload_duckdb, mcp_log, report_progress

        MARKS = os.environ.get("MXCP_TEST_MARKS")

        def mark(text):
            if MARKS:
                with open(MARKS, "a") as f:
                    f.write(text + "\\n")

        print("imported endpoints: stdout must not reach the protocol stream")

        @on_init
        def setup():
            print("on_init printing to stdout")
            db.execute("CREATE TABLE IF NOT EXISTS users AS SELECT * FROM (VALUES (1, 'Ada'), (2, 'Linus')) t(id, name)")
            mark("init")

        @on_shutdown
        def teardown():
            mark("shutdown")

        def shout(text: str) -> str:
            print("shout was called with", text)
            return text.upper() + "!"

        def fail(password: str) -> str:
            token = get_secret("api")["value"]
            raise RuntimeError(f"cannot open /srv/app/data/{password}.txt with {token}")

        async def notify(steps: int) -> int:
            for step in range(steps):
                await mcp_log("info", f"step {step}")
                await report_progress(step + 1, steps, f"step {step + 1}")
            return steps

        def reload_data(rows: int) -> str:
            def payload():
                import duckdb
                con = duckdb.connect("data/db-default.duckdb")
                con.execute("INSERT INTO users SELECT 100 + range, 'extra' FROM range(?)", [rows])
                con.close()
                mark("payload")
            reload_duckdb(payload, "test reload")
            return "scheduled"
        """,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a served subprocess needs: the test's MXCP_CONFIG and HOME, no stray MXCP_* variables."""
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "MXCP_CONFIG", "PYTHONPATH", "TMPDIR")}
    return {**keep, **(extra or {})}


def mxcp_command() -> list[str]:
    return [sys.executable, "-c", "from mxcp_core.cli import main; main()"]


@contextlib.contextmanager
def http_server(root: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mxcp serve --transport streamable-http` on 127.0.0.1 with a free port; yields (base URL, process)."""
    port = free_port()
    process = subprocess.Popen(
        [*mxcp_command(), "serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port", str(port),
         *args],
        cwd=root, env=serve_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop_process(process)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            said = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AssertionError(f"server exited with code {process.returncode}: {said}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("server did not start listening")


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None:
            stream.close()


def run_http(url: str, body: Callable[[Any], Any]) -> Any:
    """`await body(client)` with an MCP client (the SDK's) connected to `url`."""
    import anyio
    import mcp

    async def main() -> Any:
        async with mcp.Client(url) as client:
            return await body(client)

    return anyio.run(main)


def text(result: Any) -> str:
    return result.content[0].text


def health(base: str) -> tuple[int, dict[str, Any]]:
    """GET /health: the status code and the JSON body."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(predicate: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
