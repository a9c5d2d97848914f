"""Builtin plugin: `mxcp lint`, advice on endpoint metadata that helps AI clients use the endpoints well.

Findings have a severity (error > warning > info); `--severity` shows findings at or above a level; any error
makes the command exit 1. A parameter without a description is an error, as in the original MXCP: a client
cannot fill in an argument it is told nothing about. Each finding is reported once, even when several rules or
tests would repeat it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import attrs
import typer

from mxcp_core import TEST_ASSERTION_KEYS, commands, hookimpl, suggest

SEVERITIES = ("error", "warning", "info")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


@attrs.frozen
class LintFinding:
    """One piece of advice about one endpoint; `location` is a path inside the endpoint (`parameters.id`)."""

    severity: str
    rule: str
    kind: str
    endpoint: str
    location: str
    message: str
    file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def lint_endpoint(endpoint: Any) -> Iterable[LintFinding]:
    """Every finding for one endpoint definition, in a stable order."""
    def finding(severity: str, rule: str, location: str, message: str) -> LintFinding:
        return LintFinding(severity=severity, rule=rule, kind=endpoint.kind, endpoint=endpoint.key,
                           location=location, message=message, file=endpoint.origin)

    if not (endpoint.description or "").strip():
        yield finding("warning", "missing-description", "description",
                      f"{endpoint.kind} has no description; clients rely on it to choose the endpoint")
    for param in endpoint.parameters:
        where = f"parameters.{param.name}"
        if not (param.description or "").strip():
            yield finding("error", "missing-parameter-description", where,
                          f"parameter '{param.name}' has no description; clients rely on it to fill the argument")
        if not param.type.examples:
            yield finding("info", "missing-parameter-examples", where,
                          f"parameter '{param.name}' has no examples")
    if endpoint.kind != "prompt":
        if endpoint.return_type is None:
            yield finding("warning", "missing-return-type", "return",
                          f"{endpoint.kind} declares no return type; results are neither checked nor described")
        elif (endpoint.kind == "tool" and endpoint.language == "sql"
              and not (endpoint.return_type.description or "").strip()):
            yield finding("info", "missing-return-description", "return.description",
                          "the return type has no description")
    if endpoint.kind == "tool" and not endpoint.annotations:
        yield finding("info", "missing-annotations", "annotations",
                      "tool has no annotations (readOnlyHint, destructiveHint, idempotentHint, openWorldHint)")
    if not endpoint.tests:
        yield finding("warning", "missing-tests", "tests", f"{endpoint.kind} has no tests")
    sensitive = sensitive_paths(endpoint.return_type)
    if sensitive and not _filters_sensitive(endpoint.policies):
        yield finding("warning", "sensitive-without-filter", "policies.output",
                      f"the result has sensitive field(s) {', '.join(sensitive)} but no output policy with "
                      "action filter_sensitive_fields removes them before the client sees them")
    declared = {param.name for param in endpoint.parameters}
    for index, test in enumerate(endpoint.tests):
        test_name = str(test.get("name") or f"#{index + 1}")
        where = f"tests.{test_name}"
        if not any(key in test for key in TEST_ASSERTION_KEYS) and "expect_error" not in test:
            yield finding("warning", "test-without-assertions", where,
                          f"test '{test_name}' has no assertions; it only checks the call does not fail")
        for argument in test.get("arguments") or ():
            key = argument.get("key") if isinstance(argument, dict) else None
            if isinstance(key, str) and key not in declared:
                yield finding("error", "test-unknown-parameter", f"{where}.arguments.{key}",
                              f"test '{test_name}' passes '{key}', which is not a parameter{suggest(key, declared)}")


def sensitive_paths(spec: Any, path: str = "") -> list[str]:
    """Where a return type marks values `sensitive: true` (`ssn`, `employees[].ssn`, `contact.email`)."""
    if spec is None:
        return []
    if spec.sensitive:
        return [path or "(the whole result)"]
    found = []
    for name, child in (spec.properties or {}).items():
        found += sensitive_paths(child, f"{path}.{name}" if path else name)
    if spec.items is not None:
        found += sensitive_paths(spec.items, f"{path}[]")
    return found


def _filters_sensitive(policies: Any) -> bool:
    rules = (policies or {}).get("output") or [] if isinstance(policies, dict) else []
    return any(isinstance(rule, dict) and rule.get("action") == "filter_sensitive_fields" for rule in rules)


def lint_project(project: Any) -> list[LintFinding]:
    """Findings for every endpoint of the project (unparseable ones are errors), each reported once."""
    registry = project.endpoints()
    findings = [
        LintFinding(severity="error", rule="invalid-endpoint", kind=bad.kind, endpoint=bad.name or bad.origin,
                    location="", message=bad.message, file=bad.origin)
        for bad in registry.invalid
    ]
    for endpoint in registry.all():
        findings.extend(lint_endpoint(endpoint))
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for item in findings:
        identity = (item.kind, item.endpoint, item.rule, item.location)
        if identity not in seen:
            seen.add(identity)
            unique.append(item)
    return unique


def at_or_above(findings: Iterable[LintFinding], severity: str) -> list[LintFinding]:
    return [f for f in findings if _RANK[f.severity] <= _RANK[severity]]


def lint_command(
    severity: Annotated[
        str, typer.Option("--severity", metavar="LEVEL",
                          help="Show findings at or above this level: error, warning or info.")
    ] = "info",
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Check endpoint metadata that helps AI clients; exits 1 on any error.

    Descriptions (a parameter without one is an error), examples, return
    types, annotations, tests, and sensitive fields that no output policy
    filters.

    Examples:
      mxcp lint                        # every finding
      mxcp lint --severity warning     # errors and warnings only
      mxcp lint --json-output          # findings as data
    """
    from mxcp_core import MxcpError
    from mxcp_core.commands import console, emit_json, open_project, plural, reporting_errors

    with reporting_errors(json_output, debug):
        if severity not in _RANK:
            raise MxcpError(f"unknown severity '{severity}': expected error, warning or info")
        project = open_project(profile)
        every = lint_project(project)
        shown = at_or_above(every, severity)
        counts = {name: sum(1 for f in shown if f.severity == name) for name in SEVERITIES}
        errors = sum(1 for f in every if f.severity == "error")
        result = {
            "checked": len(project.endpoints().all()) + len(project.endpoints().invalid),
            "findings": [f.as_dict() for f in shown],
            "summary": counts,
        }
        if json_output:
            payload: dict[str, Any] = {"status": "error" if errors else "ok", "result": result}
            if errors:
                payload["error"] = f"{plural(errors, 'error')} found"
            emit_json(payload)
        else:
            from rich.markup import escape

            out = console()
            colours = {"error": "red", "warning": "yellow", "info": "cyan"}
            for item in sorted(shown, key=lambda f: (f.file or "", f.endpoint, _RANK[f.severity])):
                place = f"{item.file} [{item.kind} {item.endpoint}]" + (f" {item.location}" if item.location else "")
                out.print(f"[{colours[item.severity]}]{item.severity:<7}[/] {escape(place)}: {escape(item.message)} "
                          f"[dim]({item.rule})[/]", highlight=False)
            if not shown:
                out.print(f"[green]✓[/] no findings in {plural(result['checked'], 'endpoint')}")
            else:
                out.print(f"{plural(counts['error'], 'error')}, {plural(counts['warning'], 'warning')}, "
                          f"{counts['info']} info in {plural(result['checked'], 'endpoint')}")
        if errors:
            raise typer.Exit(1)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.command("lint")(lint_command)
