"""Builtin plugin: `mxcp drift-snapshot` records the project's state, `mxcp drift-check` reports what changed since.

The state: DuckDB tables and columns (schema `main`), each endpoint's definition (description, parameter and
return schemas, language, a hash of its source), its validation status and its test results. The snapshot is
JSON at the site profile's `drift.path` (default drift/drift-<profile>.json).
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import attrs
import typer

from mxcp_core import ConfigError, ConfigSection, commands, hookimpl

SNAPSHOT_VERSION = 1


@attrs.define
class DriftSettings:
    """`profiles.<name>.drift` of mxcp-site.yml."""

    path: str | None = None


@hookimpl
def config_sections():
    return [ConfigSection("drift", DriftSettings, scope="site_profile", description="where the drift snapshot lives")]


@attrs.frozen
class DriftChange:
    """One difference: `category` is table, column, endpoint, validation or tests."""

    category: str
    change: str  # added | removed | changed
    name: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def format(self) -> str:
        return f"{self.category} {self.name} {self.change}" + (f": {self.detail}" if self.detail else "")


def drift_path(project: Any) -> Path:
    """Where the snapshot lives for the active profile."""
    context = project.context
    configured = context.plugin_config("drift", scope="site_profile").path
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else context.root / path
    return context.path("drift") / f"drift-{context.profile}.json"


def endpoint_id(kind: str, key: str) -> str:
    return f"{kind}:{key}"


def _source_hash(endpoint: Any) -> str | None:
    if endpoint.kind == "prompt":
        text = json.dumps([dict(m) for m in endpoint.messages], sort_keys=True, default=str)
    elif endpoint.function is not None:
        text = f"{endpoint.function.__module__}.{endpoint.function.__qualname__}"
    elif endpoint.source is not None:
        try:
            text = endpoint.source.read()
        except (OSError, ConfigError):  # gone or unreadable (not a regular UTF-8 file): no hash to compare
            return None
    else:
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_endpoint(endpoint: Any) -> dict[str, Any]:
    from mxcp_core import compile_endpoint, to_json_schema

    return {
        "kind": endpoint.kind,
        "key": endpoint.key,
        "description": endpoint.description or "",
        "parameters": compile_endpoint(endpoint).parameters.json_schema(),
        "return": to_json_schema(endpoint.return_type) if endpoint.return_type is not None else None,
        "language": endpoint.language,
        "source_hash": _source_hash(endpoint),
    }


def _tables(runtime: Any) -> dict[str, dict[str, Any]]:
    with runtime.cursor() as cursor:
        rows = cursor.execute(
            "SELECT t.table_name, t.table_type, c.column_name, c.data_type "
            "FROM information_schema.tables t "
            "LEFT JOIN information_schema.columns c "
            "  ON c.table_catalog = t.table_catalog AND c.table_schema = t.table_schema "
            "  AND c.table_name = t.table_name "
            # current_schema(): DuckDB's `main`, PostgreSQL's first schema on the search path (`public`)
            "WHERE t.table_schema = current_schema() AND t.table_catalog = current_database() "
            "ORDER BY t.table_name, c.ordinal_position"
        ).fetchall()
    tables: dict[str, dict[str, Any]] = {}
    for table, table_type, column, data_type in rows:
        entry = tables.setdefault(table, {"type": table_type, "columns": {}})
        if column is not None:
            entry["columns"][column] = data_type
    return tables


def collect_state(project: Any) -> dict[str, Any]:
    """The project's current state, as a snapshot holds it."""
    from mxcp_core import Runtime, run_tests, validate_project

    registry = project.endpoints()
    endpoints = {endpoint_id(e.kind, e.key): describe_endpoint(e) for e in registry.all()}

    validation: dict[str, dict[str, Any]] = {ident: {"status": "ok", "errors": []} for ident in endpoints}
    by_key_and_file = {(e.key, e.origin): endpoint_id(e.kind, e.key) for e in registry.all()}
    for bad in registry.invalid:
        validation[endpoint_id(bad.kind, bad.name or bad.origin)] = {"status": "error", "errors": [bad.message]}
    problems = validate_project(project)
    invalid_ids = {endpoint_id(bad.kind, bad.name or bad.origin) for bad in registry.invalid}
    for problem in problems:
        if problem.severity != "error":
            continue
        ident = by_key_and_file.get((problem.endpoint, problem.file))
        if ident is None:
            if any(i.endswith(f":{problem.endpoint or problem.file}") for i in invalid_ids):
                continue  # an unparseable endpoint, already recorded above
            ident = "project"
        entry = validation.setdefault(ident, {"status": "ok", "errors": []})
        entry["status"] = "error"
        entry["errors"].append(problem.message)

    tests: dict[str, dict[str, int]] = {
        endpoint_id(e.kind, e.key): {"passed": 0, "failed": 0} for e in registry.all() if e.tests
    }
    with Runtime(project, skip_invalid=True) as runtime:
        for outcome in run_tests(runtime):
            counts = tests[endpoint_id(outcome.kind, outcome.endpoint)]
            counts["passed" if outcome.passed else "failed"] += 1
        # Tests may create tables or schedule a reload: read the tables as the tests leave them, so a snapshot
        # followed at once by a check finds no drift.
        runtime.wait_for_reloads()
        tables = _tables(runtime)

    return {
        "version": SNAPSHOT_VERSION,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "project": project.context.name,
        "profile": project.context.profile,
        "tables": tables,
        "endpoints": endpoints,
        "validation": validation,
        "tests": tests,
    }


