"""Builtin plugin: the JSONL audit log — an intent record before each endpoint call, a completion record after.

Enabled by the site profile's `audit.enabled` or MXCP_AUDIT_ENABLED=1; the file defaults to audit/logs-<profile>.jsonl.
docs/audit.md describes the records, how to pair them, and what happens when the file cannot be written.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import attrs

from mxcp_core import ConfigSection, ExecutionError, env_flag, hookimpl, mask, to_jsonable

SCHEMA_NAME = "mxcp.audit"
# 2: an intent record (operation_status "started") precedes each completion record; `call_id` pairs them.
SCHEMA_VERSION = 2
STARTED = "started"
# Completion records kept in memory while the file cannot take them (written before the next record). With
# `on_failure: refuse` calls stop at the first failure, so this only fills when failures are merely logged.
MAX_PENDING = 1000

log = logging.getLogger(__name__)


@attrs.define
class AuditSettings:
    """`profiles.<name>.audit` of mxcp-site.yml."""

    enabled: bool = False
    path: str | None = None
    # refuse: a call whose intent record cannot be written does not run (nothing happens unaudited).
    # log: it runs anyway, and the failure is only logged.
    on_failure: Literal["refuse", "log"] = "refuse"
    # Records reach the OS before the call runs, so they survive the process being killed; fsync also makes
    # them survive a power loss, at the cost of a disk flush per record.
    fsync: bool = False


@hookimpl
def config_sections():
    return [ConfigSection("audit", AuditSettings, scope="site_profile", description="the JSONL audit log")]


def audit_path(project: Any) -> Path | None:
    """Where records go for this project, or None when auditing is off."""
    settings = project.plugin_config("audit", scope="site_profile")
    env = env_flag("MXCP_AUDIT_ENABLED")
    enabled = env if env is not None else settings.enabled
    if not enabled:
        return None
    if settings.path:
        path = Path(settings.path)
        return path if path.is_absolute() else project.root / path
    return project.path("audit") / f"logs-{project.profile}.jsonl"


class Sink:
    """One audit file: whole lines appended, and the completion records it could not take yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[bytes] = []
        self.lock = threading.Lock()

    def write(self, line: bytes, *, fsync: bool) -> None:
        """Append `line` after any pending records; raises OSError (the line is not written) when the file can't."""
        with self.lock:
            self._write_pending(fsync)
            _append(self.path, line, fsync)

    def keep(self, line: bytes) -> None:
        with self.lock:
            self.pending.append(line)
            if len(self.pending) > MAX_PENDING:
                del self.pending[0]
                log.critical("audit log %s: over %d unwritten records, the oldest is lost", self.path, MAX_PENDING)

    def flush(self, *, fsync: bool) -> None:
        with self.lock:
            self._write_pending(fsync)

    def _write_pending(self, fsync: bool) -> None:
        while self.pending:
            _append(self.path, self.pending[0], fsync)
            self.pending.pop(0)  # only once written: a failure keeps it, in order


_sinks: dict[Path, Sink] = {}
_sinks_lock = threading.Lock()


def sink_for(path: Path) -> Sink:
    with _sinks_lock:
        return _sinks.setdefault(path, Sink(path))


