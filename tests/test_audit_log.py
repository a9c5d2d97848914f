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
            record = {"schema_version": 3, "record_id": f"{name}-{thread}-{index}", "operation_status": "success",
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
    # The last line cut short but still ending with a newline: no writer leaves that.
    chained.write_bytes(b"\n".join([*lines[:5], lines[5][:50]]) + b"\n")
    found = failure(chained)
    assert (found.line, found.kind) == (6, "changed")


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
    legacy = [{"schema_version": 2, "record_id": f"old{i}", "operation_status": "success",
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
    log.write_text(json.dumps({"schema_version": 3, "record_id": "x", "operation_status": "success"}) + "\n")
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
