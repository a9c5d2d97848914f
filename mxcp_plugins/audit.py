"""Builtin plugin: the audit log — an intent record before each endpoint call, a completion record after.

Enabled by the site profile's `audit.enabled` or MXCP_AUDIT_ENABLED=1. The records go to the sink `audit.sink`
names, opened through the `open_audit_sink` hook: this plugin opens `jsonl`, a file that defaults to
audit/logs-<profile>.jsonl (`audit_postgres` opens `postgres`).
Each record carries the hash of the one before it (`prev_hash`) and its own (`record_hash`), so `mxcp log verify`
can tell a changed, removed or inserted record; the active file is sealed into a numbered segment at a size limit.
docs/audit.md describes the records, the hash chain, how to pair records, and what happens when the file cannot be
written. Reading, verifying and cleaning up the log is in `audit_log`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import attrs

from mxcp_core import ConfigError, ConfigSection, ExecutionError, MxcpError, env_flag, hookimpl, mask, to_jsonable

SCHEMA_NAME = "mxcp.audit"
# 2: an intent record (operation_status "started") precedes each completion record; `call_id` pairs them.
# 3: `prev_hash` and `record_hash` chain the records (docs/audit.md, "The hash chain").
SCHEMA_VERSION = 3
STARTED = "started"
# Completion records kept in memory while the sink cannot take them (written before the next record). With
# `on_failure: refuse` calls stop at the first failure, so this only fills when failures are merely logged.
MAX_PENDING = 1000
DEFAULT_TABLE = "mxcp_audit"  # a database sink's table
MAX_RETENTION_DAYS = 36500  # a hundred years: more is a typo (and beyond the dates log-cleanup can compute)

# A chained line ends with this member, then `}`: the hash covers the line's bytes without it.
HASH_MEMBER = b', "record_hash": "'
_HASH_TAIL = re.compile(rb', "record_hash": "([0-9a-f]{64})"\}$')
HASH_SUFFIX_LENGTH = len(HASH_MEMBER) + 64 + 2  # the member, the hex digest, `"` and `}`

log = logging.getLogger(__name__)


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, not {value}")


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
    # The active file is sealed into a numbered segment once it reaches this size (null: never).
    max_segment_mb: float | None = attrs.field(default=50.0, validator=_positive)
    # `mxcp log-cleanup` deletes sealed segments whose newest record is older than this.
    retention_days: int = attrs.field(default=90, validator=[_positive, attrs.validators.le(MAX_RETENTION_DAYS)])
    # Where records go: `jsonl` (this plugin's file) or a sink another plugin opens (`postgres`: audit_postgres).
    sink: str = "jsonl"
    # The user-config secret a database sink connects with (postgres: `type: postgres`), and its table.
    secret: str | None = None
    table: str = attrs.field(default=DEFAULT_TABLE, validator=attrs.validators.matches_re(
        r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?"))

    @property
    def max_segment_bytes(self) -> int:
        return 0 if self.max_segment_mb is None else max(1, int(self.max_segment_mb * 1024 * 1024))


@hookimpl
def config_sections():
    return [ConfigSection("audit", AuditSettings, scope="site_profile", description="the audit log")]


def audit_enabled(settings: AuditSettings) -> bool:
    env = env_flag("MXCP_AUDIT_ENABLED")
    return env if env is not None else settings.enabled


def configured_path(project: Any, settings: AuditSettings) -> Path:
    """The active file's path, whether or not auditing is on."""
    if settings.path:
        path = Path(settings.path)
        return path if path.is_absolute() else project.root / path
    return project.path("audit") / f"logs-{project.profile}.jsonl"


# -- segments and the hash chain -------------------------------------------------------------------------------


def _stem_and_suffix(active: Path) -> tuple[str, str]:
    return (active.stem, active.suffix) if active.suffix else (active.name, "")


def _segment_pattern(active: Path) -> re.Pattern[str]:
    stem, suffix = _stem_and_suffix(active)
    return re.compile(re.escape(stem) + r"\.(\d{6,})" + re.escape(suffix) + "$")


def sealed_segments(active: Path) -> list[tuple[int, Path]]:
    """The sealed segments of the log whose active file is `active`, oldest first, with their numbers."""
    pattern = _segment_pattern(active)
    try:
        names = os.listdir(active.parent)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m.group(1)), active.parent / name) for name in names if (m := pattern.match(name))]
    return sorted(found)


