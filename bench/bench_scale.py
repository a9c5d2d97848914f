"""Scaling out: stateless replicas behind HAProxy, PostgreSQL vs DuckDB, and the shared audit sink's capacity.

    python bench/bench_scale.py [--quick] [--calls 3000] [--clients 8]

Starts everything it needs on 127.0.0.1 and stops it after: a PostgreSQL server (tests/postgres_server.py, from the
system's postgresql-15 package), HAProxy (tests/haproxy_server.py, from the haproxy package), and `mxcp serve
--transport http --stateless --json-response` replicas. The load is a client like bench/bench_server.py's, with
CPU accounting: `--clients` keep-alive connections, each posting `tools/call` of a trivial tool one after another.
It prints, in one run:

- the machine: its cores (the replicas, HAProxy, PostgreSQL and the load client all share them);
- trivial-tool calls/s on DuckDB straight to one replica (the reference), and through HAProxy with 1 and with 2
  replicas (both replicas open one DuckDB file read-only);
- the same tool on the PostgreSQL engine through HAProxy with 1 and 2 replicas (a transaction per call: the caller's
  identity set, the statement, the commit);
- one replica on the PostgreSQL engine with the postgres audit sink on (two records per call), calls/s;
- the postgres audit sink's write capacity: records/s written by a direct loop over the sink, with 1 writer thread
  and with several;
- what follows: how many replicas' audit records one PostgreSQL takes (sink records/s over 2 x a replica's
  calls/s).
Ratios compare figures of the same run; absolute figures depend on the machine. `--quick` is a smoke test (few
calls, short loops): its figures are not measurements. Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (REPO, REPO / "tests", HERE):  # the bench runs from a clean clone, importing by path
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from haproxy_server import haproxy, haproxy_binary
from postgres_server import PostgresServer, PostgresUnavailable, launch_postgres
from server_helpers import free_port, stop_process, wait_for_port

MXCP = [sys.executable, "-c", "from mxcp_core.cli import main; main()"]

SITE = """\
mxcp: 1
project: scale
profile: default
profiles:
  default:
    duckdb: {path: data/scale.duckdb}
  warehouse:
    sql: {engine: postgres, secret: pg_main}
  audited:
    sql: {engine: postgres, secret: pg_main}
    audit: {enabled: true, sink: postgres, secret: pg_main}
"""

# The tool of bench_server's load client: the same SQL runs on DuckDB and on PostgreSQL.
HELLO = """\
mxcp: 1
tool:
  name: hello_world
  parameters: [{name: name, type: string, description: who}]
  return: {type: string}
  source: {code: "SELECT 'Hello, ' || $name || '!'"}
"""


def make_project(folder: Path, pg: PostgresServer | None, database: str | None) -> tuple[Path, dict[str, str]]:
    """The project, its DuckDB file, and the environment its processes run with (user config, no MXCP_*)."""
    (folder / "tools").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "mxcp-site.yml").write_text(SITE, encoding="utf-8")
    (folder / "tools" / "hello.yml").write_text(HELLO, encoding="utf-8")
    import duckdb

    duckdb.connect(str(folder / "data" / "scale.duckdb")).close()  # read-only replicas need the file to exist
    config: dict[str, Any] = {"mxcp": 1, "projects": {"scale": {"profiles": {}}}}
    if pg is not None:
        secret = {"secrets": [{"name": "pg_main", "type": "postgres", "parameters": pg.parameters(database)}]}
        config["projects"]["scale"]["profiles"] = {"warehouse": secret, "audited": secret}
    user_config = folder.parent / "config.yml"
    user_config.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MXCP_")}
    environ["MXCP_CONFIG"] = str(user_config)
    return folder, environ


@contextlib.contextmanager
def replicas(root: Path, environ: dict[str, str], count: int, *args: str) -> Iterator[list[tuple[int, int]]]:
    """`count` stateless replicas on free ports (started side by side): [(port, pid)]. Stopped after."""
    started: list[tuple[int, subprocess.Popen]] = []
    log_path = root.parent / "replicas.log"
    try:
        for _ in range(count):
            port = free_port()
            with open(log_path, "ab") as log:  # a file, not a pipe: a full pipe would stall the replica
                process = subprocess.Popen(
                    [*MXCP, "serve", "--transport", "http", "--stateless", "--json-response", "--host", "127.0.0.1",
                     "--port", str(port), *args],
                    cwd=root, env=environ, stdout=subprocess.DEVNULL, stderr=log)
            started.append((port, process))
        for port, process in started:
            try:
                wait_for_port(port, process, timeout=60)
            except AssertionError as exc:
                raise RuntimeError(f"{exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
        yield [(port, process.pid) for port, process in started]
    finally:
        for _, process in started:
            stop_process(process)


# -- CPU accounting: where the cores went (Linux /proc; figures are left out elsewhere) ------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each process has used so far (threads included); gone processes left out."""
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)
    return used