def compare(baseline: dict[str, Any], current: dict[str, Any]) -> list[DriftChange]:
    """Every difference between two snapshots, tables first."""
    changes: list[DriftChange] = []

    def keyed(section: str, state: dict[str, Any]) -> dict[str, Any]:
        value = state.get(section) or {}
        return value if isinstance(value, dict) else {}

    old_tables, new_tables = keyed("tables", baseline), keyed("tables", current)
    for name in sorted(new_tables.keys() - old_tables.keys()):
        columns = ", ".join(new_tables[name].get("columns", {}))
        changes.append(DriftChange("table", "added", name, f"columns: {columns}" if columns else ""))
    for name in sorted(old_tables.keys() - new_tables.keys()):
        changes.append(DriftChange("table", "removed", name))
    for name in sorted(old_tables.keys() & new_tables.keys()):
        old_cols = old_tables[name].get("columns", {})
        new_cols = new_tables[name].get("columns", {})
        for column in new_cols:
            if column not in old_cols:
                changes.append(DriftChange("column", "added", f"{name}.{column}", str(new_cols[column])))
        for column in old_cols:
            if column not in new_cols:
                changes.append(DriftChange("column", "removed", f"{name}.{column}", str(old_cols[column])))
            elif old_cols[column] != new_cols[column]:
                changes.append(DriftChange("column", "changed", f"{name}.{column}",
                                           f"type {old_cols[column]} → {new_cols[column]}"))
        if old_tables[name].get("type") != new_tables[name].get("type"):
            changes.append(DriftChange("table", "changed", name,
                                       f"type {old_tables[name].get('type')} → {new_tables[name].get('type')}"))

    old_eps, new_eps = keyed("endpoints", baseline), keyed("endpoints", current)
    for ident in sorted(new_eps.keys() - old_eps.keys()):
        changes.append(DriftChange("endpoint", "added", ident))
    for ident in sorted(old_eps.keys() - new_eps.keys()):
        changes.append(DriftChange("endpoint", "removed", ident))
    for ident in sorted(old_eps.keys() & new_eps.keys()):
        fields = [f for f in ("description", "parameters", "return", "language", "source_hash")
                  if old_eps[ident].get(f) != new_eps[ident].get(f)]
        if fields:
            changes.append(DriftChange("endpoint", "changed", ident,
                                       ", ".join(_describe_field(f, old_eps[ident], new_eps[ident]) for f in fields)))

    old_val, new_val = keyed("validation", baseline), keyed("validation", current)
    for ident in sorted(old_val.keys() | new_val.keys()):
        before = (old_val.get(ident) or {}).get("status")
        after = (new_val.get(ident) or {}).get("status")
        if before is None or after is None:
            # Added and removed endpoints are reported above; a new failing endpoint still counts.
            if after == "error" and ident not in new_eps:
                changes.append(DriftChange("validation", "added", ident, "; ".join(new_val[ident].get("errors", []))))
            continue
        if before != after:
            errors = "; ".join((new_val.get(ident) or {}).get("errors", []))
            changes.append(DriftChange("validation", "changed", ident,
                                       f"{before} → {after}" + (f" ({errors})" if errors else "")))

    old_tests, new_tests = keyed("tests", baseline), keyed("tests", current)
    for ident in sorted(old_tests.keys() | new_tests.keys()):
        before, after = old_tests.get(ident), new_tests.get(ident)
        if before == after:
            continue
        changes.append(DriftChange("tests", "added" if before is None else "removed" if after is None else "changed",
                                   ident, f"{_counts(before)} → {_counts(after)}"))
    return changes