def _append(path: Path, line: bytes, fsync: bool) -> None:
    """One record, appended with unbuffered writes: once this returns, a killed process cannot lose it."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:  # the folder is missing (first record, or removed since): made here, not per record
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        size = os.fstat(fd).st_size
        # A write cut short (disk full) leaves a torn last line: start on a fresh line so only that one is lost.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


@hookimpl(wrapper=True, tryfirst=True)  # outermost: denials by other wrappers are recorded too
def call_endpoint(call: Any) -> Any:
    project = call.runtime.context
    path = audit_path(project)
    if path is None:
        return (yield)
    settings = project.plugin_config("audit", scope="site_profile")
    sink = sink_for(path)
    call_id = uuid.uuid4().hex
    inputs = _input_data(call)  # the same in both records: made once
    try:
        sink.write(_line(call, call_id, inputs, STARTED, None, None, None), fsync=settings.fsync)
    except Exception as exc:  # noqa: BLE001 - whatever stops the record, the call must not run unrecorded
        reason = _reason(exc)
        if settings.on_failure == "refuse":
            log.error("audit log %s cannot be written (%s): %s '%s' refused", path, reason,
                      call.endpoint.kind, call.endpoint.key)
            raise ExecutionError(
                f"call refused: the audit log {path} cannot be written ({reason}); nothing was run"
            ) from None
        log.error("audit log %s cannot be written (%s): %s '%s' runs unaudited (on_failure: log)", path, reason,
                  call.endpoint.kind, call.endpoint.key)
    started = time.perf_counter()
    status, error, result = "success", None, None
    try:
        result = yield
        return result
    except BaseException as exc:
        status, error = "error", str(exc) or type(exc).__name__
        raise
    finally:
        _complete(sink, settings, call, call_id, inputs, status, error, result,
                  (time.perf_counter() - started) * 1000)


def _complete(sink: Sink, settings: AuditSettings, call: Any, call_id: str, inputs: Any, status: str,
              error: str | None, result: Any, duration_ms: float) -> None:
    """Write the completion record. The call has run: its outcome stands whatever happens here."""
    line = _line(call, call_id, inputs, status, error, result, duration_ms)
    try:
        sink.write(line, fsync=settings.fsync)
    except Exception as exc:  # noqa: BLE001 - reporting failure now would make the client retry work that is done
        sink.keep(line)
        then = ("further calls are refused until it can be written again" if settings.on_failure == "refuse"
                else "further calls run unaudited (on_failure: log)")
        log.critical(
            "AUDIT RECORD NOT WRITTEN: %s '%s' (call_id %s) finished with status %s, but the audit log %s cannot "
            "be written (%s). The record is kept in memory and written first once the file works; %s.",
            call.endpoint.kind, call.endpoint.key, call_id, status, sink.path, _reason(exc), then,
        )


@hookimpl
def on_shutdown(runtime: Any) -> None:
    """Records still pending get a last chance; if the file still fails, say loudly what is lost."""
    for sink in list(_sinks.values()):
        if not sink.pending:
            continue
        try:
            sink.flush(fsync=True)
        except OSError as exc:
            log.critical("audit log %s: %d completion records lost at shutdown (%s)", sink.path,
                         len(sink.pending), _reason(exc))


def _reason(exc: BaseException) -> str:
    # strerror alone: the path is named separately, and the client's copy of the message drops paths.
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__


def _input_data(call: Any) -> Any:
    # Sensitive fields are already "[REDACTED]" by type; mask also catches secret values and sensitive
    # arguments elsewhere in the data (a tool returning a secret, or echoing a password in a plain field).
    compiled = call.compiled
    return mask(to_jsonable(compiled.parameters.redact(call.arguments) if compiled else {}), call)


def _line(call: Any, call_id: str, inputs: Any, status: str, error: str | None, result: Any,
          duration_ms: float | None) -> bytes:
    compiled = call.compiled
    outputs = compiled.returns.redact(result) if compiled and status == "success" else None
    record = {
        "schema_name": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "record_id": uuid.uuid4().hex,
        "call_id": call_id,
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "operation_type": call.endpoint.kind,
        "operation_name": call.endpoint.key,
        "operation_status": status,
        "duration_ms": None if duration_ms is None else round(duration_ms, 3),
        "caller_type": call.caller,
        "user_id": call.user.user_id if call.user else None,
        "session_id": call.session_id,
        "trace_id": call.trace_id,
        "input_data": inputs,
        "output_data": mask(to_jsonable(outputs), call),  # masked as the inputs are (see _input_data)
        "error": mask(error, call) if error else None,
        "policies_evaluated": call.notes.get("policies_evaluated", []),
        "policy_decision": call.notes.get("policy_decision"),
        "policy_reason": call.notes.get("policy_reason"),
    }
    return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