def postgres_pids(data: Path) -> list[int]:
    """The bench's own PostgreSQL server: the postmaster of the cluster in `data` and its children (backends,
    background workers). Not every process named postgres: a system cluster (Debian starts one on 5432 when the
    package is installed) or another test run's servers would count as the bench's CPU."""
    try:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    found = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster:
                found.append(int(entry.name))
    return found


def http_load(port: int, clients: int, calls: int, watched: dict[str, Callable[[], list[int]]]) -> dict[str, Any]:
    """`clients` keep-alive connections each posting `tools/call` requests one after another (as bench_server's
    HTTP figures do), after a warm-up; calls/s, median latency, and the CPU each watched group used per call."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "hello_world", "arguments": {"name": "x"}}})
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    each = max(1, calls // clients)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        try:
            for _ in range(count):
                started = time.perf_counter()
                conn.request("POST", "/mcp", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200 or b"Hello, x!" not in data or b'"isError":true' in data:
                    with lock:
                        errors.append(f"{response.status} {data[:200]!r}")
        finally:
            conn.close()
        with lock:
            latencies.extend(mine)

    def run(threads: list[threading.Thread]) -> None:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    run([threading.Thread(target=worker, args=(min(each, 200),)) for _ in range(clients)])  # warm-up
    latencies.clear()
    # The processes are listed after the warm-up, so PostgreSQL backends the pools opened meanwhile count.
    before = {name: cpu_seconds(pids()) for name, pids in watched.items()}
    client_before = time.process_time()
    started = time.perf_counter()
    run([threading.Thread(target=worker, args=(each,)) for _ in range(clients)])
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    after = {name: cpu_seconds(list(before[name])) for name in watched}
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed on port {port}, e.g. {errors[0]}")
    done = len(latencies)
    latencies.sort()
    cpu_ms = {name: sum(after[name][pid] - before[name][pid] for pid in after[name]) * 1000 / done
              for name in watched if before[name]}
    cpu_ms["client"] = client_cpu * 1000 / done
    return {"calls_per_s": done / elapsed, "p50_ms": latencies[done // 2] * 1000, "cpu_ms": cpu_ms}


def cpu_note(result: dict[str, Any]) -> str:
    """`CPU per call: replicas 1.02 ms, HAProxy 0.10 ms, ...` (what a call costs each part, summed over cores)."""
    names = {"replicas": "replicas", "haproxy": "HAProxy", "postgres": "PostgreSQL", "client": "load client"}
    parts = [f"{names[name]} {ms:.2f}" for name, ms in result["cpu_ms"].items()]
    return "      CPU ms per call: " + ", ".join(parts)


def direct(root: Path, environ: dict[str, str], clients: int, calls: int, *args: str) -> dict[str, Any]:
    with replicas(root, environ, 1, *args) as started:
        (port, pid), = started
        return http_load(port, clients, calls, {"replicas": lambda: [pid]})


def through_haproxy(root: Path, environ: dict[str, str], count: int, clients: int, calls: int, folder: Path,
                    *args: str, pg: PostgresServer | None = None) -> dict[str, Any]:
    with replicas(root, environ, count, *args) as started, \
            haproxy([port for port, _ in started], folder / f"haproxy-{uuid.uuid4().hex[:6]}", keep_alive=True) as proxy:
        watched = {"replicas": lambda: [pid for _, pid in started], "haproxy": lambda: [proxy.process.pid]}
        if pg is not None:
            watched["postgres"] = lambda: postgres_pids(pg.data)
        return http_load(proxy.port, clients, calls, watched)


# -- the audit sink ---------------------------------------------------------------------------------------------


def open_postgres_sink(root: Path, environ: dict[str, str]) -> Any:
    """The profile `audited`'s sink, opened as a call would (the `open_audit_sink` hook), in this process."""
    os.environ["MXCP_CONFIG"] = environ["MXCP_CONFIG"]
    from mxcp_core import open_project
    from mxcp_plugins.audit import open_sink

    project = open_project(root, profile="audited")
    settings = project.context.plugin_config("audit", scope="site_profile")
    return open_sink(project.hooks, project.context, settings)


