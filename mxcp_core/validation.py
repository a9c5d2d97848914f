"""`mxcp validate`: structure and references of every endpoint, then each executor's own checks."""
from __future__ import annotations

from collections.abc import Iterable

import attrs

from .errors import MxcpError
from .execution import Phase, Runtime
from .features import missing_function_hint
from .project import Project
from .records import EndpointDefinition, Problem


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
    runtime = Runtime(project, skip_invalid=True, phase=Phase.CHECKING)
    try:
        runtime.start()
    except MxcpError as exc:
        problems.append(Problem(message=f"database not checked: {exc}", severity="warning"))
        return problems
    try:
        problems.extend(Problem(message=text) for text in runtime.start_problems)
        problems.extend(check_bodies(runtime, endpoints))
    finally:
        runtime.stop()
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
        host = runtime.project.host
        for item in found:
            problem = item if isinstance(item, Problem) else Problem(message=str(item))
            hint = missing_function_hint(problem.message, host.pm.has_plugin, frozenset(host.disabled))
            # A function a disabled builtin would register is missing for sure (no on_init hook brings it).
            problems.append(attrs.evolve(problem, message=problem.message + hint, file=endpoint.origin,
                                         endpoint=endpoint.key, severity="error" if hint else problem.severity))
    return problems