def sealed_name(active: Path, number: int) -> Path:
    stem, suffix = _stem_and_suffix(active)
    return active.with_name(f"{stem}.{number:06d}{suffix}")


def chain_line(body: bytes, prev_hash: str | None) -> tuple[bytes, str]:
    """The line for a record `body` (a JSON object without the hash fields) following `prev_hash`, and its hash.

    record_hash is the SHA-256 of the line as written, without its trailing `, "record_hash": "…"` member and
    newline: a JSON object whose last member is `prev_hash`.
    """
    prev = b"null" if prev_hash is None else b'"' + prev_hash.encode("ascii") + b'"'
    hashed = body[:-1] + b', "prev_hash": ' + prev + b"}"
    digest = hashlib.sha256(hashed).hexdigest()
    return hashed[:-1] + HASH_MEMBER + digest.encode("ascii") + b'"}\n', digest


def line_hash(line: bytes) -> tuple[str, str] | None:
    """(the hash the line states, the hash of its bytes) for a chained line (no newline), else None."""
    found = _HASH_TAIL.search(line[-HASH_SUFFIX_LENGTH:])
    if found is None:
        return None
    return found.group(1).decode("ascii"), hashlib.sha256(line[:-HASH_SUFFIX_LENGTH] + b"}").hexdigest()


_NO_RECORD = object()  # a file with no complete line


def _last_hash_in(fd: int, size: int) -> Any:
    """The record_hash of the last record in the file (None: that record is unchained); _NO_RECORD when none.

    Lines that are not records (writes cut short, each completed into a line by the newline the next write puts
    before its record) are skipped, however many follow the last record. A last line without its newline is a
    record when it is one whole, self-consistent chained record (a write cut short just before its newline): the
    next write chains to it and adds the newline. docs/audit.md, "Writes cut short".
    """
    end = size
    if end and os.pread(fd, 1, end - 1) != b"\n":  # no newline at the end: a whole record, or a torn one
        start = _last_newline_before(fd, end)
        tail_start = max(start, end - HASH_SUFFIX_LENGTH)
        if _HASH_TAIL.search(os.pread(fd, end - tail_start, tail_start)):  # ends like a record: read it whole
            last = _read(fd, start, end)
            hashes = line_hash(last)
            if hashes is not None and hashes[0] == hashes[1] and _parses(last):
                return hashes[0]
        end = start
    while end:
        start = _last_newline_before(fd, end - 1)
        tail_start = max(start, end - 1 - HASH_SUFFIX_LENGTH)
        found = _HASH_TAIL.search(os.pread(fd, end - 1 - tail_start, tail_start))
        if found:
            return found.group(1).decode("ascii")
        # A record written before the chain (schema version 1 or 2)? Read only a line that ends like one.
        if end - 1 > start and os.pread(fd, 1, end - 2) == b"}" and _parses(_read(fd, start, end - 1)):
            return None
        end = start  # not a record: a write cut short
    return _NO_RECORD


def _read(fd: int, start: int, end: int) -> bytes:
    parts = []
    while start < end:
        chunk = os.pread(fd, end - start, start)
        if not chunk:
            break
        parts.append(chunk)
        start += len(chunk)
    return b"".join(parts)