def _describe_field(field: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    if field == "description":
        return f"description {_clip(old.get(field))!r} → {_clip(new.get(field))!r}"
    if field == "language":
        return f"language {old.get(field)} → {new.get(field)}"
    if field == "source_hash":
        return "source changed"
    if field == "parameters":
        before = set(((old.get(field) or {}).get("properties") or {}))
        after = set(((new.get(field) or {}).get("properties") or {}))
        parts = [f"+{n}" for n in sorted(after - before)] + [f"-{n}" for n in sorted(before - after)]
        return "parameters changed" + (f" ({', '.join(parts)})" if parts else "")
    return "return type changed"


def _clip(text: Any, width: int = 60) -> str:
    text = str(text or "")
    return text if len(text) <= width else text[: width - 1] + "…"


def _counts(counts: dict[str, int] | None) -> str:
    if counts is None:
        return "none"
    return f"{counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed"


# -- commands -------------------------------------------------------------------------------------------


def snapshot_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the snapshot without writing it.")] = False,
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Record the project's state as the drift baseline.

    Tables and columns, endpoint definitions, validation status and test
    results, written as JSON to the profile's drift path (default
    drift/drift-PROFILE.json).

    Examples:
      mxcp drift-snapshot                # write the baseline
      mxcp drift-snapshot --dry-run      # print it instead
      mxcp drift-snapshot --profile prod
    """
    from mxcp_core.commands import console, ok, open_project, plural, reporting_errors

    with reporting_errors(json_output, debug):
        project = open_project(profile)
        state = collect_state(project)
        path = drift_path(project)
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(state, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        result = {"path": str(path), "written": not dry_run, "snapshot": state}

        def render(_: Any) -> None:
            if dry_run:
                console().print_json(json.dumps(state, default=str))
                return
            console().print(
                f"[green]✓[/] drift snapshot written to {path}: {plural(len(state['tables']), 'table')}, "
                f"{plural(len(state['endpoints']), 'endpoint')}", highlight=False,
            )

        ok(result, json_output, render)


def check_command(
    baseline: Annotated[
        Path | None, typer.Option("--baseline", metavar="FILE",
                                  help="Snapshot to compare with (default: the profile's drift path).")
    ] = None,
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Compare the project with its drift snapshot; exits 1 when anything changed.

    Reports tables, columns, endpoints, validation and test results that
    differ from the baseline mxcp drift-snapshot recorded.

    Examples:
      mxcp drift-check                           # against the baseline
      mxcp drift-check --baseline old-drift.json # against another one
      mxcp drift-check --json-output             # changes as data
    """
    from mxcp_core import MxcpError
    from mxcp_core.commands import console, emit_json, open_project, plural, reporting_errors

    with reporting_errors(json_output, debug):
        project = open_project(profile)
        path = baseline if baseline is not None else drift_path(project)
        if not path.is_file():
            raise MxcpError(f"no drift snapshot at {path}; run `mxcp drift-snapshot` first")
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MxcpError(f"cannot read drift snapshot {path}: {exc}") from None
        if not isinstance(recorded, dict):
            raise MxcpError(f"{path} is not a drift snapshot")
        changes = compare(recorded, collect_state(project))
        result = {
            "baseline": str(path),
            "baseline_generated_at": recorded.get("generated_at"),
            "drift": bool(changes),
            "changes": [c.as_dict() for c in changes],
        }
        if json_output:
            payload: dict[str, Any] = {"status": "error" if changes else "ok", "result": result}
            if changes:
                payload["error"] = f"{plural(len(changes), 'change')} since the snapshot"
            emit_json(payload)
        else:
            from rich.markup import escape

            out = console()
            if not changes:
                out.print(f"[green]✓[/] no drift since {path}", highlight=False)
            else:
                marks = {"added": "[green]+[/]", "removed": "[red]-[/]", "changed": "[yellow]~[/]"}
                for change in changes:
                    out.print(f"{marks.get(change.change, '?')} {escape(change.format())}", highlight=False)
                out.print(f"[bold red]{plural(len(changes), 'change')}[/] since {path}", highlight=False)
        if changes:
            raise typer.Exit(1)


@hookimpl
def register_commands(cli: Any) -> None:
    cli.command("drift-snapshot")(snapshot_command)
    cli.command("drift-check")(check_command)
