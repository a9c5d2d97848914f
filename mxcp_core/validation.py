"""`mxcp validate`: structure and references of every endpoint, then each executor's own checks."""
from __future__ import annotations

import logging
from pathlib import Path

import attrs

from .errors import MxcpError
from .execution import Runtime
from .project import Project
from .records import Problem

log = logging.getLogger(__name__)


def validate_project(project: Project, *, deep: bool = True, only: str | None = None) -> list[Problem]:
    """Every problem found; `deep` also lets executors prepare SQL and import Python (no on_init hooks run)."""
    registry = project.endpoints()
    problems = [
        Problem(message=bad.message, file=bad.origin, endpoint=bad.name)
        for bad in registry.invalid
        if only is None or bad.name == only
    ]
    if not deep:
        return problems
    endpoints = [e for e in registry.all() if only is None or e.key == only]
    if not endpoints:
        return problems
    runtime = _checking_runtime(project)
    try:
        try:
            runtime.database.open()
        except MxcpError as exc:
            problems.append(Problem(message=f"database not checked: {exc}", severity="warning"))
            return problems
        for executor in project.executors().values():
            try:
                executor.start(runtime)
            except MxcpError as exc:
                problems.append(Problem(message=str(exc), severity="error"))
        for endpoint in endpoints:
            if endpoint.function is not None or endpoint.kind == "prompt":
                continue
            executor = project.executors().get(endpoint.language or "")
            if executor is None:
                continue
            try:
                found = executor.validate(endpoint, runtime)
            except Exception as exc:  # noqa: BLE001 - a checker bug must not hide other problems
                found = [f"could not be checked: {type(exc).__name__}: {exc}"]
            problems.extend(Problem(message=m, file=endpoint.origin, endpoint=endpoint.key) for m in found)
    finally:
        for executor in project.executors().values():
            try:
                executor.stop()
            except Exception:  # noqa: BLE001
                log.debug("executor stop failed", exc_info=True)
        runtime.database.close()
    return problems


def _checking_runtime(project: Project) -> Runtime:
    """A runtime that opens an existing database read-only, so validating never writes to it."""
    context = project.context
    if context.duckdb_path != ":memory:" and Path(context.duckdb_path).exists():
        context = attrs.evolve(context, readonly=True)
    checking = Project(context=context, host=project.host, hooks=project.hooks)
    checking._executors = project.executors()
    checking._registry = project.endpoints()
    return Runtime(checking, skip_invalid=True)
