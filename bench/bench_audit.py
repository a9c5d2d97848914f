"""What the hash chain costs per audit record: chained appends against the unchained append of schema version 2.

    python bench/bench_audit.py [--records 5000] [--rounds 5]

- reference: the version-2 append (open, append one line with unbuffered writes, close), kept here as it was.
- chained: `Sink.write` (the file kept open between records: flock, a stat of the path to notice a rotation by
  another writer, the last hash from the cache, SHA-256 of the line, append, unlock).
- chained, 2 processes: the same with a second process appending to the same file all along, so nearly every
  record finds the file changed and reads the last hash from its tail (the cache's worst case).
- chained + rotation: with a 1 MB segment limit (a rename every ~1,700 records and, after each, one read of
  the sealed segment's tail).
Records are the size of a typical completion record (about 600 bytes). Each figure is the best of several
rounds (noise from other processes only ever makes a round slower); the ratios compare figures of the same run.
Not a test: nothing here asserts; it prints the figures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mxcp_plugins import audit  # noqa: E402


def record() -> bytes:
    return audit.record_body({
        "schema_name": "mxcp.audit", "schema_version": 3, "record_id": uuid.uuid4().hex, "call_id": uuid.uuid4().hex,
        "timestamp": "2026-11-30T08:00:00.000000+00:00", "operation_type": "tool", "operation_name": "search_orders",
        "operation_status": "success", "duration_ms": 3.141, "caller_type": "http", "user_id": "ann@example.com",
        "session_id": uuid.uuid4().hex, "trace_id": uuid.uuid4().hex,
        "input_data": {"customer": "c-1042", "since": "2026-01-01", "limit": 50, "password": "[REDACTED]"},
        "output_data": [{"id": i, "total": 10.5 * i, "status": "shipped"} for i in range(4)],
        "error": None,
        "policies_evaluated": [{"stage": "input", "policy": "0", "action": "deny", "result": "not matched"}],
        "policy_decision": "allow", "policy_reason": None,
    })


def unchained_append(path: Path, line: bytes, fsync: bool) -> None:
    """The version-2 append, unchanged: the reference."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def rate(write, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        write()
    return count / (time.perf_counter() - started)


def best_of(rounds: int, variants: dict[str, object], count: int) -> dict[str, float]:
    """records/s of each variant, best of `rounds`; the variants take turns within each round (shared noise)."""
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make_write in variants.items():
            with tempfile.TemporaryDirectory() as folder:
                figures[name].append(rate(make_write(Path(folder) / "audit" / "logs-bench.jsonl"), count))
    return {name: max(values) for name, values in figures.items()}


def _other_writer(path: str, stop) -> None:
    sink = audit.Sink(Path(path))
    body = record()
    while not stop.is_set():
        sink.write(body, fsync=False)


def contended(rounds: int, count: int) -> float:
    figures = []
    context = multiprocessing.get_context("spawn")
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "logs-bench.jsonl"
            sink = audit.Sink(path)
            body = record()
            sink.write(body, fsync=False)
            stop = context.Event()
            other = context.Process(target=_other_writer, args=(str(path), stop))
            other.start()
            try:
                time.sleep(0.5)  # the other writer is running
                figures.append(rate(lambda: sink.write(body, fsync=False), count))
            finally:
                stop.set()
                other.join(timeout=10)
    return max(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = record()
    line, _ = audit.chain_line(body, None)  # the reference writes a line of the same size
    count, rounds = args.records, args.rounds

    figures = best_of(rounds, {
        "reference": lambda path: (lambda: unchained_append(path, line, False)),
        "chained": lambda path: (lambda sink=audit.Sink(path): sink.write(body, fsync=False)),
        "rotating": lambda path: (
            lambda sink=audit.Sink(path): sink.write(body, fsync=False, max_segment_bytes=1024 * 1024)),
    }, count)
    reference, chained, rotating = figures["reference"], figures["chained"], figures["rotating"]
    two_processes = contended(rounds, count)

    print(f"record: {len(line)} bytes; {count} records per round, best of {rounds} rounds; os: {sys.platform}")
    print(f"{'append':<38}{'records/s':>12}{'µs/record':>12}{'vs reference':>14}")
    for name, figure in (("reference: unchained (version 2)", reference), ("chained", chained),
                         ("chained, 1 MB segments", rotating), ("chained, 2 processes appending", two_processes)):
        print(f"{name:<38}{figure:>12,.0f}{1e6 / figure:>12.1f}{figure / reference:>13.2f}x")
    print(json.dumps({"reference_per_s": round(reference), "chained_per_s": round(chained),
                      "rotating_per_s": round(rotating), "two_processes_per_s": round(two_processes),
                      "chained_overhead_us": round(1e6 / chained - 1e6 / reference, 2)}))


if __name__ == "__main__":
    main()
