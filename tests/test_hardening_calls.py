"""Calls that misbehave (sys.exit, never return, flood, huge results) and reloads that fail, through a served project.

Each test runs `mxcp serve` in a subprocess and talks to it with the SDK's MCP client (HTTP on 127.0.0.1, or stdio).
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.client.stdio import StdioServerParameters, stdio_client

from server_helpers import health, http_server, mxcp_command, run_http, serve_env, text, wait_for

SITE = "mxcp: 1\nproject: demo\nprofile: default\n"

PYTHON = """\
import os
import sys
import time

from mxcp.runtime import on_init


@on_init
def setup():
    marker = os.path.join(os.path.dirname(__file__), "..", "fail_init")
    if os.path.exists(marker):
        raise RuntimeError("on_init cannot reach the warehouse")
    with open(os.path.join(os.path.dirname(__file__), "..", "inits.txt"), "a") as handle:
        handle.write("init\\n")


def leave(code: int) -> str:
    sys.exit(code)


async def leave_async() -> str:
    raise SystemExit(4)


def interrupt_me() -> str:
    raise KeyboardInterrupt


def spin() -> str:
    while True:  # never returns: only an interrupt inside the thread stops it
        pass


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def ok() -> str:
    return "fine"


def many(n: int) -> list:
    return [{"i": i, "pad": "x" * 50} for i in range(n)]


def blob(size: int) -> str:
    return "y" * size
