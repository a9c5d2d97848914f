"""The audit log's hash chain, segments and retention, on real files: concurrent writers (processes and threads)
keep one chain, `verify` names the first changed, removed or inserted record, rotation anchors each segment to the
last, and log-cleanup leaves a record that lets verify tell its removals from anyone else's.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mxcp_plugins import audit, audit_log

NOW = datetime.now(timezone.utc)


def body(**fields: Any) -> bytes:
    record = {
        "schema_name": "mxcp.audit", "schema_version": 3, "record_id": uuid.uuid4().hex, "call_id": uuid.uuid4().hex,
        "timestamp": NOW.isoformat(), "operation_type": "tool", "operation_name": "hello",
        "operation_status": "success", "duration_ms": 1.5, "caller_type": "cli", "user_id": None,
        "session_id": None, "trace_id": None, "input_data": {"name": "ann"}, "output_data": "hi ann", "error": None,
        "policies_evaluated": [], "policy_decision": None, "policy_reason": None,
    }
    record.update(fields)
    return audit.record_body(record)


def write(path: Path, count: int, *, sink: audit.Sink | None = None, max_bytes: int = 0, **fields: Any) -> None:
    sink = sink or audit.Sink(path)
    for _ in range(count):
        sink.write(body(**fields), fsync=False, max_segment_bytes=max_bytes)


def raw_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw_lines(path)]


def failure(path: Path) -> audit_log.Finding:
    result = audit_log.verify(path)
    assert not result.ok and result.failure is not None, result
    return result.failure


def test_each_line_carries_a_hash_anyone_can_recompute_and_the_hash_of_the_line_before(tmp_path: Path) -> None:
    log = tmp_path / "audit" / "logs-default.jsonl"
    write(log, 3)
    previous = None
    for line in raw_lines(log):
        record = json.loads(line)
        # The documented definition, done independently: drop the last member, hash the bytes as written.
        text = line.decode("utf-8")
        member = f', "record_hash": "{record["record_hash"]}"}}'
        assert text.endswith(member)
        assert hashlib.sha256((text[: -len(member)] + "}").encode("utf-8")).hexdigest() == record["record_hash"]
        assert record["prev_hash"] == previous and record["schema_version"] == 3
        previous = record["record_hash"]
    result = audit_log.verify(log)
    assert result.ok and result.chained == 3 and result.head_hash == previous and result.warnings == []
    assert result.verified_from == {"segment": log.name, "line": 1, "record_id": records(log)[0]["record_id"],
                                    "anchor": "start of the log"}


WRITER = textwrap.dedent("""\
    import sys, threading
    from pathlib import Path
    from mxcp_plugins import audit
    path, name, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sink = audit.sink_for(path)

    def work(thread):
        for index in range(count):
            record = {"schema_name": "mxcp.audit", "schema_version": 3, "record_id": f"{name}-{thread}-{index}", "operation_status": "success",
                      "timestamp": "2026-01-01T00:00:00+00:00", "padding": "x" * 150}
            sink.write(audit.record_body(record), fsync=False, max_segment_bytes=16384)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    """)


def test_two_processes_and_their_threads_append_one_unbroken_chain_across_rotations(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), name, "300"]) for name in ("a", "b")]
    try:
        sink = audit.Sink(log)  # and this process's threads, through a sink of its own
        threads = [threading.Thread(target=write, args=(log, 150), kwargs={"sink": sink, "max_bytes": 16384})
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for process in writers:
            assert process.wait(timeout=120) == 0
    result = audit_log.verify(log)
    assert result.ok, result.failure
    assert result.records == result.chained == 2 * 4 * 300 + 3 * 150 and result.warnings == []
    assert len(result.segments) > 10  # rotated many times, by every writer
    ids = [r["record_id"] for s in audit_log.segments(log) for r in records(s.path)]
    assert len(set(ids)) == len(ids)
    assert {f"{n}-{t}-{i}" for n in "ab" for t in range(4) for i in range(300)} <= set(ids)


@pytest.fixture
def chained(tmp_path: Path) -> Path:
    log = tmp_path / "logs-default.jsonl"
    write(log, 6)
    return log


def test_verify_names_a_changed_record(chained: Path) -> None:
    lines = raw_lines(chained)
    changed = json.loads(lines[2])["record_id"]
    lines[2] = lines[2].replace(b'"hi ann"', b'"hi bob"')
    chained.write_bytes(b"\n".join(lines) + b"\n")
    found = failure(chained)
    assert (found.segment, found.line, found.record_id, found.kind) == (chained.name, 3, changed, "changed")
    assert "does not match its record_hash" in found.message


def test_verify_names_the_record_after_a_removed_one(chained: Path) -> None:
    lines = raw_lines(chained)
    after = json.loads(lines[3])["record_id"]
    del lines[2]
    chained.write_bytes(b"\n".join(lines) + b"\n")
    found = failure(chained)
    assert (found.line, found.record_id, found.kind) == (3, after, "removed")
    assert "line 2" in found.message


def test_verify_names_an_inserted_record_even_one_with_a_valid_hash(chained: Path) -> None:
    lines = raw_lines(chained)
    # A careful forger: a well-formed record chained to the one before it, slipped in between two records.
    forged, _ = audit.chain_line(body(operation_name="forged"), json.loads(lines[1])["record_hash"])
    lines.insert(2, forged.rstrip(b"\n"))
    chained.write_bytes(b"\n".join(lines) + b"\n")
    found = failure(chained)
    assert (found.line, found.kind) == (3, "inserted") and found.record_id == json.loads(forged)["record_id"]

    # A careless one: a copy of an earlier line.
    lines = raw_lines(chained)
    del lines[2]
    lines.insert(4, lines[0])
    chained.write_bytes(b"\n".join(lines) + b"\n")
    found = failure(chained)
    assert (found.line, found.kind) == (5, "inserted")


def test_a_torn_last_line_is_a_warning_and_the_next_writer_continues_the_chain_over_it(chained: Path) -> None:
    data = chained.read_bytes()
    whole = records(chained)
    chained.write_bytes(data[:-40])  # the last write was cut short
    result = audit_log.verify(chained)
    assert result.ok and [(w.kind, w.line) for w in result.warnings] == [("torn", 6)]
    assert result.records == 5 and result.head_hash == whole[4]["record_hash"]

    write(chained, 1)  # a new process: its sink has no cached state
    lines = raw_lines(chained)
    assert len(lines) == 7 and json.loads(lines[6])["prev_hash"] == whole[4]["record_hash"]
    result = audit_log.verify(chained)
    assert result.ok and [(w.kind, w.line) for w in result.warnings] == [("unreadable", 6)]


def test_a_damaged_line_fails_verify_wherever_it_is(chained: Path) -> None:
    lines = raw_lines(chained)
    damaged = [*lines[:3], lines[3][:50], *lines[4:]]  # not JSON any more, and the next record names its hash
    chained.write_bytes(b"\n".join(damaged) + b"\n")
    found = failure(chained)
    assert (found.line, found.kind) == (4, "changed") and "not a readable record" in found.message
    # The last line cut short but ending with a newline: what a torn write becomes once the next write (which
    # puts a newline before its record) is itself cut short. Nothing follows it, so it is a warning.
    chained.write_bytes(b"\n".join([*lines[:5], lines[5][:50]]) + b"\n")
    result = audit_log.verify(chained)
    assert result.ok and [(w.kind, w.line) for w in result.warnings] == [("unreadable", 6)]
    assert "nothing follows" in result.warnings[0].message


def test_rotation_seals_numbered_segments_each_anchored_to_the_last(tmp_path: Path) -> None:
    log = tmp_path / "audit" / "logs-default.jsonl"
    write(log, 20, max_bytes=2000)
    files = audit_log.segments(log)
    assert [s.name for s in files[:3]] == [f"logs-default.00000{n}.jsonl" for n in (1, 2, 3)]
    assert all(s.sealed for s in files[:-1]) and len(files) >= 5
    for earlier, later in zip(files, files[1:]):
        assert records(later.path)[0]["prev_hash"] == records(earlier.path)[-1]["record_hash"]
    result = audit_log.verify(log)
    assert result.ok and result.records == 20 and len(result.segments) == len(files)

    files[1].path.unlink()
    found = failure(log)
    assert (found.segment, found.line, found.kind) == (files[2].name, 1, "removed")
    assert "(segment number 2 missing)" in found.message

    files[0].path.unlink()  # now the oldest is gone too, and no log-cleanup says why
    found = failure(log)
    assert (found.segment, found.line, found.kind) == (files[2].name, 1, "removed")
    assert "removed outside log-cleanup" in found.message


def test_fsync_flushes_records_and_rotations(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    for _ in range(4):
        sink.write(body(), fsync=True, max_segment_bytes=1500)
    assert len(audit_log.segments(log)) >= 2 and audit_log.verify(log).ok


def test_a_writer_holding_the_old_file_notices_another_sealed_it(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    first, second = audit.Sink(log), audit.Sink(log)  # two descriptors, two locks: like two processes
    write(log, 2, sink=first)
    write(log, 3, sink=second, max_bytes=1)  # seals after each record
    write(log, 1, sink=first)  # its descriptor is now the sealed segment 3: it must write to a new active file
    files = audit_log.segments(log)
    assert [len(raw_lines(s.path)) for s in files] == [3, 1, 1, 1] and not files[-1].sealed
    result = audit_log.verify(log)
    assert result.ok and result.records == 6


def test_records_kept_while_the_file_failed_are_chained_in_the_order_written(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    sink.write(body(operation_name="first"), fsync=False)
    sink.keep(body(operation_name="kept"))
    sink.write(body(operation_name="next"), fsync=False)
    assert [r["operation_name"] for r in records(log)] == ["first", "kept", "next"]
    assert audit_log.verify(log).ok


def old_records(count: int, days: int) -> list[bytes]:
    return [body(timestamp=(NOW - timedelta(days=days, minutes=i)).isoformat()) for i in range(count)]


def test_cleanup_removes_expired_segments_and_verify_starts_at_the_oldest_left(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    for item in old_records(6, 120) + old_records(3, 10):
        sink.write(item, fsync=False, max_segment_bytes=1)  # one record per segment
    settings = audit.AuditSettings(enabled=True, retention_days=90)
    expired = audit_log.expired_segments(log, 90, NOW)
    assert [e.path.name for e in expired] == [f"logs-default.00000{n}.jsonl" for n in range(1, 7)]
    assert all(e.path.exists() for e in expired)  # listing removes nothing

    removed = audit_log.cleanup(log, settings, NOW)
    assert [r.path.name for r in removed] == [e.path.name for e in expired]
    assert not any(r.path.exists() for r in removed)
    (note,) = records(log)
    assert (note["operation_type"], note["operation_name"]) == ("audit", "log-cleanup")
    assert [s["segment"] for s in note["output_data"]["removed_segments"]] == [r.path.name for r in removed]
    result = audit_log.verify(log)
    assert result.ok, result.failure
    assert result.verified_from["segment"] == "logs-default.000007.jsonl"
    assert result.verified_from["anchor"] == "segments removed by log-cleanup"
    assert result.verified_from["cleanup"]["segment"] == log.name
    assert audit_log.cleanup(log, settings, NOW) == []  # nothing more is old enough

    audit_log.segments(log)[0].path.unlink()  # removing the next oldest by hand is not a cleanup
    found = failure(log)
    assert (found.segment, found.kind) == ("logs-default.000008.jsonl", "removed")


def test_cleanup_removes_only_the_oldest_run_of_expired_segments(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    for item in old_records(1, 100) + old_records(1, 5) + old_records(1, 100) + old_records(1, 1):
        sink.write(item, fsync=False, max_segment_bytes=1)
    assert [e.path.name for e in audit_log.expired_segments(log, 90, NOW)] == ["logs-default.000001.jsonl"]


def test_files_written_before_the_chain_are_read_and_reported_unchained(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    legacy = [{"schema_name": "mxcp.audit", "schema_version": 2, "record_id": f"old{i}", "operation_status": "success",
               "timestamp": NOW.isoformat()} for i in range(3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    result = audit_log.verify(log)
    assert result.ok and result.unchained == 3 and result.chained == 0
    assert [w.kind for w in result.warnings] == ["unchained", "unchained"]
    assert "nothing was verified" in result.warnings[1].message

    write(log, 2)  # a version-3 writer continues the file: the chain starts at its first record
    assert records(log)[3]["prev_hash"] is None
    result = audit_log.verify(log)
    assert result.ok and (result.unchained, result.chained) == (3, 2) and result.verified_from["line"] == 4
    assert [r["record_id"] for r in audit_log.select(log, audit_log.LogFilter(), None)][2:] == ["old2", "old1", "old0"]

    with log.open("a") as handle:  # an unchained record after chained ones was not written by a writer
        handle.write(json.dumps(legacy[0]) + "\n")
    found = failure(log)
    assert (found.line, found.kind) == (6, "inserted")


def test_a_version_3_record_stripped_of_its_hash_fails(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    log.write_text(json.dumps({"schema_name": "mxcp.audit", "schema_version": 3, "record_id": "x",
                               "operation_status": "success"}) + "\n")
    assert failure(log).kind == "inserted"


def test_expect_hash_fails_when_a_saved_head_is_no_longer_in_the_chain(chained: Path) -> None:
    head = audit_log.verify(chained).head_hash
    write(chained, 2)
    assert audit_log.verify(chained, [head]).ok
    # Rewriting the whole log (every hash recomputed) passes the chain, but not the saved head.
    lines = raw_lines(chained)
    chained.unlink()
    sink = audit.Sink(chained)
    for line in lines:
        record = json.loads(line)
        del record["prev_hash"], record["record_hash"]
        sink.write(audit.record_body({**record, "output_data": "rewritten"}), fsync=False)
    assert audit_log.verify(chained).ok
    found = failure_with(chained, [head])
    assert found.kind == "missing" and head in found.message


def failure_with(path: Path, expected: list[str]) -> audit_log.Finding:
    result = audit_log.verify(path, expected)
    assert not result.ok and result.failure is not None
    return result.failure


# -- writes cut short, records removed from the end, records that are not audit records ---------------------------

CUT_SHORT_WRITER = textwrap.dedent("""\
    import resource, sys
    from pathlib import Path
    from mxcp_plugins import audit
    path, limit, body = Path(sys.argv[1]), int(sys.argv[2]), sys.stdin.buffer.read()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: the write stops short
    try:
        audit.Sink(path).write(body, fsync=False)
    except OSError:
        sys.exit(3)
    """)


def cut_short_write(path: Path, item: bytes, limit: int) -> None:
    """A real write of `item` by another process whose file size limit stops it at `limit` bytes of the file."""
    done = subprocess.run([sys.executable, "-c", CUT_SHORT_WRITER, str(path), str(limit)], input=item,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert path.stat().st_size == limit


def test_two_writes_cut_short_in_a_row_leave_the_chain_whole(chained: Path) -> None:
    head = records(chained)[-1]["record_hash"]
    cut_short_write(chained, body(input_data={"big": "y" * 3000}), chained.stat().st_size + 1000)
    # The second one first puts the newline that makes the first fragment a whole line, then is cut short too.
    cut_short_write(chained, body(input_data={"big": "y" * 3000}), chained.stat().st_size + 1000)
    result = audit_log.verify(chained)
    assert result.ok, result.failure
    assert [(w.kind, w.line) for w in result.warnings] == [("unreadable", 7), ("torn", 8)]
    assert result.head_hash == head

    write(chained, 2)  # a new process: it must chain to the last record, over both fragments
    assert json.loads(raw_lines(chained)[8])["prev_hash"] == head
    result = audit_log.verify(chained)
    assert result.ok, result.failure
    assert [(w.kind, w.line) for w in result.warnings] == [("unreadable", 7), ("unreadable", 8)]
    assert "continues over it" in result.warnings[0].message


def test_a_write_cut_short_just_before_its_newline_is_a_record_for_writer_and_verify_alike(chained: Path) -> None:
    item = body(operation_name="unfinished", operation_status="started")
    line, digest = audit.chain_line(item, records(chained)[-1]["record_hash"])
    cut_short_write(chained, item, chained.stat().st_size + len(line) - 1)  # all but the newline
    assert not chained.read_bytes().endswith(b"\n")
    result = audit_log.verify(chained)
    assert result.ok and result.records == 7 and result.warnings == [] and result.head_hash == digest
    assert audit_log.select(chained, audit_log.LogFilter(), 1)[0]["operation_name"] == "unfinished"

    write(chained, 1)  # a new process: it completes the line and chains to it
    lines = raw_lines(chained)
    assert len(lines) == 8 and json.loads(lines[7])["prev_hash"] == digest
    result = audit_log.verify(chained)
    assert result.ok and result.records == 8 and result.warnings == [], result


def test_a_running_writer_does_not_trust_a_file_shortened_under_it(chained: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    sink = audit.Sink(chained)  # a long-running writer (a server): it holds the file open between records
    write(chained, 4, sink=sink)
    lines = raw_lines(chained)
    last_written = json.loads(lines[-1])["record_hash"]
    chained.write_bytes(b"\n".join(lines[:-3]) + b"\n")  # someone removes its newest three records, in place
    assert audit_log.verify(chained).ok  # on its own, a shorter log looks like a log

    write(chained, 1, sink=sink)
    assert json.loads(raw_lines(chained)[-1])["prev_hash"] == last_written
    assert "shorter than this process left it" in caplog.text
    found = failure(chained)
    assert (found.line, found.kind) == (8, "removed")


def test_a_line_that_is_not_an_audit_record_fails_verify_and_is_skipped_by_log(chained: Path) -> None:
    with chained.open("a") as handle:
        handle.write(json.dumps({"call_id": [1], "operation_status": "success"}) + "\n")
    found = failure(chained)
    assert (found.line, found.kind) == (7, "changed") and "not an audit record" in found.message
    assert len(audit_log.select(chained, audit_log.LogFilter(), None)) == 6

    # With the schema fields but a field of the wrong type: still not one.
    lines = raw_lines(chained)
    lines[-1] = json.dumps({"schema_name": "mxcp.audit", "schema_version": 2, "call_id": [1]}).encode()
    chained.write_bytes(b"\n".join(lines) + b"\n")
    assert "not an audit record" in failure(chained).message
    assert len(audit_log.select(chained, audit_log.LogFilter(), None)) == 6


def test_records_before_the_chain_are_accepted_only_at_the_start_of_the_oldest_segment(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    write(log, 3, max_bytes=1)  # three sealed segments of one record
    legacy = json.dumps({"schema_name": "mxcp.audit", "schema_version": 2, "record_id": "old",
                         "operation_status": "success", "timestamp": NOW.isoformat()}).encode() + b"\n"
    first, second = (s.path for s in audit_log.segments(log)[:2])
    chained_first = first.read_bytes()
    first.write_bytes(legacy)  # the oldest segment only pre-chain records, and one more in the next
    second.write_bytes(legacy + second.read_bytes())
    found = failure(log)
    assert (found.segment, found.line, found.kind) == (second.name, 1, "inserted")
    assert "outside the oldest segment" in found.message

    second.write_bytes(second.read_bytes()[len(legacy):])
    first.write_bytes(legacy + chained_first)
    result = audit_log.verify(log)
    assert result.ok and result.unchained == 1
    assert "cannot be verified" in next(w for w in result.warnings if w.kind == "unchained").message


def test_a_copied_last_line_is_named_at_the_copy(chained: Path) -> None:
    lines = raw_lines(chained)
    chained.write_bytes(b"\n".join([*lines, lines[-1]]) + b"\n")
    found = failure(chained)
    assert (found.line, found.kind) == (7, "inserted") and "a copy of the record at" in found.message


def test_an_argument_that_is_not_valid_unicode_is_recorded_escaped(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    write(log, 1, input_data={"name": "bad \udcff"})  # a lone surrogate, as os.fsdecode makes of a bad byte
    assert records(log)[0]["input_data"] == {"name": "bad \udcff"}
    assert audit_log.verify(log).ok


def test_retention_days_is_capped() -> None:
    with pytest.raises(ValueError, match="retention_days"):
        audit.AuditSettings(retention_days=100_000_000)
    assert audit.AuditSettings(retention_days=audit.MAX_RETENTION_DAYS).retention_days == 36500


# -- log-cleanup records and what verify checks of them -------------------------------------------------------------

def forge_cleanup(log: Path, removed: list[audit_log.Segment], *, retention: int = 90,
                  last_timestamp: str | None = None) -> None:
    """What someone with write access can do: delete segments by hand and append a cleanup record, hashed."""
    claims = []
    for segment in removed:
        last = records(segment.path)[-1]
        claims.append({"segment": segment.name, "records": 1, "first_timestamp": None,
                       "last_timestamp": last_timestamp or last["timestamp"], "last_record_hash": last["record_hash"],
                       "bytes": segment.path.stat().st_size})
        segment.path.unlink()
    record = json.loads(body())
    record.update(operation_type="audit", operation_name="log-cleanup", input_data={"retention_days": retention},
                  output_data={"removed_segments": claims})
    audit.Sink(log).write(audit.record_body(record), fsync=False)


def test_a_forged_cleanup_of_recent_segments_fails_even_with_the_saved_head(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    write(log, 8, max_bytes=1500)  # two sealed segments of three records, two in the active file
    head = audit_log.verify(log).head_hash
    forge_cleanup(log, audit_log.segments(log)[:2])
    assert [s.name for s in audit_log.segments(log)] == [log.name]
    found = failure_with(log, [head])
    assert (found.kind, found.line) == ("changed", len(raw_lines(log)))
    assert "not older than its retention of 90 days" in found.message and "forged" in found.message


def test_a_cleanup_claiming_a_segment_ended_after_the_oldest_record_left_fails(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    for item in old_records(2, 200) + old_records(2, 150):
        sink.write(item, fsync=False, max_segment_bytes=1)
    # It claims segment 2 ended 100 days ago (old enough to remove), but segment 3, written after it, starts
    # 150 days ago.
    forge_cleanup(log, audit_log.segments(log)[:2], last_timestamp=(NOW - timedelta(days=100)).isoformat())
    found = failure(log)
    assert found.kind == "changed" and "after the oldest record left" in found.message


def test_a_cleanup_that_cannot_remove_records_nothing_or_says_what_is_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "logs-default.jsonl"
    sink = audit.Sink(log)
    for item in old_records(2, 120):
        sink.write(item, fsync=False, max_segment_bytes=1)
    sink.write(body(), fsync=False)
    settings = audit.AuditSettings(enabled=True, retention_days=90)
    before = log.read_bytes()
    # A folder where nothing can be removed (a read-only mount; as root, permissions would not stop us).
    real_access = audit_log.os.access
    monkeypatch.setattr(audit_log.os, "access", lambda path, mode: False if Path(path) == log.parent
                        else real_access(path, mode))
    with pytest.raises(audit_log.MxcpError, match="nothing was removed and nothing recorded"):
        audit_log.cleanup(log, settings, NOW)
    assert log.read_bytes() == before
    monkeypatch.undo()

    # The removal fails after the record is written (or the process dies there): the record names segments that
    # are still present, which verify reports as a warning.
    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(audit_log.MxcpError, match="record naming them is written"):
        audit_log.cleanup(log, settings, NOW)
    monkeypatch.undo()
    result = audit_log.verify(log)
    assert result.ok, result.failure
    assert [w.kind for w in result.warnings] == ["not-removed", "not-removed"]
    assert "still there" in result.warnings[0].message

    assert len(audit_log.cleanup(log, settings, NOW)) == 2  # once it can, the segments go and verify passes
    result = audit_log.verify(log)
    assert result.ok and result.verified_from["anchor"] == "segments removed by log-cleanup", result


# -- verify while writers rotate, and its memory -------------------------------------------------------------------

ROTATING_WRITER = textwrap.dedent("""\
    import sys, time, uuid
    from pathlib import Path
    from mxcp_plugins import audit
    sink, end = audit.sink_for(Path(sys.argv[1])), time.time() + float(sys.argv[2])
    while time.time() < end:
        record = {"schema_name": "mxcp.audit", "schema_version": 3, "record_id": uuid.uuid4().hex,
                  "timestamp": "2026-01-01T00:00:00+00:00", "operation_status": "success"}
        sink.write(audit.record_body(record), fsync=False, max_segment_bytes=1)  # a new segment per record
    """)


def test_verify_while_writers_seal_segments_very_fast_reports_no_break(tmp_path: Path) -> None:
    log = tmp_path / "logs-default.jsonl"
    write(log, 50, max_bytes=1)
    writers = [subprocess.Popen([sys.executable, "-c", ROTATING_WRITER, str(log), "6"]) for _ in range(2)]
    try:
        results = [audit_log.verify(log) for _ in range(15)]
    finally:
        for process in writers:
            assert process.wait(timeout=60) == 0
    assert [r.failure for r in results if not r.ok and r.failure.kind != "retry"] == []
    assert audit_log.verify(log).ok


def test_verify_keeps_little_of_each_record_in_memory(tmp_path: Path) -> None:
    import tracemalloc

    log = tmp_path / "logs-default.jsonl"
    write(log, 400, max_bytes=100_000, input_data={"padding": "p" * 5000})  # 2 MB in 100 kB segments
    tracemalloc.start()
    try:
        assert audit_log.verify(log).ok
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_500_000, peak  # records kept whole would be over 2 MB