def _parses(line: bytes) -> bool:
    if not line.endswith(b"}"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _last_newline_before(fd: int, end: int, chunk: int = 65536) -> int:
    """The offset just after the last newline before `end` (0 when there is none)."""
    while end > 0:
        start = max(0, end - chunk)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _last_sealed_hash(active: Path) -> str | None:
    """The anchor of a new active file: the hash of the newest sealed segment's last record."""
    for _, segment in reversed(sealed_segments(active)):
        try:
            fd = os.open(segment, os.O_RDONLY)
        except FileNotFoundError:  # removed by log-cleanup meanwhile
            continue
        try:
            found = _last_hash_in(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        if found is not _NO_RECORD:
            return found
    return None


class Sink:
    """The JSONL sink: whole chained lines appended to a file, and the completion records it could not take yet.

    Offers the sink interface of hookspecs.md (`open_audit_sink`): write, keep, flush, pending, close, where,
    reader.

    Threads of one process serialize on `lock`; processes on an exclusive `flock` of the active file, held while
    learning the last record's hash, appending and rotating. The last hash is cached with the file's identity and
    size, so the tail is only read again when another process wrote (or rotated) since.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[bytes] = []
        self.lock = threading.Lock()
        self._tail: tuple[int, int, int, str | None] | None = None  # (st_dev, st_ino, size, last hash)
        self._fd: int | None = None
        self._fd_owner = 0  # the process that opened it
        self._fd_identity = (0, 0)  # its (st_dev, st_ino)

    @property
    def where(self) -> str:
        return str(self.path)

    def reader(self) -> Any:
        """The log as `mxcp log`, `log verify` and `log-cleanup` read it."""
        from .audit_log import FileLog

        return FileLog(self.path)

    def write(self, body: bytes, *, fsync: bool, max_segment_bytes: int = 0) -> None:
        """Append `body` after any pending records; raises OSError (it is not written) when the file can't."""
        with self.lock, self._locked_file() as fd:
            self._write_pending(fd, fsync)
            self._append(fd, body, fsync)
            self._rotate_if_full(max_segment_bytes, fsync)

    def keep(self, body: bytes) -> None:
        with self.lock:
            self.pending.append(body)
            if len(self.pending) > MAX_PENDING:
                del self.pending[0]
                log.critical("audit log %s: over %d unwritten records, the oldest is lost", self.path, MAX_PENDING)

    def flush(self, *, fsync: bool) -> None:
        with self.lock:
            if not self.pending:
                return
            with self._locked_file() as fd:
                self._write_pending(fd, fsync)

    def _write_pending(self, fd: int, fsync: bool) -> None:
        while self.pending:
            self._append(fd, self.pending[0], fsync)
            self.pending.pop(0)  # only once written: a failure keeps it, in order

    @contextmanager
    def exclusive(self, *, fsync: bool) -> Iterator[Any]:
        """The log locked against every writer; yields `append(body)` (used by log-cleanup)."""
        with self.lock, self._locked_file() as fd:
            yield lambda body: self._append(fd, body, fsync)

    def close(self) -> None:
        with self.lock:
            self._close()

    @contextmanager
    def _locked_file(self) -> Iterator[int]:
        fd = self._lock_active_file()
        try:
            yield fd
        except BaseException:
            self._close()  # after a failed write, start afresh with whatever is at the path
            raise
        if self._fd == fd:  # still open (rotation closes it)
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_active_file(self) -> int:
        """The file now at `path`, open for appending and exclusively locked; kept open between records."""
        while True:
            if self._fd is None or self._fd_owner != os.getpid():
                # A forked child must not use its parent's descriptor: they would share one lock.
                self._fd = None
                fd = _open_for_append(self.path)
                opened = os.fstat(fd)
                self._fd, self._fd_owner, self._fd_identity = fd, os.getpid(), (opened.st_dev, opened.st_ino)
            fd = self._fd
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            except BaseException:
                self._close()
                raise
            if current is not None and (current.st_dev, current.st_ino) == self._fd_identity:
                return fd
            # Sealed by another writer while we waited, removed, or replaced: open what is at the path now.
            self._close()

    def _close(self) -> None:
        # The cached tail names the file by its inode, which is only ours while we hold it open.
        fd, self._fd, self._tail = self._fd, None, None
        if fd is not None and self._fd_owner == os.getpid():
            os.close(fd)  # releases the flock

    def _append(self, fd: int, body: bytes, fsync: bool) -> None:
        """One record, appended with unbuffered writes: once this returns, a killed process cannot lose it."""
        stat = os.fstat(fd)
        size = stat.st_size
        cached = self._tail
        if cached is not None and cached[:3] == (stat.st_dev, stat.st_ino, size):
            prev, torn = cached[3], False  # our own last line, whole
        elif cached is not None and cached[:2] == (stat.st_dev, stat.st_ino) and size < cached[2]:
            # Shorter than we left it: records were removed from its end. Chain to what we last wrote, so verify
            # reports the gap, rather than to the shortened tail, which would hide it.
            log.error("audit log %s is shorter than this process left it (%d bytes, was %d): records were removed "
                      "from its end; the next record follows the last one this process wrote", self.path, size,
                      cached[2])
            prev, torn = cached[3], bool(size) and os.pread(fd, 1, size - 1) != b"\n"
        else:
            found = _last_hash_in(fd, size)
            prev = _last_sealed_hash(self.path) if found is _NO_RECORD else found
            torn = bool(size) and os.pread(fd, 1, size - 1) != b"\n"
        line, digest = chain_line(body, prev)
        # A write cut short (disk full) leaves a torn last line: start on a fresh line so only that one is lost.
        if torn:
            line = b"\n" + line
        self._tail = None  # until the whole line is written
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
        self._tail = (stat.st_dev, stat.st_ino, size + len(line), digest)

    def _rotate_if_full(self, max_segment_bytes: int, fsync: bool) -> None:
        if not max_segment_bytes or self._tail is None or self._tail[2] < max_segment_bytes:
            return
        numbers = [number for number, _ in sealed_segments(self.path)]
        target = sealed_name(self.path, (max(numbers) if numbers else 0) + 1)
        if target.exists():  # never overwrite a segment (a writer not taking the lock?): leave the file growing
            log.error("audit log %s not rotated: %s exists", self.path, target)
            return
        try:
            # Under the lock: a writer waiting for it on this file sees the rename and opens the new active file.
            os.rename(self.path, target)
            self._close()
            if fsync:
                _fsync_folder(self.path.parent)
        except OSError as exc:  # the record is written: a failed rotation only lets the file grow
            log.error("audit log %s not rotated to %s: %s", self.path, target, reason(exc))


def _open_for_append(path: Path) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:  # the folder is missing (first record, or removed since): made here, not per record
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o666)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_sinks: dict[Path, Sink] = {}
_sinks_lock = threading.Lock()
# The sinks each runtime (by id) has used, so its shutdown flushes and closes those, and only those: sinks are
# shared per process (a reload reuses them), and another runtime's (a test's, `mxcp run` beside a server) are not
# this one's to close.
_used: dict[int, dict[int, Any]] = {}
_used_lock = threading.Lock()
_STATE_KEY = "audit.sink"


def sink_for(path: Path) -> Sink:
    with _sinks_lock:
        return _sinks.setdefault(path, Sink(path))


@hookimpl
def open_audit_sink(settings: AuditSettings, project: Any) -> Sink | None:
    if settings.sink != "jsonl":
        return None
    if settings.secret or settings.table != DEFAULT_TABLE:
        # A database sink's settings with the file sink: the records would not be where the user looks.
        key = "secret" if settings.secret else "table"
        raise ConfigError(f"{key} is a database sink's setting; with sink: jsonl the records go to "
                          f"{configured_path(project, settings)}", file=project.site_file,
                          key_path=f"profiles.{project.profile}.audit.{key}")
    return sink_for(configured_path(project, settings))


class NoSink(Exception):
    """The profile's audit.sink cannot be opened: calls are refused whatever on_failure says."""


def open_sink(hooks: Any, project: Any, settings: AuditSettings) -> Any:
    """The sink `settings.sink` names, asked of the plugins (open_audit_sink); NoSink naming the key when none.

    Fails closed: a sink that no loaded plugin opens (not installed, disabled, misspelled) is never replaced by
    another one, nor by no audit at all.
    """
    key = f"profiles.{project.profile}.audit.sink"
    try:
        sink = hooks.open_audit_sink(settings=settings, project=project)
    except Exception as exc:  # noqa: BLE001 - a sink that cannot be opened (its secret missing, ...) stops calls
        raise NoSink(f"the audit sink '{settings.sink}' ({key}) cannot be opened: {reason(exc)}") from None
    if sink is None:
        hint = " (pip install 'mxcp-pluggy[postgres]')" if settings.sink == "postgres" else ""
        raise NoSink(f"no loaded plugin provides the audit sink '{settings.sink}' named by {key} in "
                     f"{project.site_file.name}{hint}; is its plugin installed and enabled?")
    return sink


@hookimpl
def on_init(runtime: Any) -> None:
    """Open the sink when the runtime starts: one that cannot be opened (an unknown `sink`, its plugin disabled, its
    secret missing) stops `serve` and `run` here, naming the key, instead of a server that passes its health checks
    while refusing every call."""
    project = runtime.context
    settings = project.plugin_config("audit", scope="site_profile")
    if not audit_enabled(settings):
        return
    try:
        _sink_of(runtime, project, settings)
    except NoSink as exc:
        raise MxcpError(str(exc)) from None


def _sink_of(runtime: Any, project: Any, settings: AuditSettings) -> Any:
    # Asked once per project context (a reload makes a new one) and settings: a dict lookup per call after that.
    cached = project.state.get(_STATE_KEY)
    if cached is not None and (cached[0] is settings or cached[0] == settings):
        return cached[1]
    sink = open_sink(runtime.hooks, project, settings)
    project.state[_STATE_KEY] = (settings, sink)
    with _used_lock:
        _used.setdefault(id(runtime), {})[id(sink)] = sink
    return sink


@hookimpl(wrapper=True, tryfirst=True)  # outermost: denials by other wrappers are recorded too
def call_endpoint(call: Any) -> Any:
    project = call.runtime.context
    settings = project.plugin_config("audit", scope="site_profile")
    if not audit_enabled(settings):
        return (yield)
    try:
        sink = _sink_of(call.runtime, project, settings)
    except NoSink as exc:
        log.error("%s: %s '%s' refused", exc, call.endpoint.kind, call.endpoint.key)
        raise ExecutionError(f"call refused: {exc}; nothing was run") from None
    call_id = uuid.uuid4().hex
    inputs = _input_data(call)  # the same in both records: made once
    try:
        sink.write(_body(call, call_id, inputs, STARTED, None, None, None), fsync=settings.fsync,
                   max_segment_bytes=settings.max_segment_bytes)
    except Exception as exc:  # noqa: BLE001 - whatever stops the record, the call must not run unrecorded
        why = reason(exc)
        if settings.on_failure == "refuse":
            log.error("audit log %s cannot be written (%s): %s '%s' refused", sink.where, why,
                      call.endpoint.kind, call.endpoint.key)
            raise ExecutionError(
                f"call refused: the audit log {sink.where} cannot be written ({why}); nothing was run"
            ) from None
        log.error("audit log %s cannot be written (%s): %s '%s' runs unaudited (on_failure: log)", sink.where, why,
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


def _complete(sink: Any, settings: AuditSettings, call: Any, call_id: str, inputs: Any, status: str,
              error: str | None, result: Any, duration_ms: float) -> None:
    """Write the completion record. The call has run: its outcome stands whatever happens here."""
    body = _body(call, call_id, inputs, status, error, result, duration_ms)
    try:
        sink.write(body, fsync=settings.fsync, max_segment_bytes=settings.max_segment_bytes)
    except Exception as exc:  # noqa: BLE001 - reporting failure now would make the client retry work that is done
        sink.keep(body)
        then = ("further calls are refused until it can be written again" if settings.on_failure == "refuse"
                else "further calls run unaudited (on_failure: log)")
        log.critical(
            "AUDIT RECORD NOT WRITTEN: %s '%s' (call_id %s) finished with status %s, but the audit log %s cannot "
            "be written (%s). The record is kept in memory and written first once the sink works; %s.",
            call.endpoint.kind, call.endpoint.key, call_id, status, sink.where, reason(exc), then,
        )


@hookimpl
def register_commands(cli: Any) -> None:
    from .audit_log import register

    register(cli)


@hookimpl
def on_shutdown(runtime: Any) -> None:
    """Records still pending get a last chance; if the sink still fails, say loudly what is lost. A reload keeps the
    sinks open (the runtime starts again at once); its pending records wait for the next write."""
    if runtime.reloading:
        return
    with _used_lock:
        used = _used.pop(id(runtime), {})
    for sink in used.values():
        if sink.pending:
            try:
                sink.flush(fsync=True)
            except Exception as exc:  # noqa: BLE001 - say what is lost, then close the others too
                log.critical("audit log %s: %d completion records lost at shutdown (%s)", sink.where,
                             len(sink.pending), reason(exc))
        try:
            sink.close()
        except Exception as exc:  # noqa: BLE001
            log.error("audit log %s: closing failed: %s", sink.where, reason(exc))


def reason(exc: BaseException) -> str:
    # strerror alone: the path is named separately, and the client's copy of the message drops paths.
    # A multi-line message (a database driver's, with hints) is shortened to its first line.
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _input_data(call: Any) -> Any:
    # Sensitive fields are already "[REDACTED]" by type; mask also catches secret values and sensitive
    # arguments elsewhere in the data (a tool returning a secret, or echoing a password in a plain field).
    compiled = call.compiled
    return mask(to_jsonable(compiled.parameters.redact(call.arguments) if compiled else {}), call)


def _body(call: Any, call_id: str, inputs: Any, status: str, error: str | None, result: Any,
          duration_ms: float | None) -> bytes:
    """The record without its hash fields, which are added when it is appended (the chain follows file order)."""
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
    return record_body(record)


def record_body(record: dict[str, Any]) -> bytes:
    # backslashreplace: a lone surrogate (an argument that is not valid Unicode) becomes the JSON escape `\udcxx`
    # in the line, so a bad argument is recorded as it came rather than making the log unwritable.
    return json.dumps(record, ensure_ascii=False, default=str).encode("utf-8", errors="backslashreplace")
