"""bench/bench_scale.py runs from a clean clone and prints every figure (`--quick`: a smoke test, not a measurement).

It starts its own PostgreSQL, HAProxy and replicas; this checks each figure is printed as a number, so a figure
cannot silently disappear, and that nothing is left running (the bench stops what it started).
"""
from __future__ import annotations

import re
import subprocess
import sys
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


def test_bench_scale_quick_prints_every_figure(tmp_path: Path):
    require_haproxy()
    if postgres_bindir() is None:
        pytest.skip(SKIP_REASON)
    from mxcp_plugins import audit_postgres

    if not hasattr(audit_postgres, "open_audit_sink"):
        pytest.skip("mxcp_plugins/audit_postgres.py has no open_audit_sink yet (the postgres audit sink)")
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
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
