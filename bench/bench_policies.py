"""What CEL policies cost per call: the same tool with and without 3 input and 3 output conditions.

    python bench/bench_policies.py [--calls 3000] [--rounds 5]

- In-process: `Runtime.call` p50 of the guarded tool minus that of the plain one (goal: at most 50 µs).
- stdio: sequential calls/s of both tools through one `mxcp serve` (goal: the guarded tool at most 5 % slower).
Both tools run the same SQL and return the same object; the caller is a signed-in user whom no condition denies.
Two input conditions read the arguments (which change on every call), so they are evaluated on every call; the
other four read only the caller, and their values are remembered per caller after its first call. The third line
measures the worst case, where every call comes from a new caller (a different role each time), so all six are
evaluated every call. Each figure is the best of several rounds (noise from other processes only ever makes a
round slower). Not a test: nothing here asserts; it prints the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SQL = "SELECT $id AS id, 'Ann' AS name, 5000.5 AS salary, '123-45' AS ssn, $region AS region"
RETURN = """\
      return:
        type: object
        properties:
          id: {type: integer}
          name: {type: string}
          salary: {type: number}
          ssn: {type: string, sensitive: true}
          region: {type: string}"""
POLICIES = """\
      policies:
        input:
          - {condition: "user.role == 'guest'", action: deny, reason: "No guests"}
          - {condition: "id > 1000000", action: deny, reason: "Out of range"}
          - {condition: "region != 'emea' && user.role != 'admin'", action: deny, reason: "EMEA only"}
        output:
          - {condition: "user.role != 'hr'", action: filter_fields, fields: [salary]}
          - {condition: "user.role != 'admin'", action: mask_fields, fields: [name]}
          - {condition: "!('pii.read' in user.permissions)", action: filter_sensitive_fields}"""


def tool(name: str, policies: str) -> str:
    return textwrap.dedent(f"""\
    mxcp: 1
    tool:
      name: {name}
      parameters:
        - {{name: id, type: integer}}
        - {{name: region, type: string, default: emea}}
{RETURN}
      source: {{code: "{SQL}"}}
{policies}
    """)


PROJECT = {
    "mxcp-site.yml": "mxcp: 1\nproject: bench\nprofile: default\n",
    "tools/plain.yml": tool("plain", ""),
    "tools/guarded.yml": tool("guarded", POLICIES),
}
USER = {"username": "bench", "role": "user", "permissions": ["reports.read"]}
CONFIG = """\
mxcp: 1
projects:
  bench:
    profiles:
      default:
        user_context: {username: bench, role: user, permissions: [reports.read]}
"""


def write_project(root: Path) -> None:
    for relative, text in PROJECT.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "config.yml").write_text(CONFIG, encoding="utf-8")


def in_process(root: Path, calls: int, rounds: int) -> tuple[float, float, float]:
    """Best-of-rounds p50 (µs) of `Runtime.call`: plain, guarded, and guarded with a new caller every call."""
    from mxcp_core.execution import Runtime
    from mxcp_core.project import open_project

    new_callers = [{**USER, "role": f"role-{i}"} for i in range(calls * rounds + 200)]
    fresh = iter(new_callers)
    runs = {"plain": ("plain", lambda: USER), "guarded": ("guarded", lambda: USER),
            "new caller": ("guarded", lambda: next(fresh))}
    best = {name: float("inf") for name in runs}
    with Runtime(open_project(root)) as runtime:
        for tool_name in ("plain", "guarded"):  # warm-up: caches, parsed statements, the first cursor
            for i in range(200):
                runtime.call("tool", tool_name, {"id": i}, user=USER)
        for _ in range(rounds):
            for name, (tool_name, caller) in runs.items():
                times = []
                for i in range(calls):
                    user = caller()
                    started = time.perf_counter()
                    runtime.call("tool", tool_name, {"id": i}, user=user)
                    times.append(time.perf_counter() - started)
                best[name] = min(best[name], statistics.median(times) * 1e6)
    return best["plain"], best["guarded"], best["new caller"]


def stdio(root: Path, calls: int, rounds: int) -> tuple[float, float]:
    """Best-of-rounds sequential calls/s of both tools through one stdio server (raw JSON-RPC frames)."""
    env = {**os.environ, "MXCP_CONFIG": str(root / "config.yml")}
    command = [sys.executable, "-c", "from mxcp_core.cli import main; main()", "serve", "--transport", "stdio"]
    server = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, bufsize=0)
    ids = iter(range(1, 10**9))

    def request(method: str, params: dict) -> dict:
        number = next(ids)
        server.stdin.write((json.dumps({"jsonrpc": "2.0", "id": number, "method": method, "params": params})
                            + "\n").encode())
        while True:
            line = server.stdout.readline()
            if not line:
                raise SystemExit("the server closed stdout")
            message = json.loads(line)
            if message.get("id") == number:
                return message

    try:
        request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "bench", "version": "0"}})
        server.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        for name in ("plain", "guarded"):
            answer = request("tools/call", {"name": name, "arguments": {"id": 1}})
            if answer.get("result", {}).get("isError") or "error" in answer:
                raise SystemExit(f"{name} failed: {answer}")
            for i in range(200):
                request("tools/call", {"name": name, "arguments": {"id": i}})
        best = {"plain": 0.0, "guarded": 0.0}
        for _ in range(rounds):
            for name in best:
                started = time.perf_counter()
                for i in range(calls):
                    request("tools/call", {"name": name, "arguments": {"id": i}})
                best[name] = max(best[name], calls / (time.perf_counter() - started))
        return best["plain"], best["guarded"]
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mxcp-bench-policies-"))
    try:
        write_project(root)
        os.environ["MXCP_CONFIG"] = str(root / "config.yml")
        plain, guarded, new_caller = in_process(root, options.calls, options.rounds)
        print(f"in-process p50: plain {plain:.1f} µs, with 3+3 policies {guarded:.1f} µs: "
              f"+{guarded - plain:.1f} µs per call (goal ≤ 50 µs)")
        print(f"in-process p50, a new caller every call (nothing remembered): {new_caller:.1f} µs: "
              f"+{new_caller - plain:.1f} µs per call")
        plain_rate, guarded_rate = stdio(root, options.calls, options.rounds)
        slower = (1 - guarded_rate / plain_rate) * 100
        print(f"stdio, sequential: plain {plain_rate:.0f} calls/s, with policies {guarded_rate:.0f} calls/s: "
              f"{slower:+.1f} % slower (goal ≤ 5 %)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