"""


def tool(name: str, *, parameters: str = "[]", returns: str = "{type: string}", extra: str = "") -> str:
    return (f"mxcp: 1\ntool:\n  name: {name}\n  parameters: {parameters}\n  return: {returns}\n{extra}"
            f"  source: {{file: ../python/calls.py}}\n")


FILES = {
    "python/calls.py": PYTHON,
    "tools/leave.yml": tool("leave", parameters="[{name: code, type: integer}]"),
    "tools/leave_async.yml": tool("leave_async"),
    "tools/interrupt_me.yml": tool("interrupt_me"),
    "tools/spin.yml": tool("spin", extra="  timeout: 1\n"),
    "tools/nap.yml": tool("nap", parameters="[{name: seconds, type: number}]", returns="{type: number}"),
    "tools/ok.yml": tool("ok"),
    "tools/many.yml": tool("many", parameters="[{name: n, type: integer}]",
                           returns="{type: array, items: {type: object}}"),
    "tools/blob.yml": tool("blob", parameters="[{name: size, type: integer}]"),
    "tools/rows.yml": ("mxcp: 1\ntool:\n  name: rows\n  parameters: [{name: n, type: integer}]\n"
                       "  return: {type: array, items: {type: object, properties: {i: {type: integer}}}}\n"
                       "  source: {code: \"SELECT range AS i FROM range($n)\"}\n"),
}


@pytest.fixture
def project(make_project, user_config, tmp_path):
    user_config("mxcp: 1\n")

    def make(site_extra: str = "") -> Path:
        return make_project(tmp_path / "proj", {**FILES, "mxcp-site.yml": SITE + site_extra})

    return make


# -- 3. sys.exit() fails the call, never the server -------------------------------------------------------


def test_sys_exit_and_base_exceptions_fail_only_their_call_over_http(project):
    root = project()

    async def body(client):
        answers = [await client.call_tool("leave", {"code": 3}), await client.call_tool("leave_async", {}),
                   await client.call_tool("interrupt_me", {})]
        return answers, await client.call_tool("ok", {})

    with http_server(root) as (base, process):
        (leave, leave_async, interrupted), after = run_http(f"{base}/mcp", body)
        assert process.poll() is None
    assert leave.is_error and "called sys.exit(3)" in text(leave)
    assert leave_async.is_error and "sys.exit(4)" in text(leave_async)
    assert interrupted.is_error and "KeyboardInterrupt" in text(interrupted)
    assert text(after) == "fine"


def test_sys_exit_fails_only_its_call_over_stdio(project):
    root = project()
    params = StdioServerParameters(command=mxcp_command()[0], args=[*mxcp_command()[1:], "serve", "--transport", "stdio"], cwd=str(root),
                                   env=serve_env())

    async def main():
        with open(root / "stderr.txt", "w") as errlog:
            async with mcp.Client(stdio_client(params, errlog=errlog)) as client:
                # Twice: the async one also must leave the user event loop running for the next call.
                return [await client.call_tool(name, args) for name, args in
                        (("leave", {"code": 0}), ("leave_async", {}), ("leave_async", {}), ("ok", {}))]

    exited, async_once, async_twice, after = anyio.run(main)
    assert exited.is_error and "called sys.exit(0)" in text(exited)
    assert async_once.is_error and async_twice.is_error
    assert text(after) == "fine"


# -- 6. timeouts, a bounded pool, "server busy" --------------------------------------------------------------


def test_a_call_stuck_in_python_times_out_and_its_worker_comes_back(project):
    # One worker: if the spinning thread were not reclaimed, `ok` would wait behind it and time out too.
    root = project("limits: {workers: 1, queue: 4}\ntimeout: 5\n")

    async def body(client):
        return await client.call_tool("spin", {}), await client.call_tool("ok", {})

    with http_server(root) as (base, _):
        spun, after = run_http(f"{base}/mcp", body)
    assert spun.is_error and "timed out after 1s" in text(spun)
    assert text(after) == "fine"


def test_a_call_stuck_in_a_blocking_c_call_is_replaced_by_a_new_worker(project):
    # time.sleep cannot be interrupted from another thread: its worker is given up on and replaced.
    root = project("limits: {workers: 1, queue: 4}\n")
    (root / "tools" / "nap.yml").write_text(tool("nap", parameters="[{name: seconds, type: number}]",
                                                 returns="{type: number}", extra="  timeout: 0.5\n"))

    async def body(client):
        return (await client.call_tool("nap", {"seconds": 30}), await client.call_tool("ok", {}),
                await client.call_tool("nap", {"seconds": 30}), await client.call_tool("ok", {}))

    with http_server(root) as (base, _):
        first, after_first, second, after_second = run_http(f"{base}/mcp", body)
    assert first.is_error and "timed out after 0.5s" in text(first)
    assert text(after_first) == "fine"
    # One worker may be stuck at a time (workers: 1): a second stuck call makes the server busy, and says why.
    assert second.is_error and "timed out" in text(second)
    assert after_second.is_error and "still running past their timeout" in text(after_second)


def test_the_site_timeout_applies_when_the_endpoint_sets_none(project):
    root = project("timeout: 0.5\n")

    async def body(client):
        return await client.call_tool("nap", {"seconds": 3}), await client.call_tool("nap", {"seconds": 0.01})

    with http_server(root) as (base, _):
        slow, quick = run_http(f"{base}/mcp", body)
    assert slow.is_error and "timed out after 0.5s" in text(slow)
    assert quick.structured_content == {"result": 0.01}


def test_a_full_pool_and_queue_answer_server_busy_at_once(project):
    root = project("limits: {workers: 1, queue: 1}\n")

    async def body(client):
        results: dict[int, Any] = {}

        async def call(index: int, seconds: float) -> None:
            started = time.monotonic()
            results[index] = (await client.call_tool("nap", {"seconds": seconds}), time.monotonic() - started)

        async with anyio.create_task_group() as group:
            group.start_soon(call, 0, 2)  # runs
            await anyio.sleep(0.3)
            group.start_soon(call, 1, 0.1)  # waits for the worker
            await anyio.sleep(0.3)
            group.start_soon(call, 2, 0.1)  # nowhere to wait: busy
        return results

    with http_server(root) as (base, _):
        results = run_http(f"{base}/mcp", body)
    (first, _), (queued, _), (refused, waited) = results[0], results[1], results[2]
    assert first.structured_content == {"result": 2}
    assert queued.structured_content == {"result": 0.1}
    assert refused.is_error and "server busy" in text(refused)
    assert waited < 1.5  # answered at once, not after the running call


# -- 8. a reload that cannot start again: refused calls, /health 503, the next reload retries ---------------


def test_a_failed_reload_refuses_calls_reports_503_and_the_next_reload_retries(project):
    root = project()
    with http_server(root) as (base, process):
        url = f"{base}/mcp"
        assert health(base)[0] == 200
        (root / "fail_init").write_text("")
        process.send_signal(signal.SIGHUP)
        status, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(health(base)))
        assert "on_init cannot reach the warehouse" in body["reason"]
        refused = run_http(url, lambda client: client.call_tool("ok", {}))
        assert refused.is_error and "on_init cannot reach the warehouse" in text(refused)

        (root / "fail_init").unlink()
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: health(base)[0] == 200)
        assert text(run_http(url, lambda client: client.call_tool("ok", {}))) == "fine"
    # on_init ran at start and after the second reload (the failed one wrote nothing).
    assert (root / "inits.txt").read_text().count("init") == 2


def test_a_reload_interrupts_a_stuck_call_after_its_deadline(project):
    root = project("limits: {reload_deadline: 1}\ntimeout: 60\n")
    (root / "tools" / "spin.yml").write_text(tool("spin"))  # no endpoint timeout: only the reload can stop it

    async def body(client):
        async with anyio.create_task_group() as group:
            outcome: dict[str, Any] = {}

            async def stuck() -> None:
                outcome["spin"] = await client.call_tool("spin", {})

            group.start_soon(stuck)
            await anyio.sleep(0.5)
            process.send_signal(signal.SIGHUP)
            started = time.monotonic()
            outcome["ok"] = await client.call_tool("ok", {})  # waits for the reload, which waits for spin
            outcome["waited"] = time.monotonic() - started
        return outcome

    with http_server(root) as (base, process):
        outcome = run_http(f"{base}/mcp", body)
        assert health(base)[0] == 200
    assert outcome["spin"].is_error and "interrupted" in text(outcome["spin"])
    assert text(outcome["ok"]) == "fine"
    assert outcome["waited"] < 10


def test_reload_gate_proceeds_after_the_deadline_when_a_call_ignores_the_interrupt():
    from mxcp_core.execution import ReloadGate

    gate = ReloadGate()
    interrupted = []
    with gate.shared():  # a call that never ends
        started = time.monotonic()
        with gate.exclusive(deadline=0.2, overdue=lambda: interrupted.append(True), grace=0.2):
            waited = time.monotonic() - started
    assert interrupted == [True]
    assert 0.35 < waited < 3


# -- 11. result caps ---------------------------------------------------------------------------------------------


def test_results_are_cut_to_the_row_and_byte_limits_and_say_so(project):
    root = project("limits: {max_rows: 1000, max_result_bytes: 20000}\n")

    async def body(client):
        return [await client.call_tool("rows", {"n": 5_000_000}), await client.call_tool("rows", {"n": 10}),
                await client.call_tool("many", {"n": 5000}), await client.call_tool("blob", {"size": 50000}),
                await client.call_tool("ok", {})]

    with http_server(root) as (base, _):
        sql_rows, small, python_rows, blob, after = run_http(f"{base}/mcp", body)
    # SQL: DuckDB stops after the limit; the total is not counted (that would scan 5M rows).
    assert len(sql_rows.structured_content["result"]) == 1000
    assert sql_rows.meta["mxcp/truncated"] == {"reason": "limits.max_rows", "limit": 1000, "rows_returned": 1000,
                                                "rows_total": None}
    assert "[truncated: 1000 rows returned" in sql_rows.content[-1].text
    assert "mxcp/truncated" not in (small.meta or {}) and len(small.structured_content["result"]) == 10
    assert len(small.content) == 1
    # Python rows: cut to 1000 rows, then to what fits in 20000 bytes.
    cut = python_rows.meta["mxcp/truncated"]
    assert cut["reason"] == "limits.max_result_bytes" and cut["rows_total"] == 5000
    assert 0 < cut["rows_returned"] == len(python_rows.structured_content["result"]) < 1000
    assert len(json.dumps(python_rows.structured_content["result"], separators=(",", ":"))) <= 20000
    # One value larger than the limit cannot be cut: a clear error, and the next call works.
    assert blob.is_error and "max_result_bytes (20000)" in text(blob)
    assert text(after) == "fine"


def test_mxcp_run_prints_the_truncation_on_stderr(project):
    import subprocess

    root = project("limits: {max_rows: 5}\n")
    done = subprocess.run([*mxcp_command(), "run", "tool", "rows", "-p", "n=100", "--json-output"], cwd=root,
                          env=serve_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["result"]) == 5
    assert "[truncated: 5 rows returned" in done.stderr


# -- 12. ranges in the site config ---------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "expected"), [
    ("timeout: -5\n", "mxcp-site.yml:4: timeout: expected a number of seconds greater than 0, got int -5"),
    ("limits:\n  workers: 0\n", "mxcp-site.yml:5: limits.workers: expected a whole number greater than 0"),
    ("limits:\n  reload_deadline: .inf\n", "mxcp-site.yml:5: limits.reload_deadline: expected a number of seconds"),
    ("limits:\n  max_rows: many\n", "mxcp-site.yml:5: limits.max_rows: expected an integer, got str 'many'"),
])
def test_out_of_range_limits_name_file_line_and_key(project, extra, expected):
    import subprocess

    root = project(extra)
    done = subprocess.run([*mxcp_command(), "list"], cwd=root, env=serve_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


if sys.platform == "win32":  # pragma: no cover - signals
    pytestmark = pytest.mark.skip("SIGHUP")


@pytest.mark.parametrize("value", ["-5", "0", ".nan"])
def test_an_endpoint_timeout_must_be_positive(project, value):
    import subprocess

    root = project()
    (root / "tools" / "nap.yml").write_text(tool("nap", parameters="[{name: seconds, type: number}]",
                                                 returns="{type: number}", extra=f"  timeout: {value}\n"))
    done = subprocess.run([*mxcp_command(), "validate", "--json-output"], cwd=root, env=serve_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "tool.timeout: expected a number of seconds greater than 0" in done.stdout
