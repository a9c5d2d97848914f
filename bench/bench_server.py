"""Benchmarks of `mxcp serve` against the SDK floor, measured in one run (absolute figures drift; ratios don't).

    python bench/bench_server.py [--calls 2000] [--markdown]

- stdio, sequential: a trivial SQL tool and a trivial Python tool vs bench/bare_server_v2.py (the floor),
  both driven by bench/raw_client.py (a raw JSON-RPC load client). Both files are in this folder: nothing outside
  the repository is needed.
- HTTP, 8 concurrent clients (stateless, JSON responses) vs the same bare server on the SDK's HTTP app.
- A 100k-row result vs a bare server answering the same rows in the same shape.
- Start-up to the first answer.
- A trivial call's median latency while a 1-second query runs (sleeping, and CPU-bound) vs without it.
Not a test: nothing here asserts; it prints a table.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW_CLIENT = HERE / "raw_client.py"
BARE_SERVER = HERE / "bare_server_v2.py"
PYTHON = sys.executable
MXCP = [PYTHON, "-c", "from mxcp_core.cli import main; main()"]

PROJECT = {
    # Limits above the 100k-row result measured here (the defaults would cut it to 10,000 rows).
    "mxcp-site.yml": "mxcp: 1\nproject: bench\nprofile: default\nlimits: {max_rows: 1000000, max_result_bytes: 1000000000}\n",
    "tools/hello.yml": """\
        mxcp: 1
        tool:
          name: hello_world
          parameters: [{name: name, type: string}]
          return: {type: string}
          source: {code: "SELECT 'Hello, ' || $name || '!'"}
        """,
    "tools/hello_py.yml": """\
        mxcp: 1
        tool:
          name: hello_py
          parameters: [{name: name, type: string}]
          return: {type: string}
          source: {file: ../python/hello.py}
        """,
    "tools/numbers.yml": """\
        mxcp: 1
        tool:
          name: numbers
          parameters: [{name: n, type: integer}]
          return: {type: array, items: {type: object, properties: {i: {type: integer}, label: {type: string}}}}
          source: {code: "SELECT range AS i, 'row ' || range AS label FROM range($n)"}
        """,
    "tools/sleepy.yml": """\
        mxcp: 1
        tool:
          name: sleepy
          parameters: [{name: seconds, type: number}]
          return: {type: number}
          source: {code: "SELECT coalesce(CAST(sleep_ms(CAST($seconds * 1000 AS BIGINT)) AS DOUBLE), 0) + $seconds"}
        """,
    "tools/burn.yml": """\
        mxcp: 1
        tool:
          name: burn
          parameters: [{name: rows, type: integer}]
          return: {type: integer}
          source: {code: "SELECT count(*) FROM range($rows) t(x) WHERE x % 7 = 3"}
        """,
    "python/hello.py": """\
        def hello_py(name: str) -> str:
            return "Hello, " + name + "!"
        """,
}

# The floor for a big result: the bare server's shape (one DuckDB query per call), answering rows as text + structured.
FLOOR_ROWS = '''
import json, sys, warnings, anyio, duckdb, mcp.types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server
warnings.simplefilter("ignore")
con = duckdb.connect(":memory:")
TOOL = types.Tool(name="numbers", input_schema={"type": "object", "properties": {"n": {"type": "integer"}}})
async def list_tools(ctx, params): return types.ListToolsResult(tools=[TOOL])
async def call_tool(ctx, params):
    cur = con.cursor()
    cur.execute("SELECT range AS i, 'row ' || range AS label FROM range($n)", {"n": params.arguments["n"]})
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(rows))],
                                structured_content={"result": rows})
srv = Server("bare-rows", on_list_tools=list_tools, on_call_tool=call_tool)
async def main():
    async with stdio_server() as (r, w):
        await srv.run(r, w, srv.create_initialization_options())
anyio.run(main)
'''

# The HTTP floor: the bare server's tool on the SDK's streamable HTTP app (stateless, JSON responses).
FLOOR_HTTP = '''
import sys, warnings, duckdb, uvicorn, mcp.types as types
from mcp.server import Server
warnings.simplefilter("ignore")
con = duckdb.connect(":memory:")
TOOL = types.Tool(name="hello_world", input_schema={"type": "object", "properties": {"name": {"type": "string"}}})
async def list_tools(ctx, params): return types.ListToolsResult(tools=[TOOL])
async def call_tool(ctx, params):
    row = con.cursor().execute("SELECT 'Hello, ' || $name || '!'", {"name": params.arguments["name"]}).fetchone()
    return types.CallToolResult(content=[types.TextContent(type="text", text=row[0])])
srv = Server("bare-http", on_list_tools=list_tools, on_call_tool=call_tool,
             get_tool_input_schema=lambda n: TOOL.input_schema)
app = srv.streamable_http_app(json_response=True, stateless_http=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def make_project(folder: Path) -> Path:
    for relative, text in PROJECT.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def env() -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MXCP_")}
    environ["MXCP_CONFIG"] = os.devnull  # hermetic: no user config
    return environ


def raw(project: Path, tool: str, args: dict, calls: int, command: list[str]) -> dict:
    out = subprocess.run(
        [PYTHON, str(RAW_CLIENT), "--cwd", str(project), "--tool", tool, "--args", json.dumps(args), "-n", str(calls),
         "--", *command],
        capture_output=True, text=True, env=env(), check=True, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- HTTP ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def http_load(port: int, clients: int, calls_each: int) -> dict:
    """`clients` keep-alive connections, each posting tools/call requests one after another."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "hello_world", "arguments": {"name": "x"}}})
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(calls_each):
            started = time.perf_counter()
            conn.request("POST", "/mcp", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200 or b'"isError":true' in data or b'"error"' in data:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    for _ in range(2):  # warm-up connection
        threads = [threading.Thread(target=worker) for _ in range(1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    latencies.clear()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"calls_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "errors": errors[0]}


def run_http(command: list[str], port: int, cwd: Path, clients: int, calls_each: int) -> dict:
    process = subprocess.Popen(command, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return http_load(port, clients, calls_each)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


# -- latency under a concurrent long query --------------------------------------------------------------------


class StdioPeer:
    """A minimal JSON-RPC peer over a served process's stdin/stdout, with answers matched by id."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen(command, cwd=cwd, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, bufsize=0)
        # Buffered reads: an unbuffered readline costs one system call per byte (seconds for a 7 MB answer).
        self.reader = io.BufferedReader(self.process.stdout, buffer_size=1 << 20)
        self.next_id = 0
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "bench", "version": "0"}})
        self.notify("notifications/initialized")

    def notify(self, method: str) -> None:
        self.process.stdin.write((json.dumps({"jsonrpc": "2.0", "method": method}) + "\n").encode())

    def send(self, method: str, params: dict) -> int:
        self.next_id += 1
        self.process.stdin.write((json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                                              "params": params}) + "\n").encode())
        return self.next_id

    def receive(self) -> dict:
        while True:
            message = json.loads(self.reader.readline())
            if "id" in message:
                return message

    def request(self, method: str, params: dict) -> dict:
        wanted = self.send(method, params)
        while True:
            message = self.receive()
            if message["id"] == wanted:
                return message

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def latency_under_load(cwd: Path, command: list[str], long_call: tuple[str, dict] | None, calls: int) -> float:
    """Median latency (ms) of sequential trivial calls; with `long_call`, one is always running meanwhile."""
    peer = StdioPeer(command, cwd)
    try:
        for _ in range(50):
            peer.request("tools/call", {"name": "hello_world", "arguments": {"name": "w"}})
        long_id = peer.send("tools/call", {"name": long_call[0], "arguments": long_call[1]}) if long_call else None
        latencies = []
        while len(latencies) < calls:
            started = time.perf_counter()
            wanted = peer.send("tools/call", {"name": "hello_world", "arguments": {"name": "x"}})
            while True:
                message = peer.receive()
                if message["id"] == wanted:
                    break
                if message["id"] == long_id:  # keep one long query running all the time
                    long_id = peer.send("tools/call", {"name": long_call[0], "arguments": long_call[1]})
            latencies.append(time.perf_counter() - started)
            time.sleep(0.002)
        return statistics.median(latencies) * 1000
    finally:
        peer.close()


def timed_calls(cwd: Path, command: list[str], tool: str, args: dict, calls: int) -> float:
    """Median seconds per call, sequential, after one warm-up call."""
    peer = StdioPeer(command, cwd)
    try:
        peer.request("tools/call", {"name": tool, "arguments": args})
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            answer = peer.request("tools/call", {"name": tool, "arguments": args})
            took.append(time.perf_counter() - started)
            assert "result" in answer and not answer["result"].get("isError"), answer
        return statistics.median(took)
    finally:
        peer.close()


def burn_rows_for_one_second(cwd: Path, command: list[str]) -> int:
    """Rows the CPU-bound query must scan to take about one second on this machine, through the server."""
    rows = 50_000_000
    for _ in range(3):
        took = timed_calls(cwd, command, "burn", {"rows": rows}, 1)
        rows = int(rows / took)
    return rows


# -- main ------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mxcp-bench-"))
    project = make_project(folder / "project")
    floor_rows = folder / "floor_rows.py"
    floor_rows.write_text(FLOOR_ROWS)
    floor_http = folder / "floor_http.py"
    floor_http.write_text(FLOOR_HTTP)
    serve_stdio = [*MXCP, "serve", "--transport", "stdio"]
    bare = [PYTHON, str(BARE_SERVER)]
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        raw(project, "hello_world", {"name": "x"}, 200, serve_stdio)  # creates the DuckDB file once
        n = options.calls
        floor = raw(project, "hello_world", {"name": "x"}, n, bare)
        sql = raw(project, "hello_world", {"name": "x"}, n, serve_stdio)
        floor_b = raw(project, "hello_world", {"name": "x"}, n, bare)
        py = raw(project, "hello_py", {"name": "x"}, n, serve_stdio)
        floor_cps = (floor["calls_per_s"] + floor_b["calls_per_s"]) / 2
        floor_p50 = (floor["p50_ms"] + floor_b["p50_ms"]) / 2
        rows.append(("stdio, sequential, trivial SQL tool", f"{sql['calls_per_s']:.0f} calls/s (p50 {sql['p50_ms']:.2f} ms)",
                     f"{floor_cps:.0f} calls/s (p50 {floor_p50:.2f} ms)", f"{sql['calls_per_s'] / floor_cps:.2f}×",
                     "≥ 0.9×"))
        rows.append(("stdio, sequential, trivial Python tool", f"{py['calls_per_s']:.0f} calls/s (p50 {py['p50_ms']:.2f} ms)",
                     f"{floor_cps:.0f} calls/s", f"{py['calls_per_s'] / floor_cps:.2f}×", "≥ 0.9×"))

        port_ours, port_floor = free_port(), free_port()
        ours_http = run_http([*MXCP, "serve", "--transport", "streamable-http", "--host", "127.0.0.1", "--port",
                              str(port_ours), "--stateless", "--json-response"], port_ours, project, 8, max(50, n // 8))
        floor_http_result = run_http([PYTHON, str(floor_http), str(port_floor)], port_floor, project, 8,
                                     max(50, n // 8))
        rows.append(("HTTP, 8 concurrent clients (stateless, JSON)",
                     f"{ours_http['calls_per_s']:.0f} calls/s (p50 {ours_http['p50_ms']:.2f} ms)",
                     f"{floor_http_result['calls_per_s']:.0f} calls/s (p50 {floor_http_result['p50_ms']:.2f} ms)",
                     f"{ours_http['calls_per_s'] / floor_http_result['calls_per_s']:.2f}×", ""))

        big_ours = timed_calls(project, serve_stdio, "numbers", {"n": 100_000}, 10) * 1000
        big_floor = timed_calls(project, [PYTHON, str(floor_rows)], "numbers", {"n": 100_000}, 10) * 1000
        rows.append(("100k-row result (2 columns, 7 MB), median per call", f"{big_ours:.0f} ms",
                     f"{big_floor:.0f} ms", f"{big_floor / big_ours:.2f}× speed", ""))

        starts_ours = [raw(project, "hello_world", {"name": "x"}, 1, serve_stdio)["startup_s"] for _ in range(5)]
        starts_floor = [raw(project, "hello_world", {"name": "x"}, 1, bare)["startup_s"] for _ in range(5)]
        start_ours, start_floor = statistics.median(starts_ours), statistics.median(starts_floor)
        rows.append(("start-up to the first answer (median of 5)", f"{start_ours:.2f} s", f"{start_floor:.2f} s",
                     f"{start_ours - start_floor:+.2f} s", "≤ 1.0 s"))

        quiet = latency_under_load(project, serve_stdio, None, 300)
        sleeping = latency_under_load(project, serve_stdio, ("sleepy", {"seconds": 1.0}), 300)
        burn_rows = burn_rows_for_one_second(project, serve_stdio)
        burning = latency_under_load(project, serve_stdio, ("burn", {"rows": burn_rows}), 300)
        rows.append(("trivial call median while a 1 s query sleeps in DuckDB", f"{sleeping:.2f} ms",
                     f"{quiet:.2f} ms alone", f"{sleeping - quiet:+.2f} ms", "< +5 ms"))
        rows.append(("trivial call median while a 1 s CPU-bound query runs", f"{burning:.2f} ms",
                     f"{quiet:.2f} ms alone", f"{burning - quiet:+.2f} ms", "< +5 ms"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    header = ("benchmark", "mxcp serve", "SDK floor / baseline", "ratio / delta", "target")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
