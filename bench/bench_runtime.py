"""In-process cost of the runtime: `db.execute` on a large result, and the per-call overhead of endpoints.

Usage: python bench/bench_runtime.py [CALLS]   (default 2000 calls per per-call measurement)

Each line compares the framework with the floor measured in the same run (raw DuckDB, a direct function
call), so the ratio is what to read; absolute times drift between machines and runs. Each figure is the
best of several rounds, which filters out noise from other processes.
"""
from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROWS = 100_000
BIG_QUERY = f"SELECT i AS id, i * 2 AS doubled, 'name-' || i AS label FROM range({ROWS}) t(i)"

PROJECT_FILES = {
    # Limits above the 100k-row result measured here (the defaults would cut it to 10,000 rows).
    "mxcp-site.yml": "mxcp: 1\nproject: bench\nprofile: default\nlimits: {max_rows: 1000000, max_result_bytes: 1000000000}\n",
    "tools/sql_echo.yml": """
        mxcp: 1
        tool:
          name: sql_echo
          parameters: [{name: x, type: integer}]
          return: {type: integer}
          source: {code: "SELECT $x"}
    """,
    "tools/py_echo.yml": """
        mxcp: 1
        tool:
          name: py_echo
          parameters: [{name: x, type: integer}]
          return: {type: integer}
          source: {file: ../python/echo.py}
    """,
    "tools/big.yml": """
        mxcp: 1
        tool:
          name: big
          return: {type: integer}
          source: {file: ../python/echo.py}
    """,
    "python/echo.py": f"""
        from mxcp.runtime import db

        def py_echo(x: int) -> int:
            return x

        def big() -> int:
            return len(db.execute("{BIG_QUERY}"))
    """,
}


def interleaved(functions: dict[str, Callable[[], object]], repeat: int, rounds: int = 7) -> dict[str, float]:
    """Best mean time (µs) of one run of each function; rounds alternate between them so load spikes hit all."""
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            for _ in range(repeat):
                function()
            best[name] = min(best[name], (time.perf_counter() - started) / repeat * 1e6)
    return best


def make_project(root: Path) -> Path:
    for relative, text in PROJECT_FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def main() -> None:
    import anyio
    import duckdb

    from mxcp_core.execution import Runtime
    from mxcp_core.project import open_project

    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    work = Path(tempfile.mkdtemp(prefix="mxcp-bench-runtime-"))
    os.environ["HOME"] = str(work / "home")  # none of the developer's user config
    os.environ.pop("MXCP_CONFIG", None)
    rows: list[tuple[str, str, str, str]] = []
    try:
        root = make_project(work / "project")
        with Runtime(open_project(root)) as runtime:
            python_function = runtime.project.executors()["python"].function_for(
                runtime.compiled[("tool", "py_echo")].definition
            )
            assert runtime.call("tool", "big") == ROWS
            assert runtime.call("tool", "sql_echo", {"x": 7}) == 7
            assert runtime.call("tool", "py_echo", {"x": 7}) == 7
            raw_cursor = runtime.database.connection.cursor()

            # 1. db.execute on a 100k-row result (inside a Python tool) vs a raw cursor's fetchall().
            big = interleaved({
                "raw": lambda: raw_cursor.execute(BIG_QUERY).fetchall(),
                "mxcp": lambda: runtime.call("tool", "big"),
            }, repeat=1)
            rows.append((f"db.execute, {ROWS:,} rows as dicts", f"{big['mxcp'] / 1000:.1f} ms",
                         f"{big['raw'] / 1000:.1f} ms (cursor.fetchall, tuples)", f"{big['mxcp'] / big['raw']:.2f}x"))

            # 2. Trivial tools, blocking: Runtime.call vs the raw query / the direct call.
            def call_async_batch(name: str, count: int) -> Callable[[], object]:
                async def batch() -> None:
                    for _ in range(count):
                        await runtime.call_async("tool", name, {"x": 1})

                return lambda: anyio.run(batch)

            batch = max(1, calls // 10)
            small = interleaved({
                "raw_sql": lambda: raw_cursor.execute("SELECT $x", {"x": 1}).fetchall(),
                "sql": lambda: runtime.call("tool", "sql_echo", {"x": 1}),
                "direct": lambda: python_function(x=1),
                "py": lambda: runtime.call("tool", "py_echo", {"x": 1}),
            }, repeat=calls)
            def raw_in_thread_batch(count: int) -> Callable[[], object]:
                async def batch() -> None:
                    for _ in range(count):
                        await anyio.to_thread.run_sync(
                            lambda: raw_cursor.execute("SELECT $x", {"x": 1}).fetchall())

                return lambda: anyio.run(batch)

            # call_async in batches within one event loop, as a server runs it; its floor is the same raw
            # query run through anyio.to_thread (the thread hop costs more than the query here).
            in_loop = interleaved({
                "raw_async": raw_in_thread_batch(batch),
                "sql_async": call_async_batch("sql_echo", batch),
                "py_async": call_async_batch("py_echo", batch),
            }, repeat=10)
            in_loop = {name: value / batch for name, value in in_loop.items()}
            raw_cursor.close()

            floor_sql = f"{small['raw_sql']:.0f} µs (raw DuckDB)"
            rows.append(("trivial SQL tool, Runtime.call", f"{small['sql']:.0f} µs", floor_sql,
                         f"{small['sql'] / small['raw_sql']:.2f}x"))
            rows.append(("trivial SQL tool, call_async (anyio)", f"{in_loop['sql_async']:.0f} µs",
                         f"{in_loop['raw_async']:.0f} µs (raw DuckDB in to_thread)",
                         f"{in_loop['sql_async'] / in_loop['raw_async']:.2f}x"))
            floor_py = f"{small['direct']:.2f} µs (direct call)"
            rows.append(("trivial Python tool, Runtime.call", f"{small['py']:.0f} µs", floor_py,
                         f"+{small['py'] - small['direct']:.0f} µs"))
            rows.append(("trivial Python tool, call_async (anyio)", f"{in_loop['py_async']:.0f} µs", floor_py,
                         f"+{in_loop['py_async'] - small['direct']:.0f} µs"))
    finally:
        gc.collect()
        shutil.rmtree(work, ignore_errors=True)

    header = ("measurement", "mxcp", "floor", "ratio / overhead")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    print(f"\n{calls} calls per round, best of 7 interleaved rounds; python {sys.version.split()[0]}, duckdb {duckdb.__version__}")


if __name__ == "__main__":
    main()