def sample_record() -> bytes:
    """A completion record of typical size (about 600 bytes)."""
    from mxcp_plugins import audit

    return audit.record_body({
        "schema_name": "mxcp.audit", "schema_version": 3, "record_id": uuid.uuid4().hex, "call_id": uuid.uuid4().hex,
        "timestamp": "2026-11-30T08:00:00.000000+00:00", "operation_type": "tool", "operation_name": "search_orders",
        "operation_status": "success", "duration_ms": 3.141, "caller_type": "http", "user_id": "ann@example.com",
        "session_id": None, "trace_id": uuid.uuid4().hex,
        "input_data": {"customer": "c-1042", "since": "2026-01-01", "limit": 50},
        "output_data": [{"id": i, "total": 10.5 * i, "status": "shipped"} for i in range(4)],
        "error": None, "policies_evaluated": [], "policy_decision": None, "policy_reason": None,
    })


def sink_capacity(sink: Any, writers: int, records: int) -> float:
    """Records/s that `writers` threads, each writing `records // writers` records in a loop, get into the sink."""
    body = sample_record()
    each = max(1, records // writers)
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(each):
                sink.write(body, fsync=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    sink.write(body, fsync=False)  # warm: the connection and the table exist
    threads = [threading.Thread(target=writer) for _ in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"the sink failed: {failures[0]!r}")
    return each * writers / elapsed


# -- the run ----------------------------------------------------------------------------------------------------


def start_postgres() -> tuple[PostgresServer | None, str]:
    """The tests' server (tests/postgres_server.py), or None and what is missing."""
    try:
        return launch_postgres(), ""
    except PostgresUnavailable as exc:
        return None, str(exc)


def postgres_version(server: PostgresServer) -> str:
    return server.sql("SHOW server_version")[0][0]


def haproxy_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return done.stdout.split("\n", 1)[0].replace("HAProxy version ", "").split(" ")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few calls, short loops")
    parser.add_argument("--calls", type=int, default=3000, help="calls per figure (default 3000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent load connections (default 8)")
    parser.add_argument("--records", type=int, default=20000, help="records per sink figure (default 20000)")
    parser.add_argument("--writers", type=int, default=4, help="writer threads of the sink's second figure")
    options = parser.parse_args()
    calls, records, clients = options.calls, options.records, options.clients
    if options.quick:
        calls, records, clients = 80, 200, 4
    binary = haproxy_binary()
    if binary is None:
        sys.exit("HAProxy is not installed: apt-get install haproxy")
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="mxcp-bench-scale-"))
    pg: PostgresServer | None = None
    try:
        pg, why_not = start_postgres()
        database = pg.fresh_database("bench") if pg else None
        root, environ = make_project(workdir / "project", pg, database)
        print(f"machine: {cores} cores ({platform.machine()}, Python {platform.python_version()}); "
              f"HAProxy {haproxy_version(binary)}; "
              + (f"PostgreSQL {postgres_version(pg)}" if pg else f"PostgreSQL: none ({why_not})"))
        print(f"load: {clients} keep-alive clients, {calls} calls of a trivial SQL tool per figure"
              + (" (--quick: a smoke test, not a measurement)" if options.quick else ""))
        print("Every replica, HAProxy, PostgreSQL and the load client share these cores.\n")

        reference = direct(root, environ, clients, calls, "--readonly")
        one = through_haproxy(root, environ, 1, clients, calls, workdir, "--readonly")
        two = through_haproxy(root, environ, 2, clients, calls, workdir, "--readonly")
        print("DuckDB (one file, opened read-only by every replica)")
        print(f"  direct to 1 replica (reference):        {reference['calls_per_s']:8.1f} calls/s  "
              f"p50 {reference['p50_ms']:.2f} ms")
        print(cpu_note(reference))
        print(f"  through HAProxy, 1 replica:             {one['calls_per_s']:8.1f} calls/s  "
              f"p50 {one['p50_ms']:.2f} ms  (x{one['calls_per_s'] / reference['calls_per_s']:.2f} of direct)")
        print(cpu_note(one))
        print(f"  through HAProxy, 2 replicas:            {two['calls_per_s']:8.1f} calls/s  "
              f"p50 {two['p50_ms']:.2f} ms  (x{two['calls_per_s'] / one['calls_per_s']:.2f} of 1 replica)")
        print(cpu_note(two))
        replica_ms = one["cpu_ms"].get("replicas")
        if pg is None:
            print(f"\nPostgreSQL figures skipped: {why_not}")
            return

        pg_one = through_haproxy(root, environ, 1, clients, calls, workdir, "--profile", "warehouse", pg=pg)
        pg_two = through_haproxy(root, environ, 2, clients, calls, workdir, "--profile", "warehouse", pg=pg)
        print("\nPostgreSQL engine (a transaction per call, the caller in SET LOCAL settings)")
        print(f"  through HAProxy, 1 replica:             {pg_one['calls_per_s']:8.1f} calls/s  "
              f"p50 {pg_one['p50_ms']:.2f} ms  (x{pg_one['calls_per_s'] / one['calls_per_s']:.2f} of DuckDB)")
        print(cpu_note(pg_one))
        print(f"  through HAProxy, 2 replicas:            {pg_two['calls_per_s']:8.1f} calls/s  "
              f"p50 {pg_two['p50_ms']:.2f} ms  (x{pg_two['calls_per_s'] / pg_one['calls_per_s']:.2f} of 1 replica)")
        print(cpu_note(pg_two))

        audited = through_haproxy(root, environ, 1, clients, calls, workdir, "--profile", "audited", pg=pg)
        sink = open_postgres_sink(root, environ)
        try:
            single = sink_capacity(sink, 1, records)
            several = sink_capacity(sink, options.writers, records)
        finally:
            sink.close()
        best = max(single, several)
        produced = 2 * audited["calls_per_s"]
        print("\nThe shared postgres audit sink (2 records per call: intent and completion)")
        print(f"  1 replica, PostgreSQL engine, audited:  {audited['calls_per_s']:8.1f} calls/s  "
              f"(x{audited['calls_per_s'] / pg_one['calls_per_s']:.2f} of unaudited) = {produced:.1f} records/s")
        print(cpu_note(audited))
        print(f"  sink write capacity, 1 writer:          {single:8.1f} records/s")
        print(f"  sink write capacity, {options.writers} writers:         {several:8.1f} records/s  "
              f"(x{several / single:.2f} of 1 writer)")
        print(f"  replicas one PostgreSQL can audit:      {best / produced:8.1f}  "
              f"(best sink records/s over the {produced:.1f} records/s one audited replica writes)")

        print("\nModel (CPU per call measured above; each replica on a core of its own, the load elsewhere)")
        if replica_ms:
            print(f"  one core per DuckDB replica:            {1000 / replica_ms:8.1f} calls/s  "
                  f"({replica_ms:.2f} ms of replica CPU per call); N replicas: N times that")
        pg_ms = pg_one["cpu_ms"].get("replicas")
        pg_server_ms = pg_one["cpu_ms"].get("postgres")
        if pg_ms and pg_server_ms is not None:
            print(f"  one core per PostgreSQL-engine replica: {1000 / pg_ms:8.1f} calls/s  "
                  f"(replica {pg_ms:.2f} ms + PostgreSQL {pg_server_ms:.2f} ms of CPU per call)")
        audited_ms = audited["cpu_ms"].get("replicas")
        if audited_ms:
            per_core = 1000 / audited_ms
            print(f"  one core per audited replica:           {per_core:8.1f} calls/s = {2 * per_core:.1f} records/s; "
                  f"one PostgreSQL audits {best / (2 * per_core):.1f} such replicas")
    finally:
        if pg is not None:
            pg.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
