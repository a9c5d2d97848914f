"""A timeout or cancellation stops the work in progress: DuckDB queries and async Python endpoints alike."""
from __future__ import annotations

import threading

import anyio
import pytest

from mxcp_core import hookimpl
from mxcp_core.execution import CallTimeout, Runtime
from mxcp_core.project import open_project

SLOW_ASYNC = """\
import asyncio

STATE = {"cancelled": False}

async def slow_async() -> dict:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        STATE["cancelled"] = True
        raise
    return {"done": True}


def was_cancelled() -> dict:
    return dict(STATE)


async def async_slow_sql() -> dict:
    from mxcp.runtime import db
    # Blocking DuckDB work inside a coroutine: it must stall neither the caller's loop nor other calls.
    db.execute("SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.range + b.range = -1")
    return {"done": True}
"""

FILES = {
    "tools/slow_async.yml": """\
        mxcp: 1
        tool:
          name: slow_async
          language: python
          return: {type: object}
          source: {file: ../python/slow.py}
        """,
    "tools/was_cancelled.yml": """\
        mxcp: 1
        tool:
          name: was_cancelled
          language: python
          return: {type: object}
          source: {file: ../python/slow.py}
        """,
    "tools/async_slow_sql.yml": """\
        mxcp: 1
        tool:
          name: async_slow_sql
          language: python
          return: {type: object}
          source: {file: ../python/slow.py}
        """,
    "tools/slow_sql.yml": """\
        mxcp: 1
        tool:
          name: slow_sql
          return: {type: integer}
          source: {code: "SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.range + b.range = -1"}
        """,
    "python/slow.py": SLOW_ASYNC,
}


@pytest.fixture
def runtime(make_project, tmp_path):
    with Runtime(open_project(make_project(tmp_path / "proj", FILES))) as started:
        yield started


def test_timeout_cancels_a_running_async_python_endpoint(runtime: Runtime) -> None:
    async def main() -> None:
        with pytest.raises(CallTimeout, match="timed out after 0.3s"):
            await runtime.call_async("tool", "slow_async", {}, timeout=0.3)
        # The coroutine saw its cancellation (it does not keep running on the loop).
        with anyio.fail_after(5):
            while not (await runtime.call_async("tool", "was_cancelled", {}))["cancelled"]:
                await anyio.sleep(0.02)

    anyio.run(main)


class Outcomes:
    """A wrapper plugin that records how each call ended inside the worker thread."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.errors: list[str] = []

    @hookimpl(wrapper=True)
    def call_endpoint(self, call):
        try:
            return (yield)
        except Exception as exc:
            self.errors.append(str(exc))
            raise
        finally:
            if call.endpoint.key == "slow_sql":
                self.ended.set()


def test_client_cancellation_interrupts_a_running_query(make_project, tmp_path) -> None:
    outcomes = Outcomes()
    project = open_project(make_project(tmp_path / "proj", FILES), extra_plugins=[("outcomes", outcomes)])
    with Runtime(project) as runtime:

        async def main() -> None:
            async with anyio.create_task_group() as group:
                group.start_soon(runtime.call_async, "tool", "slow_sql", {})
                await anyio.sleep(0.3)
                group.cancel_scope.cancel()

        anyio.run(main)
        # The query itself stopped (DuckDB interrupted it); it did not just lose its caller.
        assert outcomes.ended.wait(10)
        assert outcomes.errors == ["query interrupted"]


def test_blocking_sql_in_an_async_endpoint_neither_blocks_the_loop_nor_escapes_its_timeout(runtime: Runtime) -> None:
    order: list[str] = []

    async def main() -> None:
        async def slow() -> None:
            try:
                await runtime.call_async("tool", "async_slow_sql", {}, timeout=1)
            except CallTimeout:
                order.append("slow timed out")

        async with anyio.create_task_group() as group:
            group.start_soon(slow)
            await anyio.sleep(0.2)
            await runtime.call_async("tool", "was_cancelled", {})
            order.append("quick answered")

    anyio.run(main)
    assert order == ["quick answered", "slow timed out"]
