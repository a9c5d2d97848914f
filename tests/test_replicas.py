"""Stateless replicas behind a real HAProxy: consecutive MCP calls of one client land on different replicas.

Two `mxcp serve --transport http --stateless` subprocesses on free ports, HAProxy (tests/haproxy_server.py) round
robin in front, the MCP SDK's streamable HTTP client talking to HAProxy only. Each answer carries the pid of the
process that computed it (a Python tool), so where a call landed is observed from outside.

- DuckDB: both replicas open the same database file read-only (`--readonly`); a replica killed mid-run is taken
  out by HAProxy's health check and the calls go on; a new file renamed over the old one is served by each replica
  after its own SIGHUP (reload is per replica).
- PostgreSQL (the `warehouse` profile): the SQL engine and the audit sink are the shared PostgreSQL; each call is
  audited exactly once in the shared sink (one intent, one completion), and `mxcp log verify` passes.
"""
from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import duckdb
import mcp
import pytest
from haproxy_server import haproxy, require_haproxy
from server_helpers import (
    free_port,
    health,
    mxcp_command,
    serve_env,
    stop_process,
    wait_for,
    wait_for_port,
)

CALLS = 20

SITE = """\
mxcp: 1
project: replicas
profile: default
profiles:
  default:
    duckdb: {path: data/shared.duckdb}
"""

WHERE_TOOL = """\
mxcp: 1
tool:
  name: where
  description: n squared, the number of rows the replica reads, and the pid of the process that answered
  language: python
  parameters:
    - {name: n, type: integer, description: a number}
  return:
    type: object
    properties:
      square: {type: integer}
      rows: {type: integer}
      pid: {type: integer}
  source: {file: ../python/where.py}
"""

WHERE_PY = """\
import os

from mxcp.runtime import db


def where(n: int) -> dict:
    rows = db.execute("SELECT count(*) AS c FROM items")[0]["c"]
    return {"square": n * n, "rows": rows, "pid": os.getpid()}
"""


def write_project(root: Path, site: str = SITE) -> Path:
    for relative, text in {"mxcp-site.yml": site, "tools/where.yml": WHERE_TOOL, "python/where.py": WHERE_PY}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@contextlib.contextmanager
def replicas(root: Path, count: int, *args: str, env: dict[str, str] | None = None
             ) -> Iterator[list[tuple[int, subprocess.Popen]]]:
    """`count` stateless HTTP replicas of the project on free ports: [(port, process)]; all stopped after."""
    started: list[tuple[int, subprocess.Popen]] = []
    try:
        for index in range(count):
            port = free_port()
            log = open(root.parent / f"replica{index + 1}.log", "ab")  # noqa: SIM115 - closed with the process
            process = subprocess.Popen(
                [*mxcp_command(), "serve", "--transport", "http", "--stateless", "--host", "127.0.0.1",
                 "--port", str(port), *args],
                cwd=root, env=serve_env(env), stdout=subprocess.DEVNULL, stderr=log)
            log.close()
            started.append((port, process))
        for index, (port, process) in enumerate(started):
            try:
                wait_for_port(port, process)
            except AssertionError as exc:
                said = (root.parent / f"replica{index + 1}.log").read_text(errors="replace")
                raise AssertionError(f"replica {index + 1}: {exc}\n{said}") from None
        yield started
    finally:
        for _, process in started:
            stop_process(process)


async def call_many(url: str, count: int, tool: str = "where") -> list[Any]:
    """`count` consecutive calls of one MCP client session; their structured results (errors raise)."""
    results = []
    async with mcp.Client(f"{url}/mcp") as client:
        for n in range(count):
            result = await client.call_tool(tool, {"n": n})
            assert not result.is_error, result.content[0].text
            results.append(result.structured_content)
    return results


def duckdb_file(root: Path, rows: int) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(root / "data" / "shared.duckdb")) as con:
        con.execute("CREATE TABLE items AS SELECT range AS id FROM range(?)", [rows])


@pytest.mark.parametrize("keep_alive", [False, True], ids=["server-close", "keep-alive"])
def test_duckdb_read_only_replicas_behind_haproxy_share_one_file_and_the_calls(tmp_path: Path, keep_alive: bool):
    """Either way HAProxy holds its server-side connections, it balances each request on its own."""
    binary = require_haproxy()
    root = write_project(tmp_path / "project")
    duckdb_file(root, rows=7)
    with replicas(root, 2, "--readonly") as started:
        pids = {process.pid for _, process in started}
        with haproxy([port for port, _ in started], tmp_path / "haproxy", binary, keep_alive=keep_alive) as proxy:
            results = anyio.run(call_many, proxy.url, CALLS)
    assert [r["square"] for r in results] == [n * n for n in range(CALLS)]
    assert {r["rows"] for r in results} == {7}  # both read the one file
    seen = [r["pid"] for r in results]
    # Each replica is one process (the `python -c` of mxcp_command), whose pid answers: both served calls.
    assert set(seen) == pids, f"calls landed on {set(seen)}, replicas are {pids}"
    # Round robin alternates: no replica answers two consecutive calls most of the time.
    assert sum(a != b for a, b in itertools.pairwise(seen)) >= CALLS // 2


