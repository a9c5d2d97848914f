"""Builtin plugin: the PostgreSQL audit sink (`profiles.<name>.audit: {sink: postgres, secret: <name>}`).

Replicas of a server (and any other process auditing the profile) append to one table. Each row's `line` is
exactly the line the JSONL sink would write: the same record body, chained by `prev_hash`/`record_hash` in `seq`
order (audit.chain_line's definition, computed by the server), so `mxcp log verify` checks it the same way.
Appends are serialised by a transaction-level advisory lock; the lock, the read of the last hash and the insert
go to the server in one round trip (a pipeline). docs/audit.md, "PostgreSQL sink".

psycopg is imported only when a profile's audit sink is postgres (the `postgres` extra).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from mxcp_core import ConfigError, MxcpError, hookimpl

from . import audit
from .postgres_connect import connection_parameters, require_psycopg

log = logging.getLogger(__name__)

SINK = "postgres"
MAX_IDLE = 8  # connections kept between records: a writer thread takes one, or opens one when none is idle
READ_BATCH = 2000  # rows fetched at a time by readers (a server-side cursor): the table is never all in memory

_sinks: dict[tuple[Any, ...], PostgresSink] = {}
_sinks_lock = threading.Lock()


@hookimpl
def open_audit_sink(settings: Any, project: Any) -> PostgresSink | None:
    if settings.sink != SINK:
        return None
    key_path = f"profiles.{project.profile}.audit"
    if settings.path:  # the file's setting: taken for the table, records would not be where the user looks
        raise ConfigError(f"path is the jsonl sink's setting; with sink: {SINK} the records go to the table "
                          f"'{settings.table}'", file=project.site_file, key_path=f"{key_path}.path")
    require_psycopg(f"the PostgreSQL audit sink ({key_path}.sink: {SINK})")
    keywords = connection_parameters(project, settings.secret, key_path=f"{key_path}.secret")
    # One sink per server and table for the process, kept across reloads (its pending records and connections).
    key = (tuple(sorted((name, str(value)) for name, value in keywords.items())), settings.table)
    with _sinks_lock:
        found = _sinks.get(key)
        if found is None:
            found = _sinks[key] = PostgresSink(keywords, settings.table)
        return found


def _identifier(table: str) -> Any:
    from psycopg import sql

    return sql.Identifier(*table.split("."))


def _quoted(table: str) -> str:
    # For to_regclass, which folds unquoted names to lower case. The setting's pattern allows no quotes in a part.
    return ".".join(f'"{part}"' for part in table.split("."))


def lock_key(table: str) -> int:
    """The advisory lock taken while `table` does not exist yet (to create it): a signed 64-bit number from its
    name. Appends lock the table itself (LOCK_CLASS + its oid): one lock however the setting spells it."""
    digest = hashlib.sha256(f"mxcp.audit:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# The high 32 bits of the appends' lock key; the table's oid (32 bits) is the low part.
LOCK_CLASS = (int.from_bytes(hashlib.sha256(b"mxcp.audit").digest()[:4], "big") & 0x7FFFFFFF) << 32


_CREATE = """
CREATE TABLE IF NOT EXISTS {table} (
    seq bigserial PRIMARY KEY,
    line text NOT NULL,
    record_hash text,
    prev_hash text,
    record_id text,
    call_id text,
    "timestamp" timestamptz,
    operation_type text,
    operation_name text,
    operation_status text,
    user_id text
)"""

# Run after the advisory lock is held, as a statement of its own: in READ COMMITTED each statement sees the rows
# committed before it starts, so it sees the last append of the writer that held the lock before. (A single
# statement taking the lock would read with a snapshot from before it waited, and miss that append.)
# ({{ }} are the format's braces: `{table}` is filled in.) The hash is audit.chain_line's: SHA-256 of the body with `, "prev_hash": ...` as its last member, in UTF-8.
# `mine_seq`/`mine_hash`: the last record this process wrote. When the table now ends before it (rows removed
# from its end), the record chains to it rather than to the shortened tail, so verify reports the gap.
_APPEND = """
WITH last AS (
    SELECT l.seq, l.record_hash FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT seq, record_hash FROM {table} ORDER BY seq DESC LIMIT 1) AS l ON true
), chosen AS (
    SELECT CASE WHEN %(mine_seq)s::bigint > coalesce(last.seq, 0) THEN %(mine_hash)s::text
                ELSE last.record_hash END AS prev,
           coalesce(%(mine_seq)s::bigint > coalesce(last.seq, 0), false) AS shortened
    FROM last
), hashed AS (
    SELECT left(%(body)s::text, -1) || ', "prev_hash": ' || coalesce('"' || prev || '"', 'null') || '}}' AS text,
           prev, shortened
    FROM chosen
), digested AS (
    SELECT text, prev, shortened, encode(sha256(convert_to(text, 'UTF8')), 'hex') AS digest FROM hashed
), inserted AS (
    INSERT INTO {table} (line, record_hash, prev_hash, record_id, call_id, "timestamp", operation_type,
                         operation_name, operation_status, user_id)
    SELECT left(text, -1) || ', "record_hash": "' || digest || '"}}', digest, prev, %(record_id)s, %(call_id)s,
           %(timestamp)s, %(operation_type)s, %(operation_name)s, %(operation_status)s, %(user_id)s
    FROM digested
    RETURNING seq, record_hash
)
SELECT inserted.seq, inserted.record_hash, digested.shortened FROM inserted, digested
"""


def _text(value: Any) -> str | None:
    # PostgreSQL text cannot hold NUL: a column gets it as its JSON escape (the line has it escaped already).
    # Raw, it failed the record, and a kept completion with it every record after it.
    text = None if value is None else value if isinstance(value, str) else json.dumps(value)
    return text.replace("\x00", "\\u0000") if text is not None and "\x00" in text else text


def _columns(body: bytes) -> dict[str, Any]:
    """The body as the statement's parameters: the text itself, and the fields kept in columns for queries."""
    text = body.decode("utf-8")  # record_body wrote valid UTF-8 (a lone surrogate became the text `\\udcxx`)
    record = json.loads(text)
    try:
        moment: datetime | None = datetime.fromisoformat(record.get("timestamp"))
    except (TypeError, ValueError):
        moment = None
    return {"body": text, "record_id": _text(record.get("record_id")), "call_id": _text(record.get("call_id")),
            "timestamp": moment, "operation_type": _text(record.get("operation_type")),
            "operation_name": _text(record.get("operation_name")),
            "operation_status": _text(record.get("operation_status")), "user_id": _text(record.get("user_id"))}


