"""Helpers for the executor, runtime API and reload tests: start a real runtime on a project folder."""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mxcp_core.execution import Runtime
from mxcp_core.project import open_project


@contextmanager
def started(root: Path, **options: Any) -> Iterator[Runtime]:
    """A started runtime on the project in `root` (open_project options pass through), stopped afterwards."""
    runtime = Runtime(open_project(root, **options))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def tool(name: str, body: str, *, parameters: str = "[]", returns: str | None = None,
         language: str | None = None) -> str:
    """A tool YAML: `body` is `code: ...` or `file: ...` (the source mapping's content)."""
    lines = ["mxcp: 1", "tool:", f"  name: {name}", f"  parameters: {parameters}"]
    if returns is not None:
        lines.append(f"  return: {returns}")
    if language is not None:
        lines.append(f"  language: {language}")
    lines.append(f"  source: {{{body}}}")
    return "\n".join(lines) + "\n"


def python_tool(name: str, module: str, *, parameters: str = "[]", returns: str | None = None,
                language: str | None = "python") -> str:
    return tool(name, f"file: ../python/{module}", parameters=parameters, returns=returns, language=language)


def require_plugin(module: str) -> None:
    """Skip when another team's plugin module is not there yet (the test is written against its behaviour)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"plugin module {module} is not available yet")


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, tracebacks included."""
    handler = logging.Formatter()
    return "\n".join(handler.format(record) for record in caplog.records)