def test_a_killed_replica_leaves_the_rotation_and_calls_go_on(tmp_path: Path):
    binary = require_haproxy()
    root = write_project(tmp_path / "project")
    duckdb_file(root, rows=3)
    with replicas(root, 2, "--readonly") as started, \
            haproxy([port for port, _ in started], tmp_path / "haproxy", binary) as proxy:
        first = anyio.run(call_many, proxy.url, 4)
        assert {r["pid"] for r in first} == {process.pid for _, process in started}
        survivor = started[0][1]
        started[1][1].kill()
        started[1][1].wait()
        # At once, before the health check has noticed: requests (each on a new connection, so round robin sends
        # every other one to the dead replica) fail to connect there and are retried on the other
        # (`option redispatch`), not answered 503 after HAProxy's retries on the dead one.
        during = [post_call(proxy.port, n) for n in range(6)]
        proxy.wait_until({"replica1": "UP", "replica2": "DOWN"})
        after = anyio.run(call_many, proxy.url, 6)
    assert [status for status, _ in during] == [200] * 6, during
    assert [answer(body)["pid"] for _, body in during] == [survivor.pid] * 6, during
    assert [r["square"] for r in after] == [n * n for n in range(6)]
    assert {r["pid"] for r in after} == {survivor.pid}


def answer(body: str) -> dict[str, Any]:
    """The structured result of a `tools/call` answered as JSON or as one server-sent event."""
    data = next((line[5:] for line in body.splitlines() if line.startswith("data:")), body)
    message = json.loads(data)
    assert not message["result"].get("isError"), message
    return message["result"]["structuredContent"]


def post_call(port: int, n: int) -> tuple[int, str]:
    """One stateless `tools/call` of `where` posted on a connection of its own: the status and the body."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "where", "arguments": {"n": n}}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/mcp", body=body, headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18"})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_reload_is_per_replica_a_new_file_is_served_by_each_replica_after_its_sighup(tmp_path: Path):
    """Read-only replicas keep the file open, so new data comes as a new file renamed over the old one; each
    replica serves it after its own reload (SIGHUP), and until then the old one: nothing is shared in memory."""
    binary = require_haproxy()
    root = write_project(tmp_path / "project")
    duckdb_file(root, rows=3)
    with replicas(root, 2, "--readonly") as started, \
            haproxy([port for port, _ in started], tmp_path / "haproxy", binary) as proxy:
        assert {r["rows"] for r in anyio.run(call_many, proxy.url, 4)} == {3}
        with duckdb.connect(str(root / "data" / "next.duckdb")) as con:
            con.execute("CREATE TABLE items AS SELECT range AS id FROM range(9)")
        os.replace(root / "data" / "next.duckdb", root / "data" / "shared.duckdb")

        def reload(index: int) -> None:
            port, process = started[index]
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: health(f"http://127.0.0.1:{port}") == (200, {"status": "ok", "project": "replicas",
                                                                           "reloads": 1}))

        reload(0)
        rows_by_pid = {r["pid"]: r["rows"] for r in anyio.run(call_many, proxy.url, 6)}
        assert rows_by_pid == {started[0][1].pid: 9, started[1][1].pid: 3}
        reload(1)
        assert {r["rows"] for r in anyio.run(call_many, proxy.url, 6)} == {9}


# -- PostgreSQL: the shared engine and the shared audit sink ------------------------------------------------

PG_SITE = """\
mxcp: 1
project: replicas
profile: warehouse
profiles:
  warehouse:
    sql: {engine: postgres, secret: pg_main}
    audit: {enabled: true, sink: postgres, secret: pg_main}
  duckdb:
    duckdb: {path: data/shared.duckdb, readonly: true}
    audit: {enabled: true, sink: postgres, secret: pg_main}