class PostgresSink:
    """Appends to one table from any number of threads (a connection each, kept between records) and processes.

    Offers the sink interface of hookspecs.md (`open_audit_sink`): write, keep, flush, pending, close, where,
    reader.
    """

    def __init__(self, keywords: dict[str, Any], table: str) -> None:
        # The server must hash the same bytes Python does: UTF-8 both ways.
        self.keywords = {**keywords, "client_encoding": "UTF8"}
        self.table = table
        self.where = (f"table {table} on PostgreSQL {keywords.get('host', '')}:{keywords.get('port', 5432)}"
                      f"/{keywords.get('dbname', '')}")
        self.pending: list[bytes] = []
        self.lock = threading.Lock()  # guards pending, the idle connections and what this process wrote last
        self._lock_params = {"key": lock_key(table), "lock_class": LOCK_CLASS, "name": _quoted(table)}
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._forked: list[Any] = []  # a parent's connections, never used nor closed by a forked child
        self._ready = False  # the table is known to exist, in a UTF-8 database
        self._mine: tuple[int, str] | None = None  # (seq, record_hash) of the newest record this process wrote
        self._sql: dict[str, Any] = {}

    # -- the sink interface -------------------------------------------------------------------------------
    def write(self, body: bytes, *, fsync: bool = False, max_segment_bytes: int = 0) -> None:
        """Append the pending records, then `body`, in one transaction; raises (nothing written) when it can't.

        fsync and max_segment_bytes are the file's concerns: durability is the server's (synchronous_commit).
        """
        self._drain([body])

    def keep(self, body: bytes) -> None:
        with self.lock:
            self.pending.append(body)
            if len(self.pending) > audit.MAX_PENDING:
                del self.pending[0]
                log.critical("audit log %s: over %d unwritten records, the oldest is lost", self.where,
                             audit.MAX_PENDING)

    def flush(self, *, fsync: bool = False) -> None:
        self._drain([])

    def _drain(self, extra: list[bytes]) -> None:
        """Append the pending records, then `extra`, in one transaction; on failure the pending ones are kept."""
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch and not extra:
            return
        try:
            self._append([*batch, *extra])
        except BaseException:
            self._restore(batch)
            raise

    def close(self) -> None:
        with self.lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)

    def reader(self) -> PostgresLog:
        return PostgresLog(self)

    # -- appending -----------------------------------------------------------------------------------------
    def _restore(self, batch: list[bytes]) -> None:
        # Back in front, in order: they are written first next time (records kept meanwhile follow them).
        with self.lock:
            self.pending[:0] = batch

    def _append(self, bodies: list[bytes]) -> None:
        params = [_columns(body) for body in bodies]
        conn = self._take()
        healthy = False
        try:
            with self.lock:
                mine = self._mine
            shortened, last = self.append_rows(conn, params, mine, commit=True)
            healthy = True
        finally:
            self._give(conn, healthy)
        with self.lock:
            # After a shortened table, its new rows are what this process follows (seq may restart lower, when
            # the table was dropped and created again).
            if self._mine is None or last[0] > self._mine[0] or shortened:
                self._mine = last
        if shortened:
            log.error("audit log %s ends before the last record this process wrote (seq %d): rows were removed "
                      "from its end; the next record follows the last one this process wrote", self.where,
                      mine[0] if mine else 0)

    def append_rows(self, conn: Any, params: list[dict[str, Any]], mine: tuple[int, str] | None, *,
                    commit: bool) -> tuple[bool, tuple[int, str]]:
        """Lock and insert each record, chained, in the connection's transaction (committed if `commit`).

        One round trip: the statements (and the commit, which releases the lock) are pipelined, and the server
        runs them in order; the lock is held only while the server works, not while an answer travels.
        """
        statement = self._statement("append")
        shortened = False
        with conn.pipeline():
            conn.execute(self._statement("lock"), self._lock_params)
            cursors = []
            for index, values in enumerate(params):
                # Only the first record may find the table shortened: the others follow it.
                values = {**values, "mine_seq": mine[0] if mine and not index else None,
                          "mine_hash": mine[1] if mine and not index else None}
                cursors.append(conn.execute(statement, values, prepare=True))
            if commit:  # as a statement: conn.commit() would wait for a round trip of its own
                conn.execute("COMMIT")
        last = (0, "")
        for cursor in cursors:
            seq, digest, cut = cursor.fetchone()
            shortened = shortened or bool(cut)
            last = (seq, digest)
        return shortened, last

    def _statement(self, name: str) -> Any:
        if not self._sql:
            from psycopg import sql

            table = _identifier(self.table)
            self._sql = {
                # By the table's oid when it exists: `mxcp_audit` and `public.mxcp_audit` (or another role's
                # search_path finding the same table) must serialise on one lock, or their appends fork the chain.
                "lock": sql.SQL("SELECT pg_advisory_xact_lock(coalesce(%(lock_class)s::bigint | "
                                "to_regclass(%(name)s::text)::oid::bigint, %(key)s::bigint))"),
                "append": sql.SQL(_APPEND).format(table=table),
                "create": sql.SQL(_CREATE).format(table=table),
            }
        return self._sql[name]

    def _take(self) -> Any:
        while True:
            with self.lock:
                if os.getpid() != self._pid:
                    # A forked child must not use (or close: that would end the parent's session) its parent's.
                    self._forked.extend(self._idle)
                    self._idle, self._pid = [], os.getpid()
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if _alive(conn):
                return conn
            # Ended by the server while idle (restart, pg_terminate_backend, idle_session_timeout): using it
            # would fail the record, and refuse the call. Look again at the table too (it may be a new database).
            self._ready = False
            _close_quietly(conn)

    def _give(self, conn: Any, healthy: bool) -> None:
        from psycopg import pq

        if healthy and not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with self.lock:
                if os.getpid() == self._pid and len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    return
        if not healthy:
            # A failure may be the table dropped meanwhile: look again (and create it) on the next connection.
            self._ready = False
        _close_quietly(conn)

    def connect(self, *, create: bool = True) -> Any:
        """A new connection (not autocommit); the first also checks the database and creates the table."""
        psycopg = require_psycopg("the PostgreSQL audit sink")
        conn = psycopg.connect(**self.keywords, autocommit=False)
        # Whatever the database's or role's default: an append must read the last row with a snapshot taken after
        # the lock is granted (REPEATABLE READ takes it at the lock's statement, and writers would fork the chain).
        conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        if self._ready or not create:
            return conn
        try:
            encoding = conn.execute("SHOW server_encoding").fetchone()[0]
            if encoding.upper() not in ("UTF8", "UTF-8"):
                raise MxcpError(f"the database's encoding is {encoding}: the audit sink needs a UTF8 database "
                                "(the record hashes are taken over UTF-8 text)")
            if conn.execute("SELECT to_regclass(%s)", [_quoted(self.table)]).fetchone()[0] is None:
                # Under the writers' lock: two processes creating it at once would otherwise collide.
                conn.execute(self._statement("lock"), self._lock_params)
                conn.execute(self._statement("create"))
            conn.commit()
        except BaseException:
            _close_quietly(conn)
            raise
        self._ready = True
        return conn


