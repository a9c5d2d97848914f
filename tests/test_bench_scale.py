"""bench/bench_scale.py runs from a clean clone and prints every figure (`--quick`: a smoke test, not a measurement).

It starts its own PostgreSQL, HAProxy and replicas; this checks each figure is printed as a number, so a figure
cannot silently disappear, and that nothing is left running (the bench stops what it started).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from haproxy_server import require_haproxy
from postgres_server import SKIP_REASON, postgres_bindir

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_scale.py"
NUMBER = r"\s+([0-9]+(?:\.[0-9]+)?)"
FIGURES = {
    "direct to 1 replica (reference):": "calls/s",
    "through HAProxy, 1 replica:": "calls/s",
    "through HAProxy, 2 replicas:": "calls/s",
    "1 replica, PostgreSQL engine, audited:": "calls/s",
    "sink write capacity, 1 writer:": "records/s",
    "replicas one PostgreSQL can audit:": "",
    "one core per DuckDB replica:": "calls/s",
    "one core per PostgreSQL-engine replica:": "calls/s",
    "one core per audited replica:": "calls/s",
}


def _mentions(process: Path, folder: Path) -> bool:
    """Whether a /proc entry's command line names `folder` (PostgreSQL's -D, HAProxy's -f, a replica's files)."""
    try:
        return str(folder) in (process / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_bench_scale_quick_prints_every_figure(tmp_path: Path):
    require_haproxy()
    if postgres_bindir() is None:
        pytest.skip(SKIP_REASON)
    # Its own temporary folder, so what it leaves behind shows: folders, and processes started from them. Not
    # under tmp_path: under root, PostgreSQL runs as the postgres user, who cannot enter pytest's 0700 folders.
    temporary = Path(tempfile.mkdtemp(prefix="mxcp-bench-test-"))
    try:
        temporary.chmod(0o755)
        done = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, check=False, env={**os.environ, "TMPDIR": str(temporary)})
        assert done.returncode == 0, done.stdout + done.stderr
        assert list(temporary.iterdir()) == []  # the project, PostgreSQL's cluster and HAProxy's configs are gone
        left = [entry.name for entry in Path("/proc").iterdir()
                if entry.name.isdigit() and _mentions(entry, temporary)]
        assert left == [], f"processes the bench started are still running: {left}"
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    out = done.stdout
    assert re.search(r"^machine: \d+ cores", out, re.MULTILINE), out
    for label, unit in FIGURES.items():
        found = re.findall(re.escape(label) + NUMBER + (r"\s+" + re.escape(unit) if unit else ""), out)
        assert found and all(float(value) > 0 for value in found), f"{label} missing:\n{out}"
    # Both engines' 1- and 2-replica figures: the HAProxy lines appear once per engine.
    assert len(re.findall(r"through HAProxy, 2 replicas:", out)) == 2, out
    assert re.search(r"sink write capacity, \d+ writers:" + NUMBER + r"\s+records/s", out), out
    # Each load figure says where the CPU went (6: direct, 2 x 2 through HAProxy, audited).
    assert len(re.findall(r"CPU ms per call: replicas [0-9.]+", out)) == 6, out


def test_the_postgresql_cpu_figure_counts_the_bench_server_only(tmp_path: Path, postgres):
    """Another process named postgres (a system cluster on 5432, another run's server) is not the bench's CPU."""
    import importlib.util

    from server_helpers import stop_process, wait_for

    spec = importlib.util.spec_from_file_location("bench_scale_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    impostor_binary = tmp_path / "postgres"  # its process is named postgres, as a second cluster's would be
    shutil.copy(shutil.which("sleep") or "/bin/sleep", impostor_binary)
    impostor = subprocess.Popen([str(impostor_binary), "60"])
    try:
        # (the name changes during exec, which may still be under way when Popen returns)
        wait_for(lambda: Path(f"/proc/{impostor.pid}/comm").read_text().strip() == "postgres")
        postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
        postgres.sql("SELECT 1")
        found = bench.postgres_pids(postgres.data)
        assert postmaster in found and len(found) > 1  # the postmaster and its background processes
        assert impostor.pid not in found
    finally:
        stop_process(impostor)