"""


def postgres_user_config(path: Path, parameters: dict[str, Any]) -> Path:
    secrets = {"secrets": [{"name": "pg_main", "type": "postgres", "parameters": parameters}]}
    config = {"mxcp": 1, "projects": {"replicas": {"profiles": {"warehouse": secrets, "duckdb": secrets}}}}
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def require_postgres_plugins() -> None:
    """Skip, saying which, while the engine or the audit sink plugin is not there yet."""
    from mxcp_plugins import audit_postgres, engine_postgres

    for module, what in ((engine_postgres, "open_sql_engine"), (audit_postgres, "open_audit_sink")):
        if not hasattr(module, what):
            pytest.skip(f"mxcp_plugins/{module.__name__.rsplit('.', 1)[1]}.py has no {what} yet")


@pytest.mark.parametrize("profile", ["warehouse", "duckdb"])
def test_replicas_behind_haproxy_audit_each_call_once_in_the_shared_postgres_sink(
        profile: str, tmp_path: Path, postgres: Any, pg_database: str, run_mxcp: Any):
    """warehouse: the data in PostgreSQL too; duckdb: read-only replicas of one DuckDB file, audited in PostgreSQL."""
    binary = require_haproxy()
    require_postgres_plugins()
    postgres.sql("CREATE TABLE items AS SELECT generate_series(1, 5) AS id", pg_database)
    root = write_project(tmp_path / "project", PG_SITE)
    rows = 5 if profile == "warehouse" else 4  # which engine answered shows in the count
    if profile == "duckdb":
        duckdb_file(root, rows=4)
    config = postgres_user_config(tmp_path / "config.yml", postgres.parameters(pg_database))
    env = {"MXCP_CONFIG": str(config), "MXCP_PROFILE": profile}
    with replicas(root, 2, env=env) as started:
        pids = {process.pid for _, process in started}
        with haproxy([port for port, _ in started], tmp_path / "haproxy", binary) as proxy:
            results = anyio.run(call_many, proxy.url, CALLS)
    assert [r["square"] for r in results] == [n * n for n in range(CALLS)]
    assert {r["rows"] for r in results} == {rows}
    assert {r["pid"] for r in results} == pids

    environ = {**os.environ, **env}

    def logged(*args: str) -> list[dict[str, Any]]:
        done = run_mxcp("log", "--json-output", "--limit", "0", "--tool", "where", *args, cwd=root, env=environ)
        assert done.returncode == 0, done.stdout + done.stderr
        assert postgres.password not in done.stdout
        return json.loads(done.stdout)["result"]

    completions = logged()  # a call shows by its completion record
    intents = logged("--status", "started")  # every intent record, paired or not
    assert len(completions) == CALLS and len(intents) == CALLS
    assert {r["operation_status"] for r in completions} == {"success"}
    assert len({r["call_id"] for r in completions}) == CALLS  # one completion per call, none twice
    assert {r["call_id"] for r in intents} == {r["call_id"] for r in completions}
    assert sorted(r["input_data"]["n"] for r in completions) == list(range(CALLS))
    # The records came from both processes: each completion holds the answer, with the pid that computed it.
    assert {r["output_data"]["pid"] for r in completions} == pids
    verified = run_mxcp("log", "verify", cwd=root, env=environ)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert postgres.password not in verified.stdout + verified.stderr


# -- the test servers themselves ----------------------------------------------------------------------------------


def test_a_postgres_server_that_fails_to_start_leaves_no_folder_behind(monkeypatch: pytest.MonkeyPatch):
    """tests/postgres_server.py: an initdb that times out (a slow CI machine) raises, and removes its folder."""
    import postgres_server

    if postgres_server.postgres_bindir() is None:
        pytest.skip(postgres_server.SKIP_REASON)
    made: list[Path] = []
    real_init = postgres_server.PostgresServer.__init__

    def init(self: Any, bindir: Path) -> None:
        real_init(self, bindir)
        made.append(self.folder)

    real_call = postgres_server.PostgresServer._call

    def timed_out(self: Any, *args: str, **kwargs: Any) -> Any:
        if args[0] == "initdb":
            raise subprocess.TimeoutExpired(args[0], 60)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(postgres_server.PostgresServer, "__init__", init)
    monkeypatch.setattr(postgres_server.PostgresServer, "_call", timed_out)
    with pytest.raises(subprocess.TimeoutExpired):
        postgres_server.start_postgres()
    assert made and not any(folder.exists() for folder in made)


def test_a_postgres_server_under_root_starts_from_a_private_temporary_folder(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """Under root the server runs as the postgres user, who cannot enter a 0700 TMPDIR (pytest's tmp_path, a CI
    runner's private temp): the cluster's folder goes where that user can reach it, instead of initdb failing."""
    import postgres_server

    if postgres_server.postgres_bindir() is None:
        pytest.skip(postgres_server.SKIP_REASON)
    if postgres_server._run_as() is None:
        pytest.skip("only under root does the server run as another user")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    server = postgres_server.start_postgres()
    try:
        assert server.sql("SELECT 1") == [(1,)]
    finally:
        server.stop()
    assert not server.folder.exists()
