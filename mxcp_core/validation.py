"""`mxcp validate`: structure and references of every endpoint, then each executor's own checks."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import attrs

from .errors import MxcpError
from .execution import Runtime
from .project import Project
from .records import EndpointDefinition, Problem

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
        problems.extend(check_bodies(runtime, endpoints))
    finally:
        for executor in project.executors().values():
            try:
                executor.stop()
            except Exception:  # noqa: BLE001
                log.debug("executor stop failed", exc_info=True)
        runtime.database.close()
    return problems


def check_bodies(runtime: Runtime, endpoints: Iterable[EndpointDefinition]) -> list[Problem]:
    """Each executor's own checks of the endpoints' bodies (SQL prepared, Python functions and parameters)."""
    problems: list[Problem] = []
    executors = runtime.project.executors()
    for endpoint in endpoints:
        executor = executors.get(endpoint.language or "")
        if endpoint.function is not None or endpoint.kind == "prompt" or executor is None:
            continue
        try:
            found = executor.validate(endpoint, runtime)
        except Exception as exc:  # noqa: BLE001 - a checker bug must not hide other problems
            found = [f"could not be checked: {type(exc).__name__}: {exc}"]
        for item in found:
            problem = item if isinstance(item, Problem) else Problem(message=str(item))
            problems.append(attrs.evolve(problem, file=endpoint.origin, endpoint=endpoint.key))
    return problems


def _checking_runtime(project: Project) -> Runtime:
    """A runtime that opens an existing database read-only, so validating never writes to it."""
    context = project.context
    if context.duckdb_path != ":memory:":
        # An existing file opens read-only; a missing one is not created (an empty database checks the same).
        exists = Path(context.duckdb_path).exists()
        context = attrs.evolve(context, readonly=True) if exists else attrs.evolve(context, duckdb_path=":memory:")
    checking = Project(context=context, host=project.host, hooks=project.hooks)
    checking._executors = project.executors()
    checking._registry = project.endpoints()
    return Runtime(checking, skip_invalid=True)
