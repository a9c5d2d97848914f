"""What telemetry costs a call: `mxcp serve` over stdio, telemetry off vs on, measured in the same run.

    python bench/bench_telemetry.py [--calls 2000] [--rounds 3]

A trivial SQL tool with one input policy, called sequentially by a raw JSON-RPC client (so the client's own cost
stays small). "on" exports every span and metric over OTLP/HTTP to a sink on 127.0.0.1 that accepts and drops
them (batched in the background, as in production). Rounds alternate off/on; the medians and their ratio are
printed. Not a test: nothing here asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MXCP = [sys.executable, "-c", "from mxcp_core.cli import main; main()"]
PROJECT = {
    "mxcp-site.yml": "mxcp: 1\nproject: bench\nprofile: default\n",
    "tools/hello.yml": """\
        mxcp: 1
        tool:
          name: hello
          parameters: [{name: name, type: string}]
          return: {type: string}
          source: {code: "SELECT 'Hello, ' || $name || '!'"}
          policies:
            input: [{condition: "name == 'nobody'", action: deny}]
        """,
}


class Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Sink.received += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def calls_per_second(project: Path, config: Path, calls: int, extra_env: dict[str, str] | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "TMPDIR")}
    env["MXCP_CONFIG"] = str(config)
    env.update(extra_env or {})
    proc = subprocess.Popen([*MXCP, "serve", "--transport", "stdio"], cwd=project, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)

    def send(message: dict) -> None:
        proc.stdin.write((json.dumps(message) + "\n").encode())

    def answer() -> dict:
        while True:
            message = json.loads(proc.stdout.readline())
            if "id" in message:
                return message

    send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}})
    answer()
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for number in range(1, 51):  # warm-up
        send({"jsonrpc": "2.0", "id": number, "method": "tools/call",
              "params": {"name": "hello", "arguments": {"name": "Ada"}}})
        answer()
    started = time.perf_counter()
    for number in range(100, 100 + calls):
        send({"jsonrpc": "2.0", "id": number, "method": "tools/call",
              "params": {"name": "hello", "arguments": {"name": "Ada"}}})
        reply = answer()
        assert "error" not in reply and not reply["result"].get("isError"), reply
    elapsed = time.perf_counter() - started
    proc.stdin.close()
    proc.wait(timeout=30)
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder) / "project"
        for relative, text in PROJECT.items():
            (project / relative).parent.mkdir(parents=True, exist_ok=True)
            (project / relative).write_text(textwrap.dedent(text))
        profile = "mxcp: 1\nprojects:\n  bench:\n    profiles:\n      default:\n        telemetry: {}\n"
        off, on = Path(folder) / "off.yml", Path(folder) / "on.yml"
        off.write_text(profile.replace("{}", "{enabled: false}"))
        endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
        on.write_text(profile.replace("{}", f"{{enabled: true, endpoint: '{endpoint}', "
                                            "metrics: {export_interval: 1}}"))
        # The standard sampler variables: 1 trace in 10 recorded (metrics still count every call).
        sampled = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        variants = {"off": (off, None), "on": (on, None), "on, 10 % of traces sampled": (on, sampled)}
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(options.rounds):
            for name, (config, extra) in variants.items():
                results[name].append(calls_per_second(project, config, options.calls, extra))
    sink.shutdown()
    off_rate = statistics.median(results["off"])
    print(f"| telemetry | calls/s (median of {options.rounds}) | vs off | rounds |")
    print("|---|---|---|---|")
    for name, rates in results.items():
        rate = statistics.median(rates)
        print(f"| {name} | {rate:.0f} | {rate / off_rate:.2f} | {', '.join(f'{r:.0f}' for r in rates)} |")
    print(f"\n{Sink.received} OTLP exports received")


if __name__ == "__main__":
    main()