def _alive(conn: Any) -> bool:
    """False when an idle connection's session has ended: the server said goodbye (an error, then end of file),
    so its socket is readable. No round trip; a silent network cut still shows only when the record is sent."""
    if conn.closed:
        return False
    try:
        poller = select.poll()  # not select.select: a busy server's descriptors may exceed FD_SETSIZE
        poller.register(conn.fileno(), select.POLLIN)
        return not poller.poll(0)
    except Exception:  # noqa: BLE001 - a connection that cannot be asked is not kept
        return False


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a broken connection is being dropped anyway
        pass


# -- reading: mxcp log, log verify, log-cleanup -------------------------------------------------------------------


class PostgresLog:
    """The table as the log commands read it: one segment named after the table, its rows numbered by `seq`."""

    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink
        self.name = sink.table
        self.where = sink.where
        self.folder = sink.where

    def _connect(self) -> Any:
        try:
            return self.sink.connect(create=False)
        except MxcpError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg's errors, said in one line
            raise MxcpError(f"cannot read the audit log {self.where}: {audit.reason(exc)}") from None

    def _exists(self, conn: Any) -> bool:
        import psycopg

        try:
            return conn.execute("SELECT to_regclass(%s)", [_quoted(self.sink.table)]).fetchone()[0] is not None
        except psycopg.Error as exc:
            raise MxcpError(f"cannot read the audit log {self.where}: {audit.reason(exc)}") from None

    def segments(self) -> list[Any]:
        from .audit_log import Segment

        conn = self._connect()
        try:
            found = self._exists(conn)
        finally:
            _close_quietly(conn)
        return [Segment(None, None, label=self.name, unit="seq")] if found else []

    def missing(self) -> str | None:
        return None if self.segments() else f"{self.where} does not exist"

    def iter_lines(self, segment: Any) -> Iterator[Any]:
        return self._lines(segment, "ASC")

    def newest_first(self) -> Iterator[Any]:
        from .audit_log import Segment

        # _lines finds nothing when the table is missing: no separate look (a connection) first.
        yield from self._lines(Segment(None, None, label=self.name, unit="seq"), "DESC")

    def _lines(self, segment: Any, order: str) -> Iterator[Any]:
        import psycopg
        from psycopg import sql

        from .audit_log import Line

        conn = self._connect()
        try:
            with conn.transaction():
                if not self._exists(conn):
                    return
                cursor = conn.cursor(name="mxcp_audit_read")  # server-side: rows come in batches
                cursor.itersize = READ_BATCH
                cursor.execute(sql.SQL("SELECT seq, line FROM {table} ORDER BY seq " + order).format(
                    table=_identifier(self.sink.table)))
                for seq, line in cursor:
                    yield Line(segment, seq, line.encode("utf-8"), True)
        except psycopg.Error as exc:
            raise MxcpError(f"cannot read the audit log {self.where}: {audit.reason(exc)}") from None
        finally:
            _close_quietly(conn)

    # -- retention ---------------------------------------------------------------------------------------
    def expired(self, retention_days: int, now: datetime) -> list[Any]:
        conn = self._connect()
        try:
            with conn.transaction():
                return self._expired(conn, retention_days, now)[0] if self._exists(conn) else []
        finally:
            _close_quietly(conn)

    def _expired(self, conn: Any, retention_days: int, now: datetime) -> tuple[list[Any], int]:
        """The run of the oldest rows (in seq order) older than the retention, up to the first that is not, as
        one Expired (none when the run is empty); and the seq of the run's last row.

        Only a run of the oldest goes, so the table stays one chain; a row with no timestamp stops the run.
        """
        from psycopg import sql

        from .audit_log import Expired

        table = _identifier(self.sink.table)
        cutoff = now - timedelta(days=retention_days)
        found = conn.execute(sql.SQL(
            'WITH boundary AS (SELECT min(seq) AS seq FROM {table} WHERE "timestamp" IS NULL OR "timestamp" >= %s) '
            'SELECT count(*), min(t.seq), max(t.seq), min(t."timestamp"), max(t."timestamp"), '
            "coalesce(sum(octet_length(t.line)), 0) FROM {table} AS t, boundary "
            "WHERE boundary.seq IS NULL OR t.seq < boundary.seq").format(table=table), [cutoff]).fetchone()
        count, first_seq, last_seq, oldest, newest, size = found
        if not count:
            return [], 0
        line = conn.execute(sql.SQL("SELECT line, record_hash FROM {table} WHERE seq = %s").format(table=table),
                            [last_seq]).fetchone()
        stated = audit.line_hash(line[0].encode("utf-8"))
        return [Expired(None, count, _iso(oldest), _iso(newest), stated[0] if stated else line[1], int(size),
                        label=f"{self.sink.table} seq {first_seq}-{last_seq}")], last_seq

    def cleanup(self, settings: Any, now: datetime) -> list[Any]:
        """Delete the expired rows and append a record naming them, in one transaction under the writers' lock:
        either both happen or neither (so, unlike files, no record ever names rows that are still there)."""
        import psycopg
        from psycopg import sql

        from .audit_log import cleanup_record

        conn = self._connect()
        try:
            if not self._exists(conn) or not self._expired(conn, settings.retention_days, now)[0]:
                return []
            conn.rollback()
            # Again under the writers' lock, held to the commit: no record is appended in between.
            conn.execute(self.sink._statement("lock"), self.sink._lock_params)
            expired, last_seq = self._expired(conn, settings.retention_days, now)
            if not expired:
                return []
            body = audit.record_body(cleanup_record(expired, settings.retention_days))
            self.sink.append_rows(conn, [_columns(body)], None, commit=False)
            conn.execute(sql.SQL("DELETE FROM {table} WHERE seq <= %s").format(
                table=_identifier(self.sink.table)), [last_seq])
            conn.commit()
            return expired
        except psycopg.Error as exc:
            raise MxcpError(f"cannot remove audit records from {self.where}: {audit.reason(exc)}; nothing was "
                            "removed and nothing recorded") from None
        finally:
            _close_quietly(conn)  # without a commit: rolled back


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()
