"""Reading the audit log: `mxcp log` (filters, table, CSV and DuckDB export), `mxcp log verify` (the hash chain)
and `mxcp log-cleanup` (retention). The writing side, the record format and the chain are in `audit`.

The commands read the log through the profile's sink (`reader()`, hookspecs.md `open_audit_sink`): the JSONL
sink's files (`FileLog`), or another sink's store (a PostgreSQL table), seen as segments of numbered lines.

Commands are registered by the `audit` plugin; this module imports nothing heavy (Rich and DuckDB are imported by
the commands that use them).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import attrs
import typer
from typer.core import TyperGroup

from mxcp_core import MxcpError, commands

from . import audit

# The record's fields in schema order, the columns of the CSV and DuckDB exports (and their DuckDB types).
COLUMNS: dict[str, str] = {
    "schema_name": "VARCHAR", "schema_version": "INTEGER", "record_id": "VARCHAR", "call_id": "VARCHAR",
    "timestamp": "TIMESTAMPTZ", "operation_type": "VARCHAR", "operation_name": "VARCHAR",
    "operation_status": "VARCHAR", "duration_ms": "DOUBLE", "caller_type": "VARCHAR", "user_id": "VARCHAR",
    "session_id": "VARCHAR", "trace_id": "VARCHAR", "input_data": "JSON", "output_data": "JSON", "error": "VARCHAR",
    "policies_evaluated": "JSON", "policy_decision": "VARCHAR", "policy_reason": "VARCHAR", "prev_hash": "VARCHAR",
    "record_hash": "VARCHAR",
}
STATUSES = ("success", "error", "started")
DECISIONS = ("allow", "deny", "warn")
DEFAULT_LIMIT = 100
CLEANUP_OPERATION = "log-cleanup"  # operation_name of the record log-cleanup writes (operation_type "audit")


# -- segments and lines ----------------------------------------------------------------------------------------


@attrs.frozen
class Segment:
    """One file of the log: a sealed, numbered segment, or the active file (number None).

    A sink that is not a file (a database table) is one segment with a `label` and no path, whose lines are
    numbered by another `unit` (a table's `seq`).
    """

    path: Path | None
    number: int | None
    label: str | None = None
    unit: str = "line"

    @property
    def name(self) -> str:
        return self.label if self.label is not None else self.path.name

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else self.name

    @property
    def sealed(self) -> bool:
        return self.number is not None


def segments(active: Path) -> list[Segment]:
    """Every file of the log in chain order: sealed segments by number, then the active file."""
    found = [Segment(path, number) for number, path in audit.sealed_segments(active)]
    if active.is_file():
        found.append(Segment(active, None))
    return found


class FileLog:
    """The JSONL sink's log, as the commands read it: its segments and their lines.

    Any sink's reader offers the same: `name`, `where` and `folder` (for messages), `segments()`,
    `iter_lines(segment)`, `newest_first()`, `missing()` (why there is nothing to read, or None),
    `expired(retention_days, now)` and `cleanup(settings, now)`.
    """

    def __init__(self, active: Path) -> None:
        self.active = active

    @property
    def name(self) -> str:
        return self.active.name

    @property
    def where(self) -> str:
        return str(self.active)

    @property
    def folder(self) -> str:
        return str(self.active.parent)

    def segments(self) -> list[Segment]:
        return segments(self.active)

    def iter_lines(self, segment: Segment) -> Iterator[Line]:
        return iter_lines(segment)

    def newest_first(self) -> Iterator[Line]:
        for segment in reversed(self.segments()):
            yield from reversed(list(iter_lines(segment)))

    def missing(self) -> str | None:
        return None if self.segments() else f"{self.active} does not exist"

    def expired(self, retention_days: int, now: datetime) -> list[Expired]:
        return _expired_files(self.active, retention_days, now)

    def cleanup(self, settings: audit.AuditSettings, now: datetime) -> list[Expired]:
        return _cleanup_files(self.active, settings, now)


def as_log(log: Any) -> Any:
    """The reader of `log`: a JSONL active file's path, or already a reader."""
    return FileLog(log) if isinstance(log, Path) else log


_TEXT_FIELDS = ("record_id", "call_id", "timestamp", "operation_type", "operation_name", "operation_status",
                "caller_type", "session_id", "trace_id", "error", "policy_decision", "policy_reason", "prev_hash",
                "record_hash")


def audit_record(value: Any) -> dict[str, Any] | None:
    """`value` (a parsed line) when it is an audit record: a JSON object with schema_name "mxcp.audit", an
    integer schema_version, and its fields of the types a writer writes (text or null; user_id also a number;
    duration_ms a number or null; policies_evaluated a list); else None."""
    if not isinstance(value, dict) or value.get("schema_name") != audit.SCHEMA_NAME:
        return None
    version = value.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None
    if any(not isinstance(value.get(key), (str, type(None))) for key in _TEXT_FIELDS):
        return None
    if not isinstance(value.get("user_id"), (str, int, float, type(None))) or isinstance(value.get("user_id"), bool):
        return None
    duration = value.get("duration_ms")
    if duration is not None and (not isinstance(duration, (int, float)) or isinstance(duration, bool)):
        return None
    if not isinstance(value.get("policies_evaluated", []), list):
        return None
    return value


@attrs.frozen
class Line:
    segment: Segment
    number: int  # 1-based
    raw: bytes  # without its newline
    complete: bool  # false for a last line with no newline (a write cut short)

    def record(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.raw)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def audit_record(self) -> dict[str, Any] | None:
        """The record, when the line is an audit record (`audit_record`); else None (skipped by `mxcp log`)."""
        return audit_record(self.record())


def iter_lines(segment: Segment) -> Iterator[Line]:
    """The lines of `segment` read one at a time, without holding the file in memory (a torn last line too)."""
    try:
        handle = segment.path.open("rb")
    except FileNotFoundError:  # removed by log-cleanup while we read
        return
    except OSError as exc:
        raise MxcpError(f"cannot read audit log segment {segment.path}: {audit.reason(exc)}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if raw.endswith(b"\n"):
                yield Line(segment, number, raw[:-1], True)
            elif raw:
                yield Line(segment, number, raw, False)


# -- mxcp log: filters -----------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


_BARE_DATE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")


def parse_moment(text: str, option: str, now: datetime, *, end_of_day: bool = False) -> datetime:
    """`10m`, `2h`, `1d` (before now) or an ISO timestamp (UTC when it names no zone).

    With `end_of_day` (for --until), a bare date means the end of that day, so the day is included.
    """
    found = _DURATION.match(text)
    if found:
        try:
            return now - timedelta(**{_UNITS[found.group(2).lower()]: int(found.group(1))})
        except (OverflowError, ValueError):
            raise MxcpError(f"{option} {text!r} reaches before the year 1: give a shorter duration") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise MxcpError(
            f"{option} {text!r} is neither a duration (30s, 10m, 2h, 1d, 1w) nor an ISO timestamp "
            "(2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    if end_of_day and _BARE_DATE.match(text) and moment.date() < datetime.max.date():
        moment += timedelta(days=1) - timedelta(microseconds=1)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def record_time(record: dict[str, Any]) -> datetime | None:
    value = record.get("timestamp")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@attrs.frozen
class LogFilter:
    """What `mxcp log` selects; every given criterion must hold."""

    kind: str | None = None
    name: str | None = None
    status: str | None = None
    policy: str | None = None
    user: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        if self.kind is not None and (record.get("operation_type"), record.get("operation_name")) != (
                self.kind, self.name):
            return False
        if self.status is not None and record.get("operation_status") != self.status:
            return False
        if self.policy is not None and record.get("policy_decision") != self.policy:
            return False
        if self.user is not None and (record.get("user_id") is None or str(record["user_id"]) != self.user):
            return False
        if self.since is not None or self.until is not None:
            moment = record_time(record)
            if moment is None:
                return False
            if self.since is not None and moment < self.since:
                return False
            if self.until is not None and moment > self.until:
                return False
        return True


def select(log: Any, selection: LogFilter, limit: int | None) -> list[dict[str, Any]]:
    """Matching records, newest first (file order reversed), at most `limit` (None: all).

    An intent record (`started`) is left out when its call's completion record is in the log, since the
    completion says everything it does; one without (outcome unknown: the process died, or the call is still
    running) is kept. `--status started` lists every intent record.
    """
    completed: set[Any] = set()
    found: list[dict[str, Any]] = []
    for line in as_log(log).newest_first():
        record = line.audit_record()
        if record is None:
            continue
        if record.get("operation_status") != audit.STARTED:
            completed.add(record.get("call_id"))
        elif selection.status is None and record.get("call_id") in completed:
            continue
        if selection.matches(record):
            found.append(record)
            if limit is not None and len(found) >= limit:
                return found
    return found


# -- exports ---------------------------------------------------------------------------------------------------


def _column_value(record: dict[str, Any], column: str) -> Any:
    value = record.get(column)
    if COLUMNS[column] == "JSON" or value is None:
        return value
    if COLUMNS[column] == "TIMESTAMPTZ":  # one that does not parse is NULL, not a failed export
        moment = record_time(record)
        return moment.isoformat() if moment else None
    if COLUMNS[column] in ("INTEGER", "DOUBLE"):
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def export_csv(records: list[dict[str, Any]], target: Path) -> None:
    """One row per record, the schema's fields as columns; JSON fields as JSON text, nulls as empty cells."""
    import csv

    with _writing(target) as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for record in records:
            row = []
            for column in COLUMNS:
                value = _column_value(record, column)
                if value is None:
                    row.append("")
                elif COLUMNS[column] == "JSON":
                    row.append(_inert(json.dumps(value, ensure_ascii=False, default=str)))
                else:
                    row.append(_inert(value) if isinstance(value, str) else value)
            writer.writerow(row)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _inert(text: str) -> str:
    """A cell a spreadsheet would run as a formula (= + - @, tab, carriage return first) gets a leading `'`."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_duckdb(records: list[dict[str, Any]], target: Path) -> None:
    """A table `logs` (replaced if there) in the DuckDB file `target`, typed columns, JSON fields as JSON."""
    import tempfile

    import duckdb

    _parent_folder(target)
    # read_json over a file of the records is far faster than inserting rows one by one.
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as staged:
        for record in records:
            row = {column: _column_value(record, column) for column in COLUMNS}
            # Text that is not valid Unicode (a lone surrogate, from an argument) as the text `\udcff`: DuckDB
            # refuses it even as a JSON escape.
            staged.write(_SURROGATE.sub(lambda found: f"\\\\u{ord(found.group()):04x}",
                                        json.dumps(row, ensure_ascii=False, default=str)) + "\n")
    try:
        types = ", ".join(f"'{column}': '{kind}'" for column, kind in COLUMNS.items())
        columns = ", ".join(f'"{column}"' for column in COLUMNS)
        with duckdb.connect(str(target)) as connection:
            connection.execute(
                f"CREATE OR REPLACE TABLE logs AS SELECT {columns} FROM read_json($path, "
                f"format = 'newline_delimited', columns = {{{types}}})",
                {"path": staged.name},
            )
    except duckdb.Error as exc:
        raise MxcpError(f"cannot export to DuckDB file {target}: {exc}") from None
    finally:
        os.unlink(staged.name)


def _parent_folder(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MxcpError(f"cannot create the folder of {target}: {audit.reason(exc)}") from None


class _writing:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Any:
        _parent_folder(self.target)
        try:
            self.handle = open(self.target, "w", newline="", encoding="utf-8",  # noqa: SIM115 - closed in __exit__
                               errors="backslashreplace")
        except OSError as exc:
            raise MxcpError(f"cannot write {self.target}: {audit.reason(exc)}") from None
        return self.handle

    def __exit__(self, *exc: Any) -> None:
        self.handle.close()


# -- verify ----------------------------------------------------------------------------------------------------


@attrs.frozen
class Finding:
    """A problem at one line: `kind` is changed, removed, inserted, unreadable, torn, unchained or missing."""

    segment: str
    line: int
    kind: str
    message: str
    record_id: str | None = None
    path: str | None = None
    unit: str = "line"  # what `line` counts: a file's lines, or a table's `seq`

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def format(self) -> str:
        where = f"{self.segment} {self.unit} {self.line}" if self.line else self.segment
        record = f" (record_id {self.record_id})" if self.record_id else ""
        return f"{where}{record}: {self.kind}: {self.message}"


@attrs.define
class _Entry:
    """A chained record as verify sees it."""

    line: Line
    record: dict[str, Any]
    stated: str  # the record_hash it carries
    actual: str  # the hash of its bytes
    segment_index: int


@attrs.define
class Verification:
    ok: bool = True
    failure: Finding | None = None
    warnings: list[Finding] = attrs.Factory(list)
    segments: list[dict[str, Any]] = attrs.Factory(list)
    records: int = 0
    chained: int = 0
    unchained: int = 0
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    verified_from: dict[str, Any] | None = None
    head_hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["failure"] = self.failure.as_dict() if self.failure else None
        data["warnings"] = [w.as_dict() for w in self.warnings]
        return data


def _where(line: Line) -> str:
    return f"{line.segment.name} {line.segment.unit} {line.number}"


def verify(log: Any, expect_hashes: list[str] | None = None) -> Verification:
    """Check the hash chain of every segment: the first changed, removed or inserted record fails it.

    Writers keep writing meanwhile: a failure seen while a segment was sealed or removed (the files changed
    between listing and reading) is checked again, after a short pause; if the files keep changing, the result
    is a `retry` failure (run verify again), not a break.
    """
    source = as_log(log)
    attempts = 20
    for attempt in range(attempts):
        files = source.segments()
        result = _verify_files(source, files, expect_hashes)
        if result.ok or [s.name for s in source.segments()] == [s.name for s in files]:
            return result
        time.sleep(min(0.01 * (attempt + 1), 0.1))
    return _fail(Verification(), Finding(
        source.name, 0, "retry", f"the log's segments kept changing while verify read them ({attempts} tries: "
        "writers sealing segments very fast, or log-cleanup); nothing found wrong yet, run verify again"))


def _slim(line: Line, record: dict[str, Any] | None, previous: _Entry | None) -> tuple[Line, dict[str, Any] | None]:
    """What verify keeps of a line once read: its position, and of its record only the fields it looks at later
    (all of a log-cleanup record), so memory grows by under 1 kB per record, not by the records."""
    slim_line = Line(line.segment, line.number, b"", line.complete)
    if record is None or _is_cleanup(record):
        return slim_line, record
    prev = record.get("prev_hash")
    if previous is not None and prev == previous.actual:
        prev = previous.actual  # one string for both
    return slim_line, {"record_id": record.get("record_id"), "prev_hash": prev, "timestamp": record.get("timestamp")}


def _is_cleanup(record: dict[str, Any]) -> bool:
    return (record.get("operation_type"), record.get("operation_name")) == ("audit", CLEANUP_OPERATION)


def _verify_files(source: Any, files: list[Segment], expect_hashes: list[str] | None) -> Verification:
    result = Verification()
    entries: list[_Entry] = []
    # Lines that are not records, each with the number of chained records before it.
    unreadable: list[tuple[int, Line]] = []
    for index, segment in enumerate(files):
        count, first, last = 0, None, None
        for line in source.iter_lines(segment):
            value = line.record()
            if value is None:
                unreadable.append((len(entries), _slim(line, None, None)[0]))
                continue
            record = audit_record(value)
            if record is None:
                return _fail(result, Finding(
                    segment.name, line.number, "changed",
                    'not an audit record: a JSON object without schema_name "mxcp.audit" and an integer '
                    "schema_version, or with fields of the wrong type; no writer wrote it",
                    _record_id(value), segment.location, segment.unit))
            count += 1
            stamp = record.get("timestamp")
            first, last = first or stamp, stamp or last
            if "record_hash" not in record:
                version = record["schema_version"]
                if entries or version >= 3 or index:
                    why = ("a record without record_hash after chained records" if entries else
                           f"a schema version {version} record without record_hash" if version >= 3 else
                           "a record without record_hash outside the oldest segment")
                    return _fail(result, Finding(segment.name, line.number, "inserted",
                                                 f"{why}: inserted, or its hash fields were removed",
                                                 _record_id(record), segment.location, segment.unit))
                result.unchained += 1
                continue
            hashes = audit.line_hash(line.raw)
            if hashes is None:
                return _fail(result, Finding(segment.name, line.number, "changed",
                                             "its record_hash is not the last member of the line as written",
                                             _record_id(record), segment.location, segment.unit))
            slim_line, slim_record = _slim(line, record, entries[-1] if entries else None)
            stated, actual = hashes
            entries.append(_Entry(slim_line, slim_record, actual if stated == actual else stated, actual, index))
        result.segments.append({"segment": segment.name, "path": segment.location, "sealed": segment.sealed,
                                "records": count, "first_timestamp": first, "last_timestamp": last})
        result.records += count
        result.first_timestamp = result.first_timestamp or first
        result.last_timestamp = last or result.last_timestamp
    result.chained = len(entries)

    failure = _check_chain(entries, unreadable)
    cleanups = [entry for entry in entries[:failure[1] if failure else len(entries)] if _is_cleanup(entry.record)]
    if entries:
        start = entries[0]
        anchor = start.record.get("prev_hash")
        if anchor is None:
            result.verified_from = {**_position(start), "anchor": "start of the log"}
        else:
            accounted = _cleanup_accounting(start, cleanups)
            if isinstance(accounted, Finding):
                return _fail(result, accounted)
            result.verified_from = {**_position(start), "anchor": "segments removed by log-cleanup",
                                    "cleanup": _position(accounted),
                                    "cleanup_timestamp": accounted.record.get("timestamp")}
    if failure:
        return _fail(result, failure[0])

    for position, line in unreadable:
        torn = not line.complete and line.segment is files[-1] and not line.segment.sealed
        if torn:
            message = "the last line is incomplete (a write cut short, or a write in progress): not a record"
        elif position < len(entries):
            message = ("not a record (a write cut short, completed into a line by the next write); the chain "
                       "continues over it, so it did not replace a record")
        else:
            message = ("not a record (a write cut short, completed into a line by the next write), after the last "
                       "record: nothing follows to show whether it replaced one")
        result.warnings.append(Finding(line.segment.name, line.number, "torn" if torn else "unreadable", message,
                                       None, line.segment.location, line.segment.unit))
    present = {segment.name for segment in files}
    for cleanup_entry in cleanups:
        for removed in _removed_segments(cleanup_entry.record):
            if removed.get("segment") in present:
                result.warnings.append(_finding(
                    cleanup_entry, "not-removed",
                    f"this log-cleanup record names {removed.get('segment')} as removed, but it is still there "
                    "(log-cleanup stopped before removing it); it was verified like any other segment"))
    if result.unchained:
        result.warnings.append(Finding(
            files[0].name, 0, "unchained",
            f"{result.unchained} records written before the hash chain (schema version 1 or 2) cannot be verified: "
            "anyone who can write the file could have written or changed them"))
    if not files:
        result.warnings.append(Finding(source.name, 0, "missing", f"no audit log at {source.where}: nothing to verify"))
    elif not entries:
        result.warnings.append(Finding(files[-1].name, 0, "unchained", "no chained records: nothing was verified"))
    else:
        result.head_hash = entries[-1].actual
    known = {entry.actual for entry in entries}
    for expected in expect_hashes or []:
        if expected not in known:
            return _fail(result, Finding(
                source.name, 0, "missing",
                f"no record has record_hash {expected}: the record it named was changed or removed (or removed "
                "by log-cleanup with its segment), or the log was rewritten"))
    return result


# Timestamps of records in file order may step back this much (records of processes sharing the log are stamped
# before they wait for the lock; clocks are adjusted).
CLOCK_SLACK = timedelta(hours=1)


def _removed_segments(record: dict[str, Any]) -> list[dict[str, Any]]:
    output = record.get("output_data")
    removed = output.get("removed_segments") if isinstance(output, dict) else None
    return [item for item in removed if isinstance(item, dict)] if isinstance(removed, list) else []


def _cleanup_accounting(start: _Entry, cleanups: list[_Entry]) -> _Entry | Finding:
    """The log-cleanup record that accounts for the oldest record's prev_hash, or why none does.

    Its claim is checked as far as the log allows: it names that hash as the last record of the newest segment
    it removed, it names a retention, and every segment it removed had its newest record older than that
    retention at the cleanup's time, but not newer than the oldest record left.
    """
    anchor = start.record.get("prev_hash")
    claims = [entry for entry in cleanups
              if (removed := _removed_segments(entry.record)) and removed[-1].get("last_record_hash") == anchor]
    if not claims:
        return _finding(start, "removed",
                        "the oldest record follows a record that is not in the log, and no log-cleanup record "
                        "accounts for it: older records or segments were removed outside log-cleanup")
    entry = claims[0]
    record = entry.record
    inputs = record.get("input_data")
    retention = inputs.get("retention_days") if isinstance(inputs, dict) else None
    when = record_time(record)
    first = record_time(start.record)
    if not isinstance(retention, int) or isinstance(retention, bool) or retention < 1 or when is None:
        return _finding(entry, "changed", "a log-cleanup record without a retention (input_data.retention_days) "
                                          "or a timestamp: it cannot account for removed segments")
    for removed in _removed_segments(record):
        newest = record_time({"timestamp": removed.get("last_timestamp")})
        name = removed.get("segment")
        if newest is None:
            return _finding(entry, "changed", f"this log-cleanup record gives no newest timestamp for {name}")
        if when - newest < timedelta(days=retention):
            return _finding(entry, "changed", (
                f"this log-cleanup record says it removed {name}, whose newest record ({removed.get('last_timestamp')}) "
                f"was not older than its retention of {retention} days at the cleanup's time ({record.get('timestamp')}): "
                "log-cleanup never removes that; the segments were removed by hand and the record forged"))
        if first is not None and first + CLOCK_SLACK < newest:
            return _finding(entry, "changed", (
                f"this log-cleanup record says {name} ended at {removed.get('last_timestamp')}, after the oldest record "
                f"left ({start.record.get('timestamp')}, {_where(start.line)}), which was written after it: forged"))
    return entry


def _check_chain(entries: list[_Entry], unreadable: list[tuple[int, Line]]) -> tuple[Finding, int] | None:
    """The first break of the chain, and the index of the entry where it shows."""
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        record = entry.record
        if entry.stated != entry.actual:
            return _finding(entry, "changed", "its content does not match its record_hash"), index
        if entry.actual in seen:
            return _finding(entry, "inserted", f"a copy of the record at {_where(entries[seen[entry.actual]].line)}"
                            ), index
        if index:
            before = entries[index - 1]
            prev = record.get("prev_hash")
            if prev != before.actual:
                return _classify_break(entries, index, seen, unreadable), index
        seen[entry.actual] = index
    return None


def _classify_break(entries: list[_Entry], index: int, seen: dict[str, int],
                    unreadable: list[tuple[int, Line]]) -> Finding:
    entry, before = entries[index], entries[index - 1]
    prev = entry.record.get("prev_hash")
    if prev is None:
        return _finding(entry, "inserted", f"prev_hash is null, but it follows the record at {_where(before.line)}: "
                                           "inserted, or a chain restarted by a writer that ignored the log")
    if prev in seen:
        first_inserted = entries[seen[prev] + 1]
        return _finding(first_inserted, "inserted", f"not part of the chain: the record at {_where(entry.line)} "
                                                    f"follows the record at {_where(entries[seen[prev]].line)}")
    following = entries[index + 1] if index + 1 < len(entries) else None
    if following is not None and following.record.get("prev_hash") == before.actual:
        return _finding(entry, "inserted", f"not part of the chain: the record after it follows the record at "
                                           f"{_where(before.line)}")
    between = [line for position, line in unreadable if position == index]
    if between:
        return Finding(between[0].segment.name, between[0].number, "changed",
                       f"this line is not a readable record, and the record at {_where(entry.line)} follows a "
                       "record that is missing: a record here was changed or damaged",
                       None, between[0].segment.location, between[0].segment.unit)
    if entry.segment_index != before.segment_index and entry.line.number == 1:
        gap = ""
        low, high = before.line.segment.number, entry.line.segment.number
        if low is not None and high is not None and high - low > 1:
            missing = ", ".join(str(n) for n in range(low + 1, high))
            gap = f" (segment number{'s' if high - low > 2 else ''} {missing} missing)"
        return _finding(entry, "removed", f"the first record of this segment does not follow the last record of "
                                          f"{before.line.segment.name}: a segment between them was removed{gap}, "
                                          "or records were removed from the end of one or the start of the other")
    return _finding(entry, "removed", f"it does not follow the record at {_where(before.line)}: records between "
                                      "them were removed, or that record was changed and its hash recomputed")


def _record_id(record: dict[str, Any]) -> str | None:
    value = record.get("record_id")
    return value if isinstance(value, str) else None


def _finding(entry: _Entry, kind: str, message: str) -> Finding:
    return Finding(entry.line.segment.name, entry.line.number, kind, message, _record_id(entry.record),
                   entry.line.segment.location, entry.line.segment.unit)


def _position(entry: _Entry) -> dict[str, Any]:
    position = {"segment": entry.line.segment.name, "line": entry.line.number, "record_id": _record_id(entry.record)}
    if entry.line.segment.unit != "line":  # a table's rows: `line` is the row's seq
        position["unit"] = entry.line.segment.unit
    return position


def _fail(result: Verification, finding: Finding) -> Verification:
    result.ok = False
    result.failure = finding
    return result


# -- cleanup ---------------------------------------------------------------------------------------------------


@attrs.frozen
class Expired:
    """A sealed segment log-cleanup removes (or, in a table, the run of its oldest rows: `label` names it)."""

    path: Path | None
    records: int
    first_timestamp: str | None
    last_timestamp: str | None
    last_record_hash: str | None
    size: int
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label if self.label is not None else self.path.name

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.name, "path": None if self.path is None else str(self.path), "records": self.records,
                "first_timestamp": self.first_timestamp, "last_timestamp": self.last_timestamp,
                "last_record_hash": self.last_record_hash, "bytes": self.size}


def expired_segments(log: Any, retention_days: int, now: datetime) -> list[Expired]:
    """What log-cleanup would remove now (the reader's `expired`)."""
    return as_log(log).expired(retention_days, now)


def cleanup(log: Any, settings: audit.AuditSettings, now: datetime) -> list[Expired]:
    """Remove what is past the retention, after appending a record naming it (the reader's `cleanup`)."""
    return as_log(log).cleanup(settings, now)


def _expired_files(active: Path, retention_days: int, now: datetime) -> list[Expired]:
    """The oldest sealed segments whose newest record is older than the retention, up to the first that is not.

    Only a run of the oldest goes, so the log stays one chain; a segment with no readable timestamp is kept.
    """
    cutoff = now - timedelta(days=retention_days)
    found: list[Expired] = []
    for segment in segments(active):
        if not segment.sealed:
            break
        newest, oldest, count, last_hash = None, None, 0, None
        for line in iter_lines(segment):
            record = line.audit_record()
            if record is None:
                continue
            count += 1
            moment = record_time(record)
            if moment is not None:
                newest = moment if newest is None else max(newest, moment)
                oldest = moment if oldest is None else min(oldest, moment)
            if isinstance(record.get("record_hash"), str):
                last_hash = record["record_hash"]
        if newest is None or newest >= cutoff:
            break
        found.append(Expired(segment.path, count, oldest.isoformat() if oldest else None, newest.isoformat(),
                             last_hash, segment.path.stat().st_size))
    return found


def _cleanup_files(active: Path, settings: audit.AuditSettings, now: datetime) -> list[Expired]:
    """Remove the expired segments, after appending a record naming them (the anchor `verify` trusts)."""
    if not _expired_files(active, settings.retention_days, now):
        return []
    with audit.sink_for(active).exclusive(fsync=settings.fsync) as append:
        # Again under the lock: a writer may have sealed a segment since.
        expired = _expired_files(active, settings.retention_days, now)
        if not expired:
            return []
        # Checked before the record is written, so a folder that refuses removals leaves no record claiming any.
        if not os.access(active.parent, os.W_OK | os.X_OK):
            raise MxcpError(f"cannot remove audit log segments from {active.parent}: no permission to change the "
                            "folder (read-only?); nothing was removed and nothing recorded")
        # The record comes first: a crash (or a failed removal) after it leaves a segment named as removed but
        # still there, which verify reports as a warning; the other order could leave segments gone unrecorded.
        append(audit.record_body(cleanup_record(expired, settings.retention_days)))
        failed = []
        for segment in expired:
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append(f"{segment.path.name} ({audit.reason(exc)})")
        if failed:
            raise MxcpError(f"cannot remove audit log segment{'s' if len(failed) > 1 else ''} {', '.join(failed)} "
                            f"in {active.parent}: the log-cleanup record naming them is written, so verify warns "
                            "that they are still there; remove them with log-cleanup once it can")
    return expired


def cleanup_record(expired: list[Expired], retention_days: int) -> dict[str, Any]:
    """The record log-cleanup appends before removing `expired`: what verify checks the oldest record left by."""
    import getpass

    try:
        os_user: str | None = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        os_user = None
    record_id = uuid.uuid4().hex
    return {
        "schema_name": audit.SCHEMA_NAME, "schema_version": audit.SCHEMA_VERSION, "record_id": record_id,
        "call_id": record_id, "timestamp": datetime.now(timezone.utc).isoformat(),
        "operation_type": "audit", "operation_name": CLEANUP_OPERATION, "operation_status": "success",
        "duration_ms": None, "caller_type": "cli", "user_id": None, "session_id": None, "trace_id": None,
        "input_data": {"retention_days": retention_days, "os_user": os_user},
        "output_data": {"removed_segments": [
            {key: value for key, value in segment.as_dict().items() if key != "path"} for segment in expired]},
        "error": None, "policies_evaluated": [], "policy_decision": None, "policy_reason": None,
    }


# -- commands --------------------------------------------------------------------------------------------------


def _log_location(profile: str | None) -> tuple[Any, audit.AuditSettings]:
    """The reader of the profile's audit sink, and its settings; a clear error when the profile does not audit."""
    opened = commands.open_project(profile)
    project = opened.context
    if project.profile not in project.site.profiles and project.profile != project.site.profile:
        raise MxcpError(f"profile '{project.profile}' is not in {project.root / 'mxcp-site.yml'} (profiles: "
                        f"{', '.join(project.site.profiles) or 'none'})")
    settings = project.plugin_config("audit", scope="site_profile")
    if not audit.audit_enabled(settings):
        raise MxcpError(
            f"the audit log is off for profile '{project.profile}': set profiles.{project.profile}.audit.enabled: "
            f"true in {project.root / 'mxcp-site.yml'}, or MXCP_AUDIT_ENABLED=1 for one command")
    try:
        sink = audit.open_sink(opened.hooks, project, settings)
    except audit.NoSink as exc:
        raise MxcpError(str(exc)) from None
    reader = getattr(sink, "reader", None)
    if reader is None:
        raise MxcpError(f"the audit sink '{settings.sink}' (profiles.{project.profile}.audit.sink) cannot be read "
                        "by mxcp log: read it with the tools of where it writes")
    return reader(), settings


def log_command(
    ctx: typer.Context,
    tool: Annotated[str | None, typer.Option("--tool", metavar="NAME", help="Only calls of this tool.")] = None,
    resource: Annotated[str | None, typer.Option(
        "--resource", metavar="URI", help="Only calls of this resource.")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", metavar="NAME", help="Only calls of this prompt.")] = None,
    status: Annotated[str | None, typer.Option(
        "--status", metavar="STATUS", help="success | error | started (every intent record, paired or not).")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", metavar="DECISION", help="The policy decision: allow | deny | warn.")] = None,
    user: Annotated[str | None, typer.Option("--user", metavar="USER_ID", help="Only calls by this user.")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="WHEN", help="Records from this moment: 10m, 2h, 1d (ago) or an ISO timestamp.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", metavar="WHEN", help="Records up to this moment (same forms).")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", metavar="N", help=f"At most N records, newest first (default {DEFAULT_LIMIT} on screen, all in "
                                     "exports; 0: all).")] = None,
    export_csv_to: Annotated[Path | None, typer.Option(
        "--export-csv", metavar="FILE", help="Write the selected records to this CSV file.")] = None,
    export_duckdb_to: Annotated[Path | None, typer.Option(
        "--export-duckdb", metavar="FILE", help="Write the selected records to table `logs` of this DuckDB file.")
    ] = None,
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Show the audit log, newest first; filters combine.

    Reads every segment of the profile's log. A call's intent record shows
    only when the call has no completion record (outcome unknown);
    --status started lists them all. `mxcp log verify` checks the chain.

    Examples:
      mxcp log                                      # the newest 100 records
      mxcp log --tool search --status error --since 2h
      mxcp log --policy deny --user ann --limit 0   # all of them
      mxcp log --since 2026-01-01 --until 2026-02-01 --export-csv jan.csv
      mxcp log --export-duckdb audit.duckdb         # table logs
      mxcp log verify
    """
    if ctx.invoked_subcommand is not None:  # `mxcp log [--profile ...] verify`: the subcommand reads these
        given = [name for name, value in ctx.params.items()
                 if value not in (None, False) and name not in ("profile", "json_output", "debug")]
        if given:
            with commands.reporting_errors(json_output, debug):
                raise MxcpError(f"`mxcp log {ctx.invoked_subcommand}` takes no "
                                + ", ".join("--" + name.replace("_to", "").replace("_", "-") for name in given))
        return
    with commands.reporting_errors(json_output, debug):
        endpoints = [(kind, name) for kind, name in (("tool", tool), ("resource", resource), ("prompt", prompt))
                     if name is not None]
        if len(endpoints) > 1:
            raise MxcpError("give one of --tool, --resource and --prompt")
        if status is not None and status not in STATUSES:
            raise MxcpError(f"--status {status!r} is not one of {', '.join(STATUSES)}")
        if policy is not None and policy not in DECISIONS:
            raise MxcpError(f"--policy {policy!r} is not one of {', '.join(DECISIONS)}")
        if limit is not None and limit < 0:
            raise MxcpError(f"--limit must be 0 (all) or more, not {limit}")
        now = datetime.now(timezone.utc)
        selection = LogFilter(
            kind=endpoints[0][0] if endpoints else None, name=endpoints[0][1] if endpoints else None,
            status=status, policy=policy, user=user,
            since=parse_moment(since, "--since", now) if since is not None else None,
            until=parse_moment(until, "--until", now, end_of_day=True) if until is not None else None,
        )
        source, _ = _log_location(profile)
        exporting = export_csv_to is not None or export_duckdb_to is not None
        chosen = limit if limit is not None else (0 if exporting else DEFAULT_LIMIT)
        found = select(source, selection, chosen or None)
        if exporting:
            exported = []
            if export_csv_to is not None:
                export_csv(found, export_csv_to)
                exported.append({"format": "csv", "path": str(export_csv_to)})
            if export_duckdb_to is not None:
                export_duckdb(found, export_duckdb_to)
                exported.append({"format": "duckdb", "path": str(export_duckdb_to), "table": "logs"})
            commands.ok({"records": len(found), "exported": exported}, json_output, lambda _: commands.console().print(
                "\n".join(f"[green]✓[/] {commands.plural(len(found), 'record')} exported to {e['path']}"
                          + (" (table logs)" if e["format"] == "duckdb" else "") for e in exported),
                highlight=False))
            return
        missing = source.missing() if not found else None
        if missing:
            commands.ok([], json_output, lambda _: commands.console().print(
                f"no audit records yet: {missing}", highlight=False))
            return
        found = [_printable(record) for record in found]
        commands.ok(found, json_output, lambda _: _render_table(found, source.where, chosen))


def _printable(value: Any) -> Any:
    """`value` with text that is not valid Unicode (a lone surrogate, from an argument) as `\\udcff`: printable."""
    if isinstance(value, str):
        return _SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
    if isinstance(value, dict):
        return {_printable(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    return value


def _render_table(found: list[dict[str, Any]], where: str, limit: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = commands.console()
    if not found:
        out.print(f"no matching audit records in {escape(where)}", highlight=False)
        return
    table = Table(title=f"{commands.plural(len(found), 'record')}, newest first", title_justify="left")
    for column in ("time (UTC)", "type", "name", "status", "ms", "caller", "user", "policy", "error"):
        table.add_column(column, overflow="fold", justify="right" if column == "ms" else "left",
                         no_wrap=column not in ("name", "user", "error"), min_width=8 if column == "name" else None)
    colours = {"success": "green", "error": "red", "started": "yellow"}
    for record in found:
        moment = record_time(record)
        status = str(record.get("operation_status") or "")
        duration = record.get("duration_ms")
        table.add_row(
            moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if moment else "?",
            escape(str(record.get("operation_type") or "")),
            escape(str(record.get("operation_name") or "")),
            f"[{colours.get(status, 'white')}]{escape(status)}[/]",
            f"{duration:.1f}" if isinstance(duration, (int, float)) else "",
            escape(str(record.get("caller_type") or "")),
            escape(str(record.get("user_id") or "")),
            escape(str(record.get("policy_decision") or "")),
            escape(commands.short(record.get("error") or "", 60)),
        )
    out.print(table)
    if limit and len(found) >= limit:
        out.print(f"the newest {limit} shown; --limit 0 for all", highlight=False)
    if any(r.get("operation_status") == audit.STARTED for r in found):
        out.print("[yellow]started[/]: no completion record (still running, or the process died during the call)",
                  highlight=False)


def verify_command(
    ctx: typer.Context,
    expect_hash: Annotated[list[str] | None, typer.Option(
        "--expect-hash", metavar="HASH",
        help="A record_hash saved earlier (e.g. a past head): fail if it is no longer in the chain (repeatable)."
    )] = None,
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Check the audit log's hash chain; exit 1 at the first changed, removed or inserted record.

    Walks every segment in order. On success prints the records, the
    time span, where it verified from and the head record_hash (keep it
    elsewhere and pass it to --expect-hash later to catch a rewrite).

    Examples:
      mxcp log verify
      mxcp log verify --json-output
      mxcp log verify --expect-hash 3f5a9c0e1b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a
    """
    outer = ctx.parent.params if ctx.parent is not None else {}  # `mxcp log --profile p verify` means the same
    profile = profile or outer.get("profile")
    json_output = json_output or bool(outer.get("json_output"))
    debug = debug or bool(outer.get("debug"))
    with commands.reporting_errors(json_output, debug):
        expected = []
        for given in expect_hash or []:
            if not re.fullmatch(r"[0-9a-fA-F]{64}", given.strip()):
                raise MxcpError(f"--expect-hash {given!r} is not a record_hash (64 hexadecimal digits)")
            expected.append(given.strip().lower())
        source, _ = _log_location(profile)
        result = verify(source, expected)
        if json_output:
            payload: dict[str, Any] = {"status": "ok" if result.ok else "error", "result": result.as_dict()}
            if result.failure:
                payload["error"] = result.failure.format()
            commands.emit_json(payload)
        else:
            _render_verification(result, source.folder)
        if not result.ok:
            raise typer.Exit(1)


def _render_verification(result: Verification, folder: str) -> None:
    from rich.markup import escape

    out = commands.console()
    err = commands.console(stderr=True)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning.format())}", highlight=False)
    if result.failure and result.failure.kind == "retry":
        err.print(f"[yellow]✗ audit log not verified:[/] {escape(result.failure.format())}", highlight=False)
        return
    if result.failure:
        err.print(f"[bold red]✗ audit log NOT intact:[/] {escape(result.failure.format())}", highlight=False)
        err.print(f"  in {escape(result.failure.path or folder)}", highlight=False)
        return
    summary = (f"{commands.plural(len(result.segments), 'segment')}, {commands.plural(result.records, 'record')}"
               + (f" ({result.unchained} unchained)" if result.unchained else ""))
    if not result.chained:
        out.print(f"nothing verified in {escape(folder)}: {summary}", highlight=False)
        return
    span = f", {result.first_timestamp} → {result.last_timestamp}" if result.first_timestamp else ""
    out.print(f"[green]✓[/] audit log intact: {summary}{span}", highlight=False)
    start = result.verified_from or {}
    origin = start.get("anchor")
    if start.get("cleanup"):
        origin = (f"which follows segments removed by log-cleanup at {start.get('cleanup_timestamp')} "
                  f"({start['cleanup']['segment']} {start['cleanup'].get('unit', 'line')} {start['cleanup']['line']})")
    out.print(f"  verified from {start.get('segment')} {start.get('unit', 'line')} {start.get('line')} ({origin})",
              highlight=False)
    out.print(f"  head record_hash {result.head_hash}", highlight=False)


def cleanup_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the segments that would be removed.")] = False,
    profile: commands.ProfileOpt = None,
    json_output: commands.JsonOpt = False,
    debug: commands.DebugOpt = False,
) -> None:
    """Remove audit log segments older than the retention.

    Whole sealed segments whose newest record is older than the profile's
    audit.retention_days (default 90), oldest first; a record naming them
    is appended to the log first, so `mxcp log verify` still passes.

    Examples:
      mxcp log-cleanup --dry-run                    # list what would go
      mxcp log-cleanup
      mxcp log-cleanup --profile prod --json-output
    """
    with commands.reporting_errors(json_output, debug):
        source, settings = _log_location(profile)
        now = datetime.now(timezone.utc)
        removed = (expired_segments(source, settings.retention_days, now) if dry_run
                   else cleanup(source, settings, now))
        result = {"dry_run": dry_run, "retention_days": settings.retention_days,
                  "segments": [segment.as_dict() for segment in removed],
                  "records": sum(segment.records for segment in removed)}

        def render(_: Any) -> None:
            out = commands.console()
            if not removed:
                out.print(f"nothing older than {settings.retention_days} days in {source.folder}", highlight=False)
                return
            verb = "would remove" if dry_run else "removed"
            for segment in removed:
                out.print(f"{'-' if dry_run else '[red]-[/]'} {segment.name}: "
                          f"{commands.plural(segment.records, 'record')}, newest {segment.last_timestamp}",
                          highlight=False)
            out.print(f"{verb} {commands.plural(len(removed), 'segment')} "
                      f"({commands.plural(result['records'], 'record')}) older than {settings.retention_days} days",
                      highlight=False)

        commands.ok(result, json_output, render)


def register(cli: typer.Typer) -> None:
    """`mxcp log` (a command with the subcommand `verify`) and `mxcp log-cleanup`."""
    cli.command("log", cls=_LogGroup)(log_command)
    cli.command("log-cleanup")(cleanup_command)


def _verify_click_command() -> Any:
    verify_cli = typer.Typer(add_completion=False)
    verify_cli.command("verify")(verify_command)
    return typer.main.get_command(verify_cli)


class _LogGroup(TyperGroup):
    """`mxcp log` lists records when no subcommand follows; `mxcp log verify` checks the chain.

    Registered as a command (not a sub-app), so it is listed and found like any other plugin command.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["no_args_is_help"] = False
        super().__init__(invoke_without_command=True, **kwargs)
        self.add_command(_verify_click_command(), "verify")
